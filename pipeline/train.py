"""The train stage: one model per fold (best checkpoint by the competition metric, out-of-fold
predictions), the CV score, then one model on all the data.

    runs/<name>/fold<k>/  last.pt (resume), model.pt (best), metrics.csv, oof.csv, result.json
    runs/<name>/cv.json   metric, score (mean of folds), std, oof_score, folds, best_epochs
    runs/<name>/full/     model.pt, metrics.csv, result.json

A fold with result.json is finished and skipped; a fold with last.pt resumes from its last
completed epoch. Both belong to one config: when it changes, the fold is trained anew.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline import batch_aug, distributed, engine, sources
from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.files import sha256_file, write_csv, write_text
from pipeline.fit import FitResult, Setup, fit
from pipeline.images import FileSource, open_images, uniform_side
from pipeline.loader import ConcatImages
from pipeline.paths import Paths
from pipeline.tasks import HIGHER_IS_BETTER, create_task

TRAIN_SECTIONS = ("competition", "data", "folds", "model", "train", "aug")


def run(cfg: C.Config, gpus: str | None = None) -> None:
    """Every fold, the CV summary and the full fit; with `gpus` (several), as launch decides."""
    if gpus:
        from pipeline import launch

        launch.run(cfg, gpus)
        return
    paths = Paths.of(cfg)
    setup, folds, fingerprint, fold_ids = train_folds(cfg, paths)
    cfg = setup.cfg
    results = [train_fold(setup, folds, k, paths.runs / f"fold{k}", fingerprint) for k in fold_ids]
    cv = {**summarize(results, setup, folds, fold_ids), "fingerprint": fingerprint}
    print(
        f"CV {cv['metric']} {cv['score']:.5f} ± {cv['std']:.5f} over {len(results)} folds "
        f"(out-of-fold {cv['oof_score']:.5f}), best epochs {cv['best_epochs']}"
    )
    if cfg.train.full_fit:
        epochs = max(1, round(float(np.mean(cv["best_epochs"])) * cfg.train.full_epochs_scale))
        result = fit_once(setup, np.arange(len(folds)), None, paths.runs / "full", epochs, fingerprint, "full")
        print(f"full fit: {epochs} epochs on {len(folds)} rows -> {result.model_path}")
    C.save_resolved(cfg, paths.resolved("train"))
    write_text(paths.runs / "cv.json", json.dumps(cv, indent=2))  # last: its presence means the stage finished


def train_folds(cfg: C.Config, paths: Paths) -> tuple[Setup, pd.DataFrame, str, list[int]]:
    """What training the folds needs, the tuned settings merged: (setup, folds, fingerprint, fold ids)."""
    cfg = merge_tuned(cfg, paths)
    setup, folds = prepare(cfg, paths)
    return setup, folds, _fingerprint(cfg, paths), fold_ids_of(cfg, folds)


def fold_ids_of(cfg: C.Config, folds: pd.DataFrame) -> list[int]:
    """train.folds, or every fold of folds.csv (-1 marks extra rows that are never validated on)."""
    return cfg.train.folds if cfg.train.folds is not None else sorted(int(f) for f in folds["fold"].unique() if f >= 0)


def merge_tuned(cfg: C.Config, paths: Paths) -> C.Config:
    """Overrides found by `make tune` (runs/<name>/tune/best.yaml) on top of the config."""
    best = paths.runs / "tune" / "best.yaml"
    if not best.exists():
        return cfg
    overrides = yaml.safe_load(best.read_text()) or {}
    print(f"using the tuned settings in {best}: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return C.with_overrides(cfg, overrides, str(best))


def prepare(cfg: C.Config, paths: Paths) -> tuple[Setup, pd.DataFrame]:
    """The images, targets and task for every row of folds.csv, in its order."""
    if not paths.folds_csv.exists():
        raise PipelineError(f"{paths.folds_csv} does not exist: run `make folds` first")
    folds = pd.read_csv(paths.folds_csv, dtype={"id": str})
    data = sources.read(cfg)
    store = open_images(data.train.images, paths.cache("train"), cfg.data.cache, cfg.data.cache_limit_gb)
    position = {str(i): n for n, i in enumerate(data.train.table["id"])}
    competition = folds["fold"] >= 0
    missing = [i for i in folds.loc[competition, "id"] if i not in position]
    if missing:
        raise PipelineError(f"{paths.folds_csv}: id {missing[0]!r} is not in the train table; run `make folds` again")
    rows = folds.loc[competition, "id"].map(position).to_numpy()
    images = store
    if (~competition).any():
        extra = FileSource(tuple(paths.data / p for p in folds.loc[~competition, "id"]), _channels(cfg))
        images = ConcatImages(
            [store, open_images(extra, paths.cache("extra"), cfg.data.cache, cfg.data.cache_limit_gb)]
        )
        rows = np.concatenate([rows, len(store) + np.arange(int((~competition).sum()))])
    task = create_task(cfg, data.train.table, data.targets)
    targets = task.encode(folds, data.targets)
    size = cfg.model.image_size or uniform_side(store)
    if size is None:
        raise PipelineError("model.image_size is not set and the competition's images differ in size: set it")
    # a train.device_aug=on that cannot be is said now, before any fold's files are touched
    device = engine.Device.choose(cfg.train).device
    batch_aug.should_use(cfg.train.device_aug, cfg.aug, task.kind, device, len(images), _channels(cfg), size)
    return Setup(cfg, task, images, rows, targets, _channels(cfg), size), folds


def _channels(cfg: C.Config) -> int:
    return 1 if cfg.data.layout in ("pixel_columns", "pixel_string") else cfg.data.channels


def _fingerprint(cfg: C.Config, paths: Paths) -> str:
    return f"{cfg.to_yaml(TRAIN_SECTIONS)}folds.csv sha256 {sha256_file(paths.folds_csv)}"


def train_fold(setup: Setup, folds: pd.DataFrame, fold: int, out: Path, fingerprint: str) -> FitResult:
    if fold not in set(folds["fold"]):
        raise PipelineError(f"train.folds names fold {fold}; folds.csv has folds {sorted(set(folds['fold']) - {-1})}")
    is_valid = (folds["fold"] == fold).to_numpy()
    return fit_once(
        setup,
        np.flatnonzero(~is_valid),
        np.flatnonzero(is_valid),
        out,
        setup.cfg.train.epochs,
        fingerprint,
        f"fold {fold}",
        lambda: write_oof(setup, folds, np.flatnonzero(is_valid), out),
    )


def fit_once(
    setup: Setup,
    train_rows: np.ndarray,
    valid_rows: np.ndarray | None,
    out: Path,
    epochs: int,
    fingerprint: str,
    name: str,
    after=None,
) -> FitResult:
    """fit(), unless `out` already holds a finished fit of this config."""
    done = out / "result.json"
    before = FitResult.load(done) if done.exists() else None
    distributed.barrier()  # under torchrun: every rank has read it before rank 0 may remove it
    if before is not None:
        if before.fingerprint == fingerprint:
            print(f"{name}: finished before ({setup.task.metric} {before.score:.5f}), skipped")
            return before
        print(f"{name}: the config changed since it was trained; training it again")
        if distributed.is_main():
            shutil.rmtree(out)
        distributed.barrier()  # removed before any rank looks for a checkpoint to resume
    result = fit(setup, train_rows, valid_rows, out, epochs, fingerprint, name)
    distributed.barrier()  # rank 0's files are written before any rank reads them
    if after is not None:
        after()
    result.save(done)  # the fold counts as finished only now
    if distributed.is_main():
        (out / "last.pt").unlink(missing_ok=True)
    return result


def write_oof(setup: Setup, folds: pd.DataFrame, valid: np.ndarray, out: Path) -> None:
    """id, fold, the targets and the best checkpoint's predictions (keypoints in pixels)."""
    best = np.load(out / "valid_predictions.npy")
    predictions = best[:, :-2]
    if setup.task.kind == "keypoints":
        predictions = setup.task.to_pixels(predictions, best[:, -2:])
    frame = folds.iloc[valid].reset_index(drop=True)
    frame = pd.concat([frame, pd.DataFrame(predictions, columns=setup.task.prediction_columns())], axis=1)
    write_csv(out / "oof.csv", frame)


def summarize(results: list[FitResult], setup: Setup, folds: pd.DataFrame, fold_ids: list[int]) -> dict:
    task, metric = setup.task, setup.task.metric
    scores = [r.score for r in results]
    oof = [np.load(Path(r.model_path).parent / "valid_predictions.npy") for r in results]
    valid = np.concatenate([np.flatnonzero(folds["fold"].to_numpy() == k) for k in fold_ids])
    stacked = np.concatenate(oof)
    oof_score = task.metrics(stacked[:, :-2], setup.targets[valid], stacked[:, -2:])[metric]
    return {
        "metric": metric,
        "higher_is_better": HIGHER_IS_BETTER[metric],
        "score": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "oof_score": float(oof_score),
        "fold_ids": [int(k) for k in fold_ids],
        "folds": [float(s) for s in scores],
        "best_epochs": [r.best_epoch for r in results],
    }
