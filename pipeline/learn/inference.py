"""The trained models on images: predictions averaged over the test-time views (augment.tta), the
test set's predictions kept beside each model, and a fold's out-of-fold predictions with the
same views."""

import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline import tasks
from pipeline.augment import transforms
from pipeline.augment.tta import View, apply_view, views
from pipeline.config import Config, Model
from pipeline.data import sources
from pipeline.errors import PipelineError
from pipeline.learn import ensemble, models
from pipeline.learn.defaults import working_side
from pipeline.learn.device import Device, Normalise
from pipeline.learn.loader import ImageDataset, create_loader, default_workers
from pipeline.learn.validation import validation_rows
from pipeline.paths import FitFiles, Paths
from pipeline.predictions import OutOfFold, Raw
from pipeline.tasks.base import Task


@torch.no_grad()
def predict_images(
    model: torch.nn.Module, task: Task, loader, device: Device, tta: list[View]
) -> tuple[np.ndarray, np.ndarray]:
    """The mean over TTA views of each image's prediction, and the original (height, width)s."""
    model.eval()
    predictions, sizes = [], []
    for images, _, size in tqdm(loader, desc="predict", leave=False, dynamic_ncols=True, disable=None):
        images = device.images(images)
        total = 0
        for view in tta:
            with device.autocast():
                out = task.activate(model(apply_view(view, images)))
            total = total + task.view_back(view, out)
        predictions.append((total / len(tta)).float().cpu())
        sizes.append(size)
    return torch.cat(predictions).numpy(), torch.cat(sizes).numpy()


def load_meta(path: Path) -> dict:
    return _checkpoint(path)["meta"]


UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError)  # what torch.load raises on a damaged file


def _checkpoint(path: Path) -> dict:
    if not path.exists():
        raise PipelineError(f"{path} does not exist: `make train` trains its fit again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as exc:
        raise PipelineError(
            f"{path} cannot be read ({str(exc).splitlines()[0]}): `make train` trains its fit again"
        ) from None


def weights_readable(path: Path) -> bool:
    """Whether the weights at `path` load (mapped, not read: a truncated or missing file fails)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, *UNREADABLE):
        return False
    return True


def weights_time(fit: FitFiles) -> float:
    """When the fit's weights were written; what was predicted with them before is older."""
    if not fit.model.exists():
        raise PipelineError(f"{fit.model} does not exist: `make train` trains its fit again")
    return fit.model.stat().st_mtime


def load_model(path: Path, device: Device) -> tuple[torch.nn.Module, dict]:
    checkpoint = _checkpoint(path)
    meta = checkpoint["meta"]
    architecture = Model(name=meta["name"], decoder=meta.get("decoder", "unet"))
    model = models.create_model(architecture, meta["num_outputs"], meta["in_chans"], dense=meta.get("dense", False))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device.device, memory_format=device.memory_format), meta


def predict_rows(cfg: Config, path: Path, images, rows: np.ndarray, device: Device) -> tuple[Raw, Task]:
    """The model at `path` on `rows` of `images`, with predict.tta: its raw predictions
    (probabilities, or keypoints in [-1, 1]) and each image's (height, width)."""
    model, meta = load_model(path, device)
    task = task_from_meta(meta, cfg)
    dataset = ImageDataset(images, rows, None, None, transforms.finish(meta["image_size"]))
    normalise = Normalise(*transforms.normalisation(model.pretrained_cfg, meta["in_chans"]))
    batch_size = cfg.predict.batch_size or 2 * cfg.train.batch_size
    workers = default_workers() if cfg.train.workers is None else cfg.train.workers
    loader = create_loader(dataset, batch_size, False, workers, 0, device, normalise)
    predictions, sizes = predict_images(model, task, loader, device, views(cfg.predict.tta))
    return Raw(task.compact(predictions), sizes), task


def weighted_units(cfg: Config, weighted: list[tuple[FitFiles, float]], images, rows: np.ndarray) -> np.ndarray:
    """The weighted models' predictions on `rows` of `images`, in the competition's units."""
    device, each = Device.choose(cfg.train), []
    for fit, _ in weighted:
        raw, task = predict_rows(cfg, fit.model, images, rows, device)
        each.append(task.to_units(raw.predictions, raw.sizes))
    return ensemble.weighted_sum(task, [weight for _, weight in weighted], each)


def task_from_meta(meta: dict, cfg: Config) -> Task:
    """The task a saved model solves, as `cfg` reads its outputs."""
    return tasks.get(meta["task"]).from_meta(meta, cfg)


# --- each model's predictions, made once and kept beside it -------------------------------------


def views_key(tta: list[str]) -> str:
    """A file-name-safe name for a TTA setting: "plain", or the views joined by "+"."""
    return "+".join(v.replace(":", "") for v in tta) or "plain"


