"""One or several continuous targets per image (PetFinder's Pawpularity, plant traits): a linear
head on targets standardised by each fit's own training rows, MSE, L1 or smooth-L1 over the
labelled cells, RMSE, MAE or R², predictions written back in the targets' units and optionally
clipped to the range the fit trained on.

The scale is fitted per fit (`fitted_to`), not on the whole training table: a fold's
validation targets never move its model's scale or range, and each saved model carries its own.
"""

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.tasks import register
from pipeline.tasks.base import Section, Task, masked_loss

MANY_VALUES = 30  # more distinct values than this, or any fraction: a continuous target


@register
class Regression(Task):
    name = "regression"
    METRICS: ClassVar[dict[str, bool]] = {"rmse": False, "mae": False, "r2": True}
    SMOOTH_METRICS = SQUARED_ERROR_METRICS = frozenset({"rmse"})
    LOSSES = ("mse", "l1", "smooth_l1")
    fold_kind = "stratified_binned"

    def __init__(
        self,
        columns: list[str],
        metric: str = "rmse",
        loss: str = "mse",
        *,
        clip: bool = False,
        scale: dict | None = None,
    ):
        self.columns = self.labels = list(columns)
        self.metric, self.loss_name, self.clip = metric, loss, clip
        self.scale = scale or {"mean": [0.0] * len(columns), "std": [1.0] * len(columns)}

    # --- what needs no labels --------------------------------------------------------------

    @classmethod
    def claim_columns(cls, table: pd.DataFrame, columns: list[str]) -> list[str]:
        """Several continuous columns: all of them."""
        continuous = [c for c in columns if continuous_values(table[c]) is not None]
        return continuous if len(continuous) > 1 and len(continuous) == len(columns) else []

    @classmethod
    def detect(cls, layout: str, label_columns: list[str], table: pd.DataFrame | None) -> str | None:
        if table is None or not label_columns or any(c not in table.columns for c in label_columns):
            return None
        found = [continuous_values(table[c]) for c in label_columns]
        if any(why is None for why in found):
            return None
        return f"a continuous target: {found[0]}" if len(found) == 1 else f"{len(found)} continuous targets"

    @classmethod
    def describe_targets(cls, table: pd.DataFrame, targets: list[str]) -> str:
        parts = []
        for column in targets[:4]:
            values = pd.to_numeric(table[column], errors="coerce")
            parts.append(f"{column} {values.min():.4g} to {values.max():.4g}, mean {values.mean():.4g}")
        more = f" and {len(targets) - 4} more" if len(targets) > 4 else ""
        return f"{len(targets)} continuous target(s): " + "; ".join(parts) + more

    @classmethod
    def sample_format(cls, columns: list[str], table: pd.DataFrame, targets: list[str]) -> tuple[str, str]:
        return "values", "a column per target"

    @classmethod
    def score_file(cls, metric: str, submitted: pd.DataFrame, solution: pd.DataFrame) -> float:
        guess, truth = submitted.iloc[:, 1:].to_numpy(float), solution.iloc[:, 1:].to_numpy(float)
        return regression_metric(metric, guess, truth)

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Regression":
        return cls(labels, cls.metric_of(cfg.train.metric), cls.loss_of(cfg.train.loss), clip=cfg.model.clip_to_targets)

    @classmethod
    def from_meta(cls, meta: dict, cfg: Any) -> "Regression":
        return cls(meta["labels"], clip=meta["clip"], scale=meta["scale"])

    # --- bound to the columns ---------------------------------------------------------------

    def meta(self) -> dict:
        return {**super().meta(), "clip": self.clip, "scale": self.scale}

    def fitted_to(self, targets: np.ndarray) -> "Regression":
        """The mean, spread and range of this fit's training targets (NaN cells left out)."""
        mean, std = np.nanmean(targets, axis=0), np.nanstd(targets, axis=0)
        scale = {
            "mean": mean.tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(),
            "low": np.nanmin(targets, axis=0).tolist(),
            "high": np.nanmax(targets, axis=0).tolist(),
        }
        return Regression(self.columns, self.metric, self.loss_name, clip=self.clip, scale=scale)

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray | None = None) -> dict:
        return {metric: regression_metric(metric, predictions, target) for metric in self.METRICS}

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        return regression_metric(self.metric, predictions, truth)

    # --- the head ---------------------------------------------------------------------------

    def _standard(self, like: Any) -> tuple[Any, Any]:
        """The scale's mean and std as tensors beside `like`."""
        mean = like.new_tensor(self.scale["mean"])
        return mean, like.new_tensor(self.scale["std"])

    def loss(self, outputs: Any, target: Any) -> Any:
        """On the standard scale, over labelled cells only."""
        mean, std = self._standard(outputs)
        return masked_loss(self.loss_name, outputs.float(), (target - mean) / std)

    def activate(self, outputs: Any) -> Any:
        """(B, targets) standard scores -> the targets' units, clipped to the fit's range if asked."""
        mean, std = self._standard(outputs.float())
        values = outputs.float() * std + mean
        if self.clip and "low" in self.scale:
            values = values.clamp(values.new_tensor(self.scale["low"]), values.new_tensor(self.scale["high"]))
        return values

    # --- the report -------------------------------------------------------------------------

    def report_sections(self, oof: pd.DataFrame, out: Any, image_of: Any, size_of: Any) -> list[Section]:
        """Predicted against true values with the residuals, per target; the worst images."""
        truth, predicted = oof[self.columns].to_numpy(float), oof[self.prediction_columns()].to_numpy(float)
        plots.save(plots.plot_predicted_vs_true(truth, predicted, self.columns), out / "predicted_vs_true.png")
        error = np.sqrt(np.nanmean((predicted - truth) ** 2, axis=1))
        worst = np.argsort(-np.nan_to_num(error))[:16]
        captions = [f"id {oof['id'].iloc[i]}: true {_short(truth[i])} predicted {_short(predicted[i])}" for i in worst]
        plots.save(plots.plot_grid([image_of(oof["id"].iloc[i]) for i in worst], captions), out / "worst.png")
        return [
            ("Predicted against true", plots.img("predicted_vs_true.png", "predicted against true values")),
            ("Worst images", "<p>the largest errors out of fold</p>" + plots.img("worst.png", "worst images")),
        ]


