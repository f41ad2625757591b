"""What differs between classification and keypoint regression in training: head size, loss
and the activation of the outputs; what the outputs mean and how they are scored is
targets.py's.
"""

import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.targets import ClassTargets, PointTargets, class_list, competition_metric


class Classification(ClassTargets):
    def __init__(self, classes: list, label_smoothing: float = 0.0, metric: str = "accuracy"):
        super().__init__(classes, metric)
        self.label_smoothing = label_smoothing

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:  # soft targets from mixup/cutmix, smoothing already applied
            return torch.sum(-target * F.log_softmax(outputs, dim=-1), dim=-1).mean()
        return F.cross_entropy(outputs, target, label_smoothing=self.label_smoothing)

    def eval_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), target)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, classes) probabilities."""
        return outputs.float().softmax(dim=-1)


class Keypoints(PointTargets):
    LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}

    def __init__(self, columns: list[str], loss: str = "l1", tanh: bool = False):
        if loss not in self.LOSSES:
            raise PipelineError(f"train.loss={loss!r} is not a keypoint loss; use one of {list(self.LOSSES)}")
        super().__init__(columns)
        self.loss_name = loss
        self.tanh = tanh

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


def create_task(cfg: Config, table: pd.DataFrame, targets: list[str]) -> Classification | Keypoints:
    if cfg.competition.task == "classification":
        if len(targets) != 1:
            raise PipelineError(f"classification trains one label column; the data has {targets}")
        return configured_task(cfg, class_list(table, targets[0]))
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
