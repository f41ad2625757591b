"""The predict stage: the trained models on the test images, with test-time augmentation,
averaged, then written as a validated submission (submission.py).

A TTA view is an affine map in the [-1, 1] coordinates of `grid_sample(align_corners=False)`,
which are the keypoint coordinates the network predicts: a point p predicted in a view lies
at theta @ [p, 1] in the image, exactly. A horizontal flip also swaps left/right points.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import engine, models, sources, submission, transforms
from pipeline.config import Config, Model
from pipeline.errors import PipelineError
from pipeline.images import open_images
from pipeline.loader import ImageDataset, create_loader, default_workers
from pipeline.paths import Paths
from pipeline.tasks import HIGHER_IS_BETTER, task_from_meta


@dataclass(frozen=True)
class View:
    theta: torch.Tensor  # (2, 3): output coordinates -> input coordinates
    hflip: bool = False

    @property
    def is_identity(self) -> bool:
        return torch.equal(self.theta, torch.eye(2, 3))


def views(tta: list[str]) -> list[View]:
    """The plain view, then each named one; shift:f gives four views moved by f of the side."""
    out = [View(torch.eye(2, 3))]
    for spec in tta:
        name, _, value = spec.partition(":")
        if name == "hflip":
            out.append(View(torch.tensor([[-1.0, 0, 0], [0, 1, 0]]), hflip=True))
        elif name == "vflip":
            out.append(View(torch.tensor([[1.0, 0, 0], [0, -1, 0]])))
        elif name == "shift":
            step = 2 * float(value)  # a fraction of the side is twice that in [-1, 1] units
            out += [
                View(torch.tensor([[1.0, 0, dx], [0, 1, dy]]))
                for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step))
            ]
        elif name == "scale":
            out.append(View(torch.tensor([[1 / float(value), 0, 0], [0, 1 / float(value), 0]])))
    return out


def apply_view(view: View, images: torch.Tensor) -> torch.Tensor:
    if view.is_identity:
        return images
    theta = view.theta.to(images.device, images.dtype).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def map_back(view: View, points: torch.Tensor, swap: torch.Tensor | None) -> torch.Tensor:
    """(B, K*2) points predicted in `view` -> the same points in the image."""
    xy = points.reshape(len(points), -1, 2)
    xy = xy @ view.theta[:, :2].T.to(xy) + view.theta[:, 2].to(xy)
    if view.hflip and swap is not None:
        xy = xy[:, swap]
    return xy.reshape(len(points), -1)


@torch.no_grad()
def predict_images(
    model: torch.nn.Module, task, loader, device: engine.Device, tta: list[View], swap: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """The mean over TTA views of each image's prediction, and the original (height, width)s."""
    model.eval()
    predictions, sizes = [], []
    for images, _, size in tqdm(loader, desc="predict", leave=False, dynamic_ncols=True):
        images = device.images(images)
        total = 0
        for view in tta:
            with device.autocast():
                out = task.predict(model(apply_view(view, images)))
            total = total + (map_back(view, out, swap) if task.kind == "keypoints" else out)
        predictions.append((total / len(tta)).float().cpu())
        sizes.append(size)
    return torch.cat(predictions).numpy(), torch.cat(sizes).numpy()


def load_model(path: Path, device: engine.Device) -> tuple[torch.nn.Module, dict]:
    if not path.exists():
        raise PipelineError(f"{path} does not exist: run `make train` first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint["meta"]
    model = models.create_model(Model(name=meta["name"]), meta["num_outputs"], meta["in_chans"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device.device, memory_format=device.memory_format), meta


def chosen_models(cfg: Config, paths: Paths) -> list[tuple[Path, float]]:
    """(model file, weight) for predict.models, weights summing to 1."""
    cv = read_cv(paths)
    folds = [(paths.runs / f"fold{k}" / "model.pt", s) for k, s in zip(cv["fold_ids"], cv["folds"], strict=True)]
    full = [(paths.runs / "full" / "model.pt", float(np.mean(cv["folds"])))]
    chosen = {"full": full, "folds": folds, "both": folds + full}[cfg.predict.models]
    if cfg.predict.weights == "equal":
        weights = np.ones(len(chosen))
    else:
        scores = np.array([s for _, s in chosen])
        weights = scores if cv["higher_is_better"] else 1.0 / np.maximum(scores, 1e-12)
    return [(path, float(w)) for (path, _), w in zip(chosen, weights / weights.sum(), strict=True)]


def read_cv(paths: Paths) -> dict:
    path = paths.runs / "cv.json"
    if not path.exists():
        raise PipelineError(f"{path} does not exist: run `make train` first")
    return json.loads(path.read_text())


def predict_test(cfg: Config, paths: Paths) -> tuple[pd.DataFrame, np.ndarray, object]:
    """The test table, the ensemble's predictions (probabilities, or keypoints in pixels clipped
    to each image), and the task they belong to."""
    data = sources.read(cfg)
    images = open_images(data.test.images, paths.cache("test"), cfg.data.cache, cfg.data.cache_limit_gb)
    device = engine.Device.choose(cfg.train)
    total, task, sizes = 0.0, None, None
    for path, weight in chosen_models(cfg, paths):
        model, meta = load_model(path, device)
        task = task_from_meta(meta)
        dataset = ImageDataset(images, np.arange(len(images)), None, None, transforms.finish(meta["image_size"]))
        normalise = transforms.Normalise(*transforms.normalisation(model.pretrained_cfg, meta["in_chans"]))
        batch_size = cfg.predict.batch_size or 2 * cfg.train.batch_size
        workers = default_workers() if cfg.train.workers is None else cfg.train.workers
        loader = create_loader(dataset, batch_size, False, workers, 0, device, normalise)
        swap = _swap(task, cfg)
        predictions, sizes = predict_images(model, task, loader, device, views(cfg.predict.tta), swap)
        total = total + weight * predictions
        print(f"predicted {len(images)} test images with {path} (weight {weight:.3f})")
    if task.kind == "keypoints":
        pixels = task.to_pixels(total, sizes)
        limits = np.where(np.arange(pixels.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) - 1
        total = np.clip(pixels, 0, limits)
    return data.test.table, total, task


def _swap(task, cfg: Config) -> torch.Tensor | None:
    if task.kind != "keypoints":
        return None
    return torch.as_tensor(transforms.flip_permutation(transforms.point_names(task.columns), cfg.aug.flip_pairs))


def run(cfg: Config) -> None:
    paths = Paths.of(cfg)
    table, predictions, task = predict_test(cfg, paths)
    cv = read_cv(paths)
    path = submission.write(cfg, paths, table, predictions, task, cv)
    direction = "higher" if HIGHER_IS_BETTER[cv["metric"]] else "lower"
    print(f"submission {path} (CV {cv['metric']} {cv['score']:.5f}, {direction} is better)")
