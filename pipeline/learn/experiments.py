"""The competition's experiments that finished training, one row each, best CV first, with what
sets each apart from the first: what `make experiments` prints and the report shows."""

import datetime as dt

import pandas as pd
import yaml

from pipeline import config as C
from pipeline.paths import Paths
from pipeline.records import CV
from pipeline.stage_table import experiment_sections

SHOWN_DIFFERENCES = 6


def table(paths: Paths) -> pd.DataFrame:
    """name, backbone, image_size, epochs, cv_last, std_last, cv_best, std_best, oof, train_min,
    differs, date; best last-epoch CV first."""
    names = paths.experiments()
    if not names:
        return pd.DataFrame()
    settings = {name: _settings(paths.of_experiment(name)) for name in names}
    rows = [_row(paths.of_experiment(name), settings[name], settings[names[0]]) for name in names]
    frame = pd.DataFrame(rows)
    higher = CV.load(paths.of_experiment(names[0]).cv_json).higher_is_better
    return frame.sort_values("cv_last", ascending=not higher, kind="stable").reset_index(drop=True)


def _row(paths: Paths, settings: dict, first: dict) -> dict:
    cv = CV.load(paths.cv_json)
    differs = [f"{k}={v}" for k, v in settings.items() if k not in C.IDENTITY_KEYS and first.get(k) != v]
    hidden = len(differs) - SHOWN_DIFFERENCES
    shown = differs[:SHOWN_DIFFERENCES] + ([f"+{hidden} more"] if hidden > 0 else [])
    return {
        "experiment": paths.experiment_name,
        "backbone": settings.get("model.name", "?"),
        "image_size": settings.get("model.image_size", "?"),
        "epochs": cv.epochs,
        "cv_last": cv.last.mean,
        "std_last": cv.last.std,
        "cv_best": cv.best.mean,
        "std_best": cv.best.std,
        "oof": cv.fold_models.oof,
        "train_min": _training_minutes(paths, cv),
        "differs": " ".join(shown) or "-",
        "date": dt.datetime.fromtimestamp(paths.cv_json.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M"),
    }


def _settings(paths: Paths) -> dict:
    """The resolved model, train and aug keys the experiment trained with, flattened."""
    resolved = paths.resolved("train")
    raw = yaml.safe_load(resolved.read_text()) if resolved.exists() else {}
    return {f"{section}.{k}": v for section in experiment_sections() for k, v in (raw.get(section) or {}).items()}


def _training_minutes(paths: Paths, cv: CV) -> float:
    """The fits' epochs, timed as they ran (NaN for fits from before epochs were timed)."""
    fits = [paths.fold(k) for k in cv.fold_ids] + ([paths.full] if paths.full.metrics.exists() else [])
    seconds = [pd.read_csv(fit.metrics).get("seconds", pd.Series([float("nan")])).sum(min_count=1) for fit in fits]
    return round(float(sum(seconds)) / 60, 2)
