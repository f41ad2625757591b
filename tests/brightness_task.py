"""A toy task in one module, as a plug-in adds one: each image's mean brightness (0-1) as one
number. It states only what differs from the protocol's defaults: a target the geometry does not
move, scored by RMSE, written one row per image."""

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.tasks.base import Task


class Brightness(Task):
    name = "brightness"
    METRICS: ClassVar[dict[str, bool]] = {"rmse": False}
    LOSSES = ("mse",)

    def __init__(self, labels: list):
        self.labels, self.metric = list(labels), "rmse"

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Brightness":
        return cls(labels)

    @classmethod
    def from_meta(cls, meta: dict, cfg: Any) -> "Brightness":
        return cls(meta["labels"])

    @classmethod
    def aug_preset(cls, cfg: Any, facts: Any) -> tuple[dict, str]:
        return {"hflip": 0.5, "rotate": 10.0, "p": 0.8}, "brightness: geometry only, it keeps the mean"

    @classmethod
    def score_file(cls, metric: str, submitted: pd.DataFrame, solution: pd.DataFrame) -> float:
        return rmse(submitted.iloc[:, 1:].to_numpy(float), solution.iloc[:, 1:].to_numpy(float))

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray) -> dict:
        return {"rmse": rmse(predictions, target)}

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        return rmse(predictions, truth)

    def loss(self, outputs: Any, target: Any) -> Any:
        return ((outputs.float() - target) ** 2).mean()


def rmse(predictions: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predictions - truth) ** 2)))
