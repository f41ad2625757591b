"""The predict stage: the trained models on the test images, with test-time augmentation,
averaged, then written as a validated submission (submission.py).

A TTA view is an affine map in the [-1, 1] coordinates of `grid_sample(align_corners=False)`,
which are the keypoint coordinates the network predicts: a point p predicted in a view lies
at theta @ [p, 1] in the image, exactly. A horizontal flip also swaps left/right points.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import engine, models, plan, sources, submission, transforms
from pipeline.config import Config, Model
from pipeline.errors import PipelineError
from pipeline.images import open_images
from pipeline.loader import ImageDataset, create_loader, default_workers
from pipeline.paths import Paths
from pipeline.records import CV, Scores, StatedCV
from pipeline.tasks import task_from_meta


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


def predict_rows(cfg: Config, path: Path, images, rows: np.ndarray, device: engine.Device) -> tuple[np.ndarray, object]:
    """The model at `path` on `rows` of `images`, with predict.tta: (N, outputs + 2) raw
    predictions (probabilities, or keypoints in [-1, 1]) then each image's (height, width)."""
    model, meta = load_model(path, device)
    task = task_from_meta(meta)
    dataset = ImageDataset(images, rows, None, None, transforms.finish(meta["image_size"]))
    normalise = transforms.Normalise(*transforms.normalisation(model.pretrained_cfg, meta["in_chans"]))
    batch_size = cfg.predict.batch_size or 2 * cfg.train.batch_size
    workers = default_workers() if cfg.train.workers is None else cfg.train.workers
    loader = create_loader(dataset, batch_size, False, workers, 0, device, normalise)
    predictions, sizes = predict_images(model, task, loader, device, views(cfg.predict.tta), _swap(task, cfg))
    return np.column_stack([predictions, sizes]), task


def _swap(task, cfg: Config) -> torch.Tensor | None:
    if task.kind != "keypoints":
        return None
    return torch.as_tensor(transforms.flip_permutation(transforms.point_names(task.columns), cfg.aug.flip_pairs))


# --- which models, and the CV that describes them ----------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The models a submission holds, their weights, and the CV estimate of exactly them."""

    models: str  # "full", "folds" or "both"
    members: list[tuple[Path, float]]  # (model file, weight), weights summing to 1
    estimate: Scores
    method: str  # how the estimate was made


def choose(cfg: Config, paths: Paths, cv: CV) -> Choice:
    """predict.models, `auto` resolved, with the CV of what it takes."""
    models = cfg.predict.models
    if models == "auto":
        models, reason = auto_models(paths, cv)
        print(f"predict.models=auto: {models}, {reason}")
    if models != "folds" and not paths.full.model.exists():
        raise PipelineError(f"predict.models={models} needs {paths.full.model}: set train.full_fit=true and train")
    estimate, method = _estimate(cfg, paths, cv, models)
    return Choice(models, _members(cfg, paths, cv, models), estimate, method)


def _estimate(cfg: Config, paths: Paths, cv: CV, models: str) -> tuple[Scores, str]:
    if models == "full" and cv.kept == "best":
        untested = "; its TTA unmeasured: the folds keep their best epochs" if cfg.predict.tta else ""
        return cv.recipe, f"OOF of the folds' last epochs, the full fit's recipe{untested}"
    estimate, tta = fold_models_estimate(cfg, paths, cv)
    described = {
        "full": f"OOF of the folds' last epochs, the full fit's recipe{tta}",
        "folds": f"OOF of the fold models ({cv.kept} epochs){tta}",
        "both": f"OOF of the fold models ({cv.kept} epochs){tta}; the full model, their recipe on all rows, joins them",
    }
    return estimate, described[models]


