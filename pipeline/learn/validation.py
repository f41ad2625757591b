"""folds.csv as the stages read it: the rows each fold validates, a digest of the whole plan
that experiments and blends compare, and the fingerprint of what a fit's result depends on.
Made by the folds stage; kept apart from it so that what only reads the plan does not import
scikit-learn's splitters."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.files import sha256_file
from pipeline.stage_table import training_sections

EXTRA_FOLD = -1  # scraped rows: trained on by every fold, validated on by none


def read_folds(folds_csv: Path) -> pd.DataFrame:
    if not folds_csv.exists():
        raise PipelineError(f"{folds_csv} does not exist: run `make folds` first")
    return pd.read_csv(folds_csv, dtype={"id": str})


def validation_rows(folds: pd.DataFrame, fold: int) -> np.ndarray:
    """The positions in folds.csv of fold `fold`'s validation rows."""
    if fold not in set(folds["fold"]):
        raise PipelineError(f"train.folds names fold {fold}; folds.csv has folds {sorted(set(folds['fold']) - {-1})}")
    return np.flatnonzero((folds["fold"] == fold).to_numpy())


def validation_plan(folds: pd.DataFrame) -> str:
    """A digest of which competition row validates in which fold: equal digests, blendable OOF."""
    rows = folds.loc[folds["fold"] != EXTRA_FOLD, ["id", "fold"]].astype(str)
    return hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:16]


def target_columns(folds: pd.DataFrame) -> list[str]:
    """folds.csv holds id, the targets and fold."""
    return [c for c in folds.columns if c not in ("id", "fold")]


# which fits run and how they were planned, not how each one trains (a fold trained under one
# time budget is kept by a later run that trains the folds it left); pinned names keys whose
# values are in the fingerprint already
SELECTION_KEYS = ("folds", "full_fit", "time_budget", "pinned")


def fingerprint(cfg: C.Config, folds_csv: Path) -> str:
    """What a fit's result depends on: the config's training sections and folds.csv."""
    sections = cfg.model_dump(mode="json", include=set(training_sections()))
    sections["train"] = {k: v for k, v in sections["train"].items() if k not in SELECTION_KEYS}
    return f"{yaml.safe_dump(sections, sort_keys=False)}folds.csv sha256 {sha256_file(folds_csv)}"


def fit_rows(folds: pd.DataFrame, fold: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A fit's training and validation rows: fold `fold`'s, or every row and none (None: the full fit)."""
    if fold is None:
        return np.arange(len(folds)), None
    valid = validation_rows(folds, fold)
    return np.setdiff1d(np.arange(len(folds)), valid), valid
