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

from pipeline import engine, ensemble, models, plan, sources, submission, transforms
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


# --- the test images, each model's predictions on them made once --------------------------------


class TestPredictions:
    """The test table, and each model's predictions on its images, made once however many
    ensembles use them."""

    def __init__(self, cfg: Config, paths: Paths):
        data = sources.read(cfg)
        self.cfg, self.table = cfg, data.test.table
        self.images = open_images(data.test.images, paths.cache("test"), cfg.data.cache, cfg.data.cache_limit_gb)
        self.device = engine.Device.choose(cfg.train)
        self.made: dict[Path, np.ndarray] = {}
        self.task, self.sizes = None, None

    def of(self, path: Path) -> np.ndarray:
        """(N, outputs): probabilities, or keypoints in [-1, 1]."""
        if path not in self.made:
            raw, self.task = predict_rows(self.cfg, path, self.images, np.arange(len(self.images)), self.device)
            self.made[path], self.sizes = raw[:, :-2], raw[:, -2:]
            print(f"predicted {len(self.images)} test images with {path}")
        return self.made[path]

    def in_units(self, path: Path) -> np.ndarray:
        """The competition's units: keypoints in pixels of each image."""
        raw = self.of(path)
        return self.task.to_pixels(raw, self.sizes) if self.task.kind == "keypoints" else raw

    def blend(self, members: list["Member"]) -> np.ndarray:
        """The weighted mean of the members' predictions, keypoints clipped to each image."""
        total = sum(m.weight * self.in_units(m.path) for m in members)
        if self.task.kind == "keypoints":
            limits = np.where(np.arange(total.shape[1]) % 2 == 0, self.sizes[:, 1:2], self.sizes[:, 0:1]) - 1
            total = np.clip(total, 0, limits)
        return total


# --- which models, and the CV that describes them ----------------------------------------------


@dataclass(frozen=True)
class Member:
    path: Path
    weight: float  # the members' weights sum to 1
    score: float  # its CV estimate


@dataclass(frozen=True)
class Choice:
    """The models a submission holds, their weights, and the CV estimate of exactly them."""

    models: str  # "full", "folds" or "both"
    members: list[Member]
    score: float
    std: float  # the folds' spread
    method: str  # how the estimate was made


def choose(cfg: Config, paths: Paths, cv: CV, test: TestPredictions) -> Choice:
    """predict.models, `auto` resolved, with the CV of what it takes."""
    models = cfg.predict.models
    if models in ("full", "both") and not paths.full.model.exists():
        raise PipelineError(f"predict.models={models} needs {paths.full.model}: set train.full_fit=true and train")
    fold_scores, tta = fold_models_estimate(cfg, paths, cv)
    if models != "auto":
        return option(cfg, paths, cv, models, fold_scores, tta, test)
    folds = option(cfg, paths, cv, "folds", fold_scores, tta, test)
    full = option(cfg, paths, cv, "full", fold_scores, tta, test) if paths.full.model.exists() else None
    chosen, reason = auto_models(cv, full, folds)
    print(f"predict.models=auto: {chosen.models}, {reason}")
    return chosen


def auto_models(cv: CV, full: Choice | None, folds: Choice) -> tuple[Choice, str]:
    """The full model when its recipe's CV is within noise of the fold models', else the folds."""
    if full is None:
        return folds, "there is no full fit (train.full_fit=false)"
    figures = f"the fold models {folds.score:.5f}, the full fit's recipe (last epochs) {full.score:.5f}"
    if cv.gain(folds.score, full.score) <= cv.noise():
        return full, f"its recipe is within the folds' noise {cv.noise():.5f} of the fold models ({figures})"
    return folds, f"the fold models beat its recipe by more than the folds' noise {cv.noise():.5f} ({figures})"


def option(
    cfg: Config, paths: Paths, cv: CV, models: str, fold_scores: Scores, tta: str, test: TestPredictions
) -> Choice:
    """One set of models and its CV: their OOF score, and for RMSE the averaging gain measured
    on the test images (ensemble.py)."""
    if models == "full" and cv.kept == "best":
        untested = "; its TTA unmeasured: the folds keep their best epochs" if cfg.predict.tta else ""
        estimate, method = cv.recipe, f"OOF of the folds' last epochs, the full fit's recipe{untested}"
    else:
        estimate, method = (
            fold_scores,
            {
                "full": f"OOF of the folds' last epochs, the full fit's recipe{tta}",
                "folds": f"OOF of the fold models ({cv.kept} epochs){tta}",
                "both": f"OOF of the fold models ({cv.kept} epochs){tta}; the full model, their recipe, joins them",
            }[models],
        )
    members, score = _members(cfg, paths, cv, models, estimate), estimate.oof
    if cv.metric in ensemble.MEASURES_AVERAGING and len(members) > 1:
        weights = [m.weight for m in members]
        members_spread = ensemble.spread([test.in_units(m.path) for m in members], weights)
        score = ensemble.blend_rmse([m.score for m in members], weights, members_spread)
        method += f"; less the members' spread on the test images ({members_spread:.5f} squared px): the blend's RMSE"
    return Choice(models, members, score, estimate.std, method)


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


def _members(cfg: Config, paths: Paths, cv: CV, models: str, estimate: Scores) -> list[Member]:
    """The models, each with its CV score and its weight (predict.weights)."""
    folds = [(paths.fold(k).model, s) for k, s in zip(cv.fold_ids, estimate.folds, strict=True)]
    full = [(paths.full.model, (cv.recipe if cv.kept == "best" else estimate).oof)]
    chosen = {"full": full, "folds": folds, "both": folds + full}[models]
    if cfg.predict.weights == "equal":
        weights = np.ones(len(chosen))
    else:
        scores = np.array([s for _, s in chosen])
        weights = scores if cv.higher_is_better else 1.0 / np.maximum(scores, 1e-12)
    return [Member(path, float(w), s) for (path, s), w in zip(chosen, weights / weights.sum(), strict=True)]


# --- the stage ---------------------------------------------------------------------------------


def run(cfg: Config) -> None:
    paths = Paths.of(cfg)
    cv = CV.load(paths.cv_json)
    test = TestPredictions(cfg, paths)
    choice = choose(cfg, paths, cv, test)
    predictions = test.blend(choice.members)
    for member in choice.members:
        print(f"{member.path} in the submission, weight {member.weight:.3f}")
    stated = StatedCV(cv.metric, choice.score, choice.std, choice.method, choice.models)
    path = submission.write(cfg, paths, test.table, predictions, test.task, stated)
    direction = "higher" if cv.higher_is_better else "lower"
    print(
        f"submission {path}: {stated.models} models, CV {stated.metric} {stated.score:.5f} ± {stated.std:.5f} "
        f"({stated.method}; {direction} is better)"
    )
