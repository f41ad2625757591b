"""folds.csv as the stages read it: the rows each fold validates, and a digest of the whole
plan that experiments and blends compare. Made by folds.py; kept apart from it so that what
only reads the plan does not import scikit-learn's splitters."""

import hashlib

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.paths import Paths

EXTRA_FOLD = -1  # scraped rows: trained on by every fold, validated on by none


def read_folds(paths: Paths) -> pd.DataFrame:
    if not paths.folds_csv.exists():
        raise PipelineError(f"{paths.folds_csv} does not exist: run `make folds` first")
    return pd.read_csv(paths.folds_csv, dtype={"id": str})


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
