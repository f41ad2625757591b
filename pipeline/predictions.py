"""A model's predictions as the stages keep them: raw, as a model made them on some images, and
out of fold, in the competition's units beside the folds.csv rows they predict.

Predictions are a vector per image (N, outputs), or a map per class for a dense task
(N, classes, S, S), kept compactly as that task says (Task.compact: uint8 probabilities).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.files import atomic_path


@dataclass(frozen=True)
class Raw:
    """Activated outputs of a model, and each image's (height, width) in its file (N, 2)."""

    predictions: np.ndarray
    sizes: np.ndarray

    def save(self, path: Path, **beside: np.ndarray) -> None:
        """Written atomically, with any arrays `beside` (the ids the rows are)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, predictions=self.predictions, sizes=self.sizes, **beside)

    @classmethod
    def load(cls, path: Path) -> "Raw":
        if not path.exists():
            raise PipelineError(
                f"{path} does not exist (a fit trained before predictions were kept as .npz has valid_*.npy "
                f"instead): remove {path.parent} and `make train` trains it again"
            )
        with np.load(path) as loaded:
            return cls(loaded["predictions"], loaded["sizes"])


@dataclass(frozen=True)
class OutOfFold:
    """Predictions in the competition's units, a row per folds.csv row of `table` (id, targets,
    fold), and each image's (height, width) in its file."""

    table: pd.DataFrame
    predictions: np.ndarray
    sizes: np.ndarray

    @classmethod
    def concat(cls, parts: list["OutOfFold"]) -> "OutOfFold":
        return cls(
            pd.concat([p.table for p in parts], ignore_index=True),
            np.concatenate([p.predictions for p in parts]),
            np.concatenate([p.sizes for p in parts]),
        )

    @property
    def folds(self) -> np.ndarray:
        return self.table["fold"].to_numpy()