def auto_models(paths: Paths, cv: CV) -> tuple[str, str]:
    """The full model when its recipe's CV is within noise of the fold models', else the folds."""
    if not paths.full.model.exists():
        return "folds", "there is no full fit (train.full_fit=false)"
    if cv.kept == "last":
        return "full", "the fold models keep their last epoch, the full fit's recipe, and score as it does"
    gain = cv.gain(cv.best.mean, cv.last.mean)
    figures = f"best epochs {cv.best.mean:.5f}, the full fit's recipe (last epochs) {cv.last.mean:.5f}"
    if gain <= cv.noise():
        return "full", f"its recipe is within the folds' noise {cv.noise():.5f} of the fold models ({figures})"
    return "folds", f"the fold models beat its recipe by more than the folds' noise {cv.noise():.5f} ({figures})"


def fold_models_estimate(cfg: Config, paths: Paths, cv: CV) -> tuple[Scores, str]:
    """The fold models' OOF score with predict.tta: cv.json's without TTA; with it, each fold
    model predicts its validation rows through the same views as the test images."""
    if not cfg.predict.tta:
        return cv.fold_models, ""
    setup, folds = plan.prepare(cfg, paths)
    device, targets = engine.Device.choose(cfg.train), plan.target_columns(folds)
    frames = []
    for k in cv.fold_ids:
        rows = plan.validation_rows(folds, k)
        raw, _ = predict_rows(cfg, paths.fold(k).model, setup.images, setup.rows[rows], device)
        frames.append(plan.oof_frame(setup.task, folds, rows, raw))
    per_fold = [setup.task.oof_score(frame, targets) for frame in frames]
    return Scores.of(per_fold, setup.task.oof_score(pd.concat(frames), targets)), f", TTA {' '.join(cfg.predict.tta)}"


def _members(cfg: Config, paths: Paths, cv: CV, models: str) -> list[tuple[Path, float]]:
    folds = [(paths.fold(k).model, s) for k, s in zip(cv.fold_ids, cv.fold_models.folds, strict=True)]
    full = [(paths.full.model, cv.recipe.mean)]
    chosen = {"full": full, "folds": folds, "both": folds + full}[models]
    if cfg.predict.weights == "equal":
        weights = np.ones(len(chosen))
    else:
        scores = np.array([s for _, s in chosen])
        weights = scores if cv.higher_is_better else 1.0 / np.maximum(scores, 1e-12)
    return [(path, float(w)) for (path, _), w in zip(chosen, weights / weights.sum(), strict=True)]


# --- the stage ---------------------------------------------------------------------------------


def predict_test(
    cfg: Config, paths: Paths, members: list[tuple[Path, float]]
) -> tuple[pd.DataFrame, np.ndarray, object]:
    """The test table, the weighted mean of the members' predictions (probabilities, or
    keypoints in pixels clipped to each image), and the task they belong to."""
    data = sources.read(cfg)
    images = open_images(data.test.images, paths.cache("test"), cfg.data.cache, cfg.data.cache_limit_gb)
    device = engine.Device.choose(cfg.train)
    total, task, sizes = 0.0, None, None
    for path, weight in members:
        raw, task = predict_rows(cfg, path, images, np.arange(len(images)), device)
        total, sizes = total + weight * raw[:, :-2], raw[:, -2:]
        print(f"predicted {len(images)} test images with {path} (weight {weight:.3f})")
    if task.kind == "keypoints":
        pixels = task.to_pixels(total, sizes)
        limits = np.where(np.arange(pixels.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) - 1
        total = np.clip(pixels, 0, limits)
    return data.test.table, total, task


def run(cfg: Config) -> None:
    paths = Paths.of(cfg)
    cv = CV.load(paths.cv_json)
    choice = choose(cfg, paths, cv)
    table, predictions, task = predict_test(cfg, paths, choice.members)
    stated = StatedCV(cv.metric, choice.estimate.oof, choice.estimate.std, choice.method, choice.models)
    path = submission.write(cfg, paths, table, predictions, task, stated)
    direction = "higher" if cv.higher_is_better else "lower"
    print(
        f"submission {path}: {stated.models} models, CV {stated.metric} {stated.score:.5f} ± {stated.std:.5f} "
        f"({stated.method}; {direction} is better)"
    )