def _short(values: np.ndarray) -> str:
    return "/".join(f"{v:.3g}" for v in values[:3])


def continuous_values(values: pd.Series) -> str | None:
    """Why a column's values are a continuous target, or None: numbers with a fraction, or with
    more distinct values than a class column has."""
    numbers = pd.to_numeric(values, errors="coerce")
    if values.notna().sum() == 0 or (numbers.isna() & values.notna()).any():
        return None
    distinct = numbers.nunique()
    if (numbers.dropna() % 1 != 0).any() and distinct > 2:
        return f"numbers with fractions, {distinct} distinct values"
    return f"{distinct} distinct whole numbers" if distinct > MANY_VALUES else None


def regression_metric(metric: str, predictions: np.ndarray, truth: np.ndarray) -> float:
    """RMSE and MAE over the labelled cells; R² the mean over targets of 1 - SSE/SST."""
    present = ~np.isnan(truth)
    error = np.where(present, predictions - np.nan_to_num(truth), 0.0)
    count = max(int(present.sum()), 1)
    if metric == "rmse":
        return float(np.sqrt((error**2).sum() / count))
    if metric == "mae":
        return float(np.abs(error).sum() / count)
    centred = np.where(present, truth - np.nanmean(truth, axis=0), 0.0)
    total = (centred**2).sum(axis=0)
    return float(np.mean(1.0 - (error**2).sum(axis=0) / np.where(total > 0, total, 1.0)))
