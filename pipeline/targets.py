"""What a model's outputs mean in the competition's units, and how they are scored: class
probabilities or keypoint pixels, the out-of-fold tables, the metrics. No torch here, so that
what only reads predictions (`make blend`) starts in a second instead of importing timm.

Keypoint targets are pixels in the data and (x + 0.5) / (width / 2) - 1 for the network, so
pixel centres span [-1, 1] symmetrically and a horizontal flip is x -> -x.
"""

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.errors import PipelineError

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "log_loss": False, "rmse": False}


class ClassTargets:
    kind = "classification"

    def __init__(self, classes: list, metric: str = "accuracy"):
        if metric not in ("accuracy", "log_loss", "macro_f1"):
            raise PipelineError(f"train.metric={metric!r} is not a classification metric")
        self.classes = list(classes)
        self.metric = metric

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> list:
        return self.classes

    def encode(self, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        index = {str(c): i for i, c in enumerate(self.classes)}
        return table[targets[0]].astype(str).map(index).to_numpy(np.int64)

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray | None = None) -> dict:
        probabilities = np.clip(predictions, 1e-15, 1.0)
        labels = predictions.argmax(axis=1)
        return {
            "accuracy": float((labels == target).mean()),
            "log_loss": float(-np.log(probabilities[np.arange(len(target)), target]).mean()),
            "macro_f1": macro_f1(labels, target, self.n_outputs),
        }

    def prediction_columns(self) -> list[str]:
        return [f"prob_{c}" for c in self.classes]

    def oof_score(self, frame: pd.DataFrame, targets: list[str]) -> float:
        """The competition metric of an out-of-fold table (targets and prediction columns)."""
        probabilities = frame[self.prediction_columns()].to_numpy(np.float64)
        return self.metrics(probabilities, self.encode(frame, targets))[self.metric]


class PointTargets:
    kind = "keypoints"
    metric = "rmse"

    def __init__(self, columns: list[str]):
        if len(columns) % 2:
            raise PipelineError(f"keypoint columns come in x/y pairs; got {len(columns)} columns")
        self.columns = list(columns)

    @property
    def n_outputs(self) -> int:
        return len(self.columns)

    @property
    def labels(self) -> list[str]:
        return self.columns

    def encode(self, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        """(N, K*2) pixels, NaN where a point is missing; scaled per image by the dataset."""
        return table[targets].to_numpy(np.float32)

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray) -> dict:
        """RMSE in pixels of the original images (sizes: (N, 2) height, width), and the share of
        labelled coordinates within 0.1 and 0.01 of the [-1, 1] range."""
        present = ~np.isnan(target)
        error = np.where(present, predictions - np.nan_to_num(target), 0.0)
        count = max(int(present.sum()), 1)
        return {
            "rmse": float(np.sqrt(((error * _half_side(target, sizes)) ** 2).sum() / count)),
            "acc_0.1": float(((np.abs(error) < 0.1) & present).sum() / count),
            "acc_0.01": float(((np.abs(error) < 0.01) & present).sum() / count),
        }

    def prediction_columns(self) -> list[str]:
        return [f"pred_{c}" for c in self.columns]

    def oof_score(self, frame: pd.DataFrame, targets: list[str]) -> float:
        """RMSE in pixels over the labelled coordinates of an out-of-fold table."""
        truth = frame[targets].to_numpy(np.float64)
        error = frame[self.prediction_columns()].to_numpy(np.float64) - truth
        return float(np.sqrt(np.nanmean(error**2)))

    def to_pixels(self, predictions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        return (predictions + 1.0) * _half_side(predictions, sizes) - 0.5


def _half_side(coordinates: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Half each image's width for x columns, half its height for y: (N, K*2) from (N, 2)."""
    return np.where(np.arange(coordinates.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) / 2.0


def macro_f1(labels: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """The F1 of each class, averaged; a class neither predicted nor present scores 0."""
    confusion = np.bincount(truth * classes + labels, minlength=classes * classes).reshape(classes, classes)
    hits = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)
    return float(np.mean(np.divide(2 * hits, denominator, out=np.zeros(classes), where=denominator > 0)))


def competition_metric(cfg: Config) -> str:
    if cfg.competition.task == "keypoints":
        return "rmse"
    return "accuracy" if cfg.train.metric == "auto" else cfg.train.metric


def class_list(table: pd.DataFrame, column: str) -> list:
    """The classes in the order of the model's outputs."""
    return sorted(table[column].unique(), key=lambda c: (str(type(c)), c))


def of_data(cfg: Config, table: pd.DataFrame, targets: list[str]) -> ClassTargets | PointTargets:
    """What a model of `cfg` trained on `table` predicts, without building its loss."""
    if cfg.competition.task == "classification":
        return ClassTargets(class_list(table, targets[0]), competition_metric(cfg))
    return PointTargets(targets)


def target_columns(folds: pd.DataFrame) -> list[str]:
    """folds.csv holds id, the targets and fold."""
    return [c for c in folds.columns if c not in ("id", "fold")]


def oof_frame(targets, folds: pd.DataFrame, rows: np.ndarray, raw: np.ndarray) -> pd.DataFrame:
    """folds.csv's `rows` (id, targets, fold) with the model's predictions beside them, in the
    competition's units. `raw`: (N, outputs + 2), the predictions then each image's (height,
    width); keypoints are predicted in [-1, 1] and written in pixels."""
    predictions, sizes = raw[:, :-2], raw[:, -2:]
    if targets.kind == "keypoints":
        predictions = targets.to_pixels(predictions, sizes)
    frame = folds.iloc[rows].reset_index(drop=True)
    return pd.concat([frame, pd.DataFrame(predictions, columns=targets.prediction_columns())], axis=1)
