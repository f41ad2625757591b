"""What differs between classification and keypoint regression: targets, head size, loss,
metrics and the predictions written out of fold.

Keypoint targets are pixels in the data and (x + 0.5) / (width / 2) - 1 for the network, so
pixel centres span [-1, 1] symmetrically and a horizontal flip is x -> -x.
"""

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from pipeline.config import Config
from pipeline.errors import PipelineError

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "log_loss": False, "rmse": False}


class Classification:
    kind = "classification"

    def __init__(self, classes: list, label_smoothing: float = 0.0, metric: str = "accuracy"):
        if metric not in ("accuracy", "log_loss", "macro_f1"):
            raise PipelineError(f"train.metric={metric!r} is not a classification metric")
        self.classes = list(classes)
        self.label_smoothing = label_smoothing
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

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:  # soft targets from mixup/cutmix, smoothing already applied
            return torch.sum(-target * F.log_softmax(outputs, dim=-1), dim=-1).mean()
        return F.cross_entropy(outputs, target, label_smoothing=self.label_smoothing)

    def eval_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), target)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, classes) probabilities."""
        return outputs.float().softmax(dim=-1)

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray | None = None) -> dict:
        probabilities = np.clip(predictions, 1e-15, 1.0)
        labels = predictions.argmax(axis=1)
        return {
            "accuracy": float((labels == target).mean()),
            "log_loss": float(-np.log(probabilities[np.arange(len(target)), target]).mean()),
            "macro_f1": float(f1_score(target, labels, average="macro", labels=np.arange(self.n_outputs))),
        }

    def prediction_columns(self) -> list[str]:
        return [f"prob_{c}" for c in self.classes]

    def oof_score(self, frame: pd.DataFrame, targets: list[str]) -> float:
        """The competition metric of an out-of-fold table (targets and prediction columns)."""
        probabilities = frame[self.prediction_columns()].to_numpy(np.float64)
        return self.metrics(probabilities, self.encode(frame, targets))[self.metric]


class Keypoints:
    kind = "keypoints"
    LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}

    def __init__(self, columns: list[str], loss: str = "l1", tanh: bool = False):
        if loss not in self.LOSSES:
            raise PipelineError(f"train.loss={loss!r} is not a keypoint loss; use one of {list(self.LOSSES)}")
        if len(columns) % 2:
            raise PipelineError(f"keypoint columns come in x/y pairs; got {len(columns)} columns")
        self.columns = list(columns)
        self.loss_name = loss
        self.tanh = tanh
        self.metric = "rmse"

    @property
    def n_outputs(self) -> int:
        return len(self.columns)

    @property
    def labels(self) -> list[str]:
        return self.columns

    def encode(self, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        """(N, K*2) pixels, NaN where a point is missing; scaled per image by the dataset."""
        return table[targets].to_numpy(np.float32)

    def _activate(self, outputs: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        return torch.tanh(outputs) if self.tanh else outputs

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over labelled coordinates only: missing points add nothing, not even NaN gradients."""
        present = ~torch.isnan(target)
        per_coordinate = self.LOSSES[self.loss_name](
            self._activate(outputs), torch.nan_to_num(target), reduction="none"
        )
        return (per_coordinate * present).sum() / present.sum().clamp(min=1)

    eval_loss = loss

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, K*2) coordinates in [-1, 1]."""
        return self._activate(outputs)

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray) -> dict:
        """RMSE in pixels of the original images (sizes: (N, 2) height, width), and the share of
        labelled coordinates within 0.1 and 0.01 of the [-1, 1] range."""
        present = ~np.isnan(target)
        error = np.where(present, predictions - np.nan_to_num(target), 0.0)
        half_side = np.where(np.arange(target.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) / 2.0
        count = max(int(present.sum()), 1)
        return {
            "rmse": float(np.sqrt(((error * half_side) ** 2).sum() / count)),
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
        half_side = np.where(np.arange(predictions.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) / 2.0
        return (predictions + 1.0) * half_side - 0.5


def competition_metric(cfg: Config) -> str:
    if cfg.competition.task == "keypoints":
        return "rmse"
    return "accuracy" if cfg.train.metric == "auto" else cfg.train.metric


def create_task(cfg: Config, table: pd.DataFrame, targets: list[str]) -> Classification | Keypoints:
    if cfg.competition.task == "classification":
        if len(targets) != 1:
            raise PipelineError(f"classification trains one label column; the data has {targets}")
        return configured_task(cfg, sorted(table[targets[0]].unique(), key=lambda c: (str(type(c)), c)))
    return configured_task(cfg, targets)


def configured_task(cfg: Config, labels: list) -> Classification | Keypoints:
    """The task for `cfg` over known labels: the classes, or the keypoint columns."""
    if cfg.competition.task == "classification":
        if cfg.train.loss not in ("auto", "cross_entropy"):
            raise PipelineError(f"train.loss={cfg.train.loss!r} is a keypoint loss; classification uses cross_entropy")
        return Classification(labels, cfg.train.label_smoothing, competition_metric(cfg))
    if cfg.train.metric not in ("auto", "rmse"):
        raise PipelineError(f"train.metric={cfg.train.metric!r} is a classification metric; keypoints use rmse")
    loss = "l1" if cfg.train.loss == "auto" else cfg.train.loss
    return Keypoints(labels, loss, cfg.model.head_activation == "tanh")


def task_from_meta(meta: dict) -> Classification | Keypoints:
    """The task a saved model was trained for (fit.py writes the meta beside its weights)."""
    if meta["task"] == "classification":
        return Classification(meta["labels"])
    return Keypoints(meta["labels"], tanh=meta.get("head_activation") == "tanh")
