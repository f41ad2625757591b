"""train.time_budget: the folds and the full fit fitted into a wall-clock budget.

One epoch of fold 0 is timed (its training and its validation, with nothing frozen, the
one-off costs of a first epoch included, so the estimate errs long). The epochs every fit runs are then the most that
fit the budget, never more than the config or its defaults asked for. The decision is kept in
runs/<name>/budget.json, so a re-run, or a resumed one, trains the same schedule and keeps its
finished folds.
"""

import dataclasses
import hashlib
import json
import math
import shutil
import time

import numpy as np
import pandas as pd

from pipeline import config as C
from pipeline import plan
from pipeline.files import write_text
from pipeline.fit import Setup, fit
from pipeline.paths import Paths
from pipeline.validation import validation_rows


def fit_into(setup: Setup, folds: pd.DataFrame, fold_ids: list[int], paths: Paths) -> Setup:
    """`setup` with train.epochs lowered so that every fit ends within train.time_budget."""
    cfg = setup.cfg
    if cfg.train.time_budget is None:
        return setup
    key = hashlib.sha256(plan.fingerprint(cfg, paths).encode()).hexdigest()[:16]  # the config and folds
    decision = _read(paths, key)
    if decision is None:
        decision = decide(setup, folds, fold_ids, paths)
        write_text(paths.budget_json, json.dumps({"key": key, **decision}, indent=1))
    print(decision["said"])
    trained = C.with_overrides(cfg, {"train.epochs": decision["epochs"]}, f"train.time_budget={cfg.train.time_budget}")
    return dataclasses.replace(setup, cfg=trained)


def decide(setup: Setup, folds: pd.DataFrame, fold_ids: list[int], paths: Paths) -> dict:
    cfg = setup.cfg
    budget = C.seconds(cfg.train.time_budget)
    started = time.monotonic()
    epoch_s = time_one_epoch(setup, folds, fold_ids[0], paths)
    fits = fit_epochs(folds, fold_ids, full_fit=cfg.train.full_fit)
    left = budget - (time.monotonic() - started)
    epochs = max(1, min(cfg.train.epochs, math.floor(left / (fits * epoch_s))))
    planned = f"{fits:.3g} fold-sized fits x {epochs} epochs x {epoch_s:.1f} s = {fits * epochs * epoch_s / 60:.1f} min"
    if epochs == cfg.train.epochs:
        said = f"time budget {cfg.train.time_budget}: {planned}; the {epochs} epochs asked for fit"
    elif fits * epoch_s > left:
        said = f"time budget {cfg.train.time_budget} is too short: {planned} is the least, one epoch a fit"
    else:
        said = f"time budget {cfg.train.time_budget}: {planned} (train.epochs {cfg.train.epochs} lowered to fit)"
    return {"epoch_s": epoch_s, "epochs": epochs, "said": said}


def fit_epochs(folds: pd.DataFrame, fold_ids: list[int], *, full_fit: bool) -> float:
    """One epoch of every fit, in epochs of the timed fold: the full fit trains on all rows,
    more than a fold trains on (1.25x with 5 folds), and it is the last, so an estimate
    short on it overruns the budget at the end."""
    fold_rows = len(folds) - len(validation_rows(folds, fold_ids[0]))
    return len(fold_ids) + (len(folds) / fold_rows if full_fit else 0.0)


def time_one_epoch(setup: Setup, folds: pd.DataFrame, fold: int, paths: Paths) -> float:
    """Seconds of one training and validation epoch of `fold`, on a model then thrown away;
    nothing frozen, as in every epoch after a fine-tune's first."""
    unfrozen = C.with_overrides(setup.cfg, {"model.freeze_depth": 0, "model.freeze_blocks": 0}, "timing")
    setup = dataclasses.replace(setup, cfg=unfrozen)
    valid = validation_rows(folds, fold)
    probe = paths.budget_probe
    shutil.rmtree(probe.root, ignore_errors=True)
    started = time.monotonic()
    try:
        fit(setup, np.setdiff1d(np.arange(len(folds)), valid), valid, probe, 1, "probe", f"timing fold {fold}")
    finally:
        shutil.rmtree(probe.root, ignore_errors=True)
    return time.monotonic() - started


def _read(paths: Paths, key: str) -> dict | None:
    if not paths.budget_json.exists():
        return None
    decision = json.loads(paths.budget_json.read_text())
    return decision if decision.get("key") == key else None