class PredictionsOnTest:
    """The test table, and each model's predictions on its images with predict.tta: made once,
    and kept beside the model (FitFiles.test_predictions) for every later submission and blend."""

    def __init__(self, cfg: Config, paths: Paths, *, keep: bool = True):
        """keep=False: every model predicts afresh and nothing is written beside it (the offline
        notebook, whose models lie in a read-only input)."""
        data = sources.read(cfg)
        self.cfg, self.table, self.keep = cfg, data.test.table, keep
        self.images = sources.open_split(cfg, data.test.images, paths.cache("test"), working_side(cfg))
        self.device = Device.choose(cfg.train)
        self.ids = self.table["id"].astype(str).to_numpy(dtype=str)
        self.made: dict[Path, np.ndarray] = {}
        self.task, self.sizes = None, None

    def of(self, fit: FitFiles) -> np.ndarray:
        """The raw predictions: probabilities, or keypoints in [-1, 1]."""
        if fit.model not in self.made:
            raw = self._kept(fit)
            if raw is None:
                every, started = np.arange(len(self.images)), time.perf_counter()
                raw, self.task = predict_rows(self.cfg, fit.model, self.images, every, self.device)
                seconds = np.float64(time.perf_counter() - started)
                if self.keep:
                    raw.save(fit.test_predictions(views_key(self.cfg.predict.tta)), ids=self.ids, seconds=seconds)
                print(f"predicted {len(self.images)} test images with {fit.model} in {seconds:.1f} s")
            self.made[fit.model], self.sizes = raw.predictions, raw.sizes
        return self.made[fit.model]

    def _kept(self, fit: FitFiles) -> Raw | None:
        """The predictions kept beside the model for these test ids and views, if any."""
        path = self._kept_path(fit)
        if path is None:
            return None
        self.task = self.task or task_from_meta(load_meta(fit.model), self.cfg)
        return Raw.load(path)

    def _kept_path(self, fit: FitFiles) -> Path | None:
        """Where the model's kept predictions for these test ids and views are, if they are."""
        path = fit.test_predictions(views_key(self.cfg.predict.tta))
        if not (self.keep and path.exists() and path.stat().st_mtime >= weights_time(fit)):
            return None
        with np.load(path) as kept:
            if "predictions" not in kept or not np.array_equal(kept["ids"], self.ids):
                return None  # other images, or kept before predictions and sizes were apart
        return path

    def seconds(self, fit: FitFiles) -> float | None:
        """How long the model took to predict the test images (its cached images, the loading of
        its weights and the TTA views included) when its kept predictions were made; None
        when they are not kept, or were kept before this was."""
        path = self._kept_path(fit)
        if path is None:
            return None
        with np.load(path) as kept:
            return float(kept["seconds"]) if "seconds" in kept else None

    def in_units(self, fit: FitFiles) -> np.ndarray:
        """The competition's units: keypoints in pixels of each image."""
        raw = self.of(fit)  # sets the task and the sizes
        return self.task.to_units(raw, self.sizes)

    def blend(self, weighted: list[tuple[FitFiles, float]]) -> np.ndarray:
        """The weighted mean of the models' predictions in the competition's units (weights sum
        to 1), made valid again by the task (keypoints clipped to each image)."""
        each = [self.in_units(fit) for fit, _ in weighted]
        total = ensemble.weighted_sum(self.task, [weight for _, weight in weighted], each)
        return self.task.finish_blend(total, self.sizes)


def out_of_fold(cfg: Config, paths: Paths, fold_ids: list[int], epoch: str, setup, folds: pd.DataFrame) -> OutOfFold:
    """Every fold's validation rows of folds.csv with their predictions at `epoch`, in the
    competition's units; with predict.tta, those of the kept epoch through its views."""
    parts = []
    for k in fold_ids:
        rows = validation_rows(folds, k)
        parts.append(setup.task.out_of_fold(folds, rows, fold_oof(cfg, paths.fold(k), setup, rows, epoch)))
    return OutOfFold.concat(parts)


def fold_oof(cfg: Config, fit: FitFiles, setup, rows: np.ndarray, epoch: str) -> Raw:
    """A fold's raw predictions on its validation rows (positions in folds.csv) at `epoch`:
    without TTA as training saved them; with predict.tta, its model (the kept epoch) through
    the same views as the test images, made once and kept."""
    if not cfg.predict.tta:
        return Raw.load(fit.valid_predictions(epoch))
    path = fit.valid_predictions(views_key(cfg.predict.tta))
    if path.exists() and path.stat().st_mtime >= weights_time(fit):
        return Raw.load(path)
    raw, _ = predict_rows(cfg, fit.model, setup.images, setup.rows[rows], Device.choose(cfg.train))
    raw.save(path)
    return raw
