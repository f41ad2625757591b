"""The `Task` protocol: everything that differs between problem types, one subclass per type.

The class answers what needs no labels: what `make init` takes for its targets, how they are
checked, what folds stratify on, its defaults and search space, how a submission file is scored.
An instance is bound to the labels a model predicts (the classes, the target columns) and
answers the rest: the encoding, the head's loss and activation, the metrics, the outputs in the
competition's units and the out-of-fold table, how TTA views and blends combine predictions, how
augmentations move the targets on both executors, the submission and the report's sections.

The defaults here are those of a target an image's geometry does not move, scored by its own
metric in its own units. No torch at import: the stages that only read predictions (`make blend`)
start without it; the methods that take tensors use the tensors' own methods.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.predictions import OutOfFold, Raw
from pipeline.tables import line, require_columns, show
from pipeline.tasks.pseudo_targets import PseudoTargets

Section = tuple[str, str]  # a report section: (title, HTML)
Proposal = tuple[str, object, str]  # a default: (dotted key, value, why)


class Task(PseudoTargets):  # what a teacher's predictions become as targets: tasks.pseudo_targets
    name: ClassVar[str]
    METRICS: ClassVar[dict[str, bool]]  # metric -> whether higher is better; the first is the default
    # metrics a blend's weights minimise directly (Task.smooth_loss); the others are hill-climbed
    SMOOTH_METRICS: ClassVar[frozenset[str]] = frozenset()
    # root mean squared errors: an ensemble's gain over its members is exact (learn.ensemble)
    SQUARED_ERROR_METRICS: ClassVar[frozenset[str]] = frozenset()
    # metrics that count rows: one validation row moves them by at least 1/rows
    COUNTING_METRICS: ClassVar[frozenset[str]] = frozenset()
    LOSSES: ClassVar[tuple[str, ...]]  # train.loss values; the first is the default
    FORMATS: ClassVar[tuple[str, ...]] = ("values",)  # predict.format values
    fold_kind: ClassVar[str] = "kfold"  # what folds.kind=auto means
    # what a stacked blend's trees predict (learn.stacking): "class", "labels" or "values"
    stack_target: ClassVar[str] = "values"
    stratify_on: ClassVar[str] = "target_mean"  # what folds.stratify_on=auto means
    takes_extra_images: ClassVar[bool] = False  # scraped images, labelled by their source's name
    mixes: ClassVar[bool] = False  # mixup and cutmix apply (and are searched)
    crops: ClassVar[bool] = True  # augmentations that may cut the targets out of the image apply
    reads_masks: ClassVar[bool] = False  # data.class_column, class_separator and mask_dir apply
    dense: ClassVar[bool] = False  # the model predicts a map per output (learn.segmenter), not a vector

    # --- what needs no labels --------------------------------------------------------------

    @classmethod
    def check(cls, cfg: Any) -> None:
        """The config's task-dependent keys; a value this task cannot use raises ValueError."""
        for key, value, allowed in (
            ("train.loss", cfg.train.loss, cls.LOSSES),
            ("train.metric", cfg.train.metric, tuple(cls.METRICS)),
            ("predict.format", cfg.predict.format, cls.FORMATS),
        ):
            if value != "auto" and value not in allowed:
                raise ValueError(f"{key}={value!r} is not for {cls.name}; use auto or one of {', '.join(allowed)}")
        for key in ("class_column", "class_separator", "mask_dir"):
            if getattr(cfg.data, key, None) is not None and not cls.reads_masks:
                raise ValueError(f"data.{key} says where masks are; a {cls.name} competition has none (unset it)")

    @classmethod
    def claim_columns(cls, table: pd.DataFrame, columns: list[str]) -> list[str]:
        """Of a training table's candidate target `columns`, those `make init` takes as this task's
        targets by their names or values; none here."""
        return []

    @classmethod
    def keys_beside(cls, table: pd.DataFrame, targets: list[str], others: list[str]) -> list[Proposal]:
        """The data keys `make init` sets beside the targets it claimed, from `others`; none here."""
        return []

    @classmethod
    def detect(cls, layout: str, label_columns: list[str], table: pd.DataFrame | None) -> str | None:
        """Why a competition of this `data.layout` and these label columns of the training
        `table` (None: the layout has no table) is this task, or None."""
        return None

    @classmethod
    def training_table(cls, frame: pd.DataFrame, layout: Any, source: Path) -> tuple[pd.DataFrame, list[str]]:
        """An image_csv layout's train CSV as one row per image with its target columns, and
        those columns; here as it is, the targets data.label_columns."""
        require_columns(frame, [layout.id_column, *layout.label_columns], source)
        return frame, list(layout.label_columns)

    @classmethod
    def check_targets(cls, table: pd.DataFrame, targets: list[str], source: str) -> None:
        """A bad target is an error naming its line and column: here, a cell that is not a number."""
        for column in targets:
            values = table[column]
            bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                where = f"{source} line {line(i)}, column {column!r}"
                raise PipelineError(f"{where}: {show(values.iloc[i])} is not a number")

    @classmethod
    def check_sizes(cls, table: pd.DataFrame, targets: list[str], sizes: np.ndarray, source: str) -> None:
        """Targets checked against their images' (height, width) in the files; nothing here."""

    @classmethod
    def strata(cls, table: pd.DataFrame, targets: list[str]) -> pd.Series | None:
        """What folds.kind=stratified gives each fold its share of; None: this task has none."""
        return None

    @classmethod
    def label_matrix(cls, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        """(N, labels) 0/1: what folds.kind=multilabel stratifies; here the targets, each a 0/1 column."""
        values = table[targets].apply(pd.to_numeric, errors="coerce")
        if not values.isin([0, 1]).all().all():
            column = next(c for c in targets if not values[c].isin([0, 1]).all())
            raise PipelineError(f"folds.kind=multilabel needs 0/1 label columns; column {column!r} holds other values")
        return values.to_numpy()

    @classmethod
    def metric_of(cls, chosen: str) -> str:
        """The competition metric for train.metric=`chosen` ("auto": the task's first)."""
        return next(iter(cls.METRICS)) if chosen == "auto" else chosen

    @classmethod
    def fold_kind_of(cls, chosen: str) -> str:
        """The split for folds.kind=`chosen` ("auto": the task's)."""
        return cls.fold_kind if chosen == "auto" else chosen

    @classmethod
    def loss_of(cls, chosen: str) -> str:
        return cls.LOSSES[0] if chosen == "auto" else chosen

    @classmethod
    def describe_targets(cls, table: pd.DataFrame, targets: list[str]) -> str:
        """One line for `make init` and `make data`: what the targets hold."""
        return f"{len(targets)} target column(s): {', '.join(targets)}"

    @classmethod
    def sample_format(cls, columns: list[str], table: pd.DataFrame, targets: list[str]) -> tuple[str, str]:
        """predict.format for a sample submission with these columns, and why."""
        return "values", "one column per target"

    @classmethod
    def proposals(cls, cfg: Any, facts: Any) -> list[Proposal]:
        """Defaults beyond the model and schedule every task shares (the defaults stage keeps
        those of the keys the config leaves unset)."""
        return []

    @classmethod
    def inference_wheels(cls) -> list[str]:
        """Requirements a model of this task needs to predict beyond the project's own (which
        `make package` bundles beside package.wheels); none here."""
        return []

    @classmethod
    def aug_preset(cls, cfg: Any, facts: Any) -> tuple[dict, str] | None:
        """The `aug` values for an unset aug section, and why; None: the image kind decides."""
        return None

    @classmethod
    def search_space(cls, cfg: Any) -> dict[str, dict]:
        """Tune space entries (as `config.Param` fields) only this task has."""
        return {}

    @classmethod
    def label_extra(cls, extra: pd.DataFrame, table: pd.DataFrame, targets: list[str], source: str) -> pd.DataFrame:
        """Scraped rows (labelled by their source's name) as training rows of this task."""
        why = f"{source}: scraped images come with a class; a {cls.name} competition cannot use them"
        raise PipelineError(f"{why} (set data.use_extra=false)")

    @classmethod
    def score_file(cls, metric: str, submitted: pd.DataFrame, solution: pd.DataFrame) -> float:
        """`metric` of a submission file against the solution file (rows in the same order)."""
        raise PipelineError(f"scoring {metric} against {list(solution.columns)} is not supported")

    @classmethod
    def of_data(cls, cfg: Any, table: pd.DataFrame, targets: list[str]) -> "Task":
        """The task a model of `cfg` trained on `table` solves, with its loss as cfg sets it."""
        return cls.of_labels(cfg, cls.labels_of(table, targets))

    @classmethod
    def labels_of(cls, table: pd.DataFrame, targets: list[str]) -> list:
        """What the model's outputs stand for, in their order: here, the target columns."""
        return list(targets)

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Task":
        """The task over known labels, with its loss and metric as `cfg` sets them."""
        raise NotImplementedError

    @classmethod
    def from_meta(cls, meta: dict, cfg: Any) -> "Task":
        """The task a saved model solves, from what `meta()` wrote beside its weights."""
        raise NotImplementedError

    # --- bound to the labels ---------------------------------------------------------------

    metric: str
    labels: list

    @property
    def n_outputs(self) -> int:
        return len(self.labels)

    @property
    def higher_is_better(self) -> bool:
        return self.METRICS[self.metric]

    def meta(self) -> dict:
        """What a saved model needs to be read again (from_meta)."""
        return {"task": self.name, "labels": [str(label) for label in self.labels]}

    def encode(self, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        """The network's targets of `table`'s rows."""
        return table[targets].to_numpy(np.float32)

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray) -> dict:
        """Every metric of the activated outputs against encoded targets; `sizes` (N, 2) the
        images' (height, width) in their files."""
        raise NotImplementedError

    def prediction_columns(self) -> list[str]:
        return [f"pred_{label}" for label in self.labels]

    def to_units(self, predictions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Activated outputs (N, outputs) -> the competition's units."""
        return predictions

    def compact(self, predictions: np.ndarray) -> np.ndarray:
        """Activated outputs as they are kept on disk (a dense task's as uint8); here as they are."""
        return predictions

    def out_of_fold(self, folds: pd.DataFrame, rows: np.ndarray, raw: Raw) -> OutOfFold:
        """folds.csv's `rows` (id, targets, fold) and a model's raw predictions on them, in the
        competition's units."""
        table = folds.iloc[rows].reset_index(drop=True)
        return OutOfFold(table, self.to_units(raw.predictions, raw.sizes), raw.sizes)

    def oof_table(self, oof: OutOfFold) -> pd.DataFrame:
        """What oof.csv holds and the report reads: the rows with the predictions beside them."""
        return pd.concat([oof.table, pd.DataFrame(oof.predictions, columns=self.prediction_columns())], axis=1)

    def oof_scores(self, oof: OutOfFold, targets: list[str]) -> tuple[list[float], float, dict]:
        """The competition metric of out-of-fold predictions: each fold's and that of all rows
        (held_out_scores), and the decision fitted on all rows, which a submission of these
        models uses."""
        predictions, truth = oof.predictions, self.truth(oof, targets)
        per_fold, pooled = self.held_out_scores(predictions, truth, oof.folds)
        return per_fold, pooled, self.fit_decision(predictions, truth).decision()

    def held_out_scores(
        self, predictions: np.ndarray, truth: np.ndarray, fold_of_row: np.ndarray
    ) -> tuple[list[float], float]:
        """Each fold's score, and that of every row, with each fold's predictions decided by the
        decision fitted on the other folds' rows (fit_decision): a CV that never scores a
        threshold on the rows that chose it."""
        decided, per_fold = np.empty_like(predictions), []
        for fold in np.unique(fold_of_row):
            held_out = fold_of_row == fold
            # one fold alone (train.folds=[0]) has no other rows to fit on: it keeps the task's own
            fitted = self.fit_decision(predictions[~held_out], truth[~held_out]) if (~held_out).any() else self
            decided[held_out] = fitted.decide(predictions[held_out])
            per_fold.append(self.score(decided[held_out], truth[held_out]))
        return per_fold, self.score(decided, truth)

    # what blends combine: predictions in the competition's units against the truth in them

    def truth(self, oof: OutOfFold, targets: list[str]) -> np.ndarray:
        """The targets of out-of-fold rows in the competition's units, as `score` compares
        predictions to them."""
        return oof.table[targets].to_numpy(np.float64)

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """The competition metric of predictions in the competition's units."""
        raise NotImplementedError

    def smooth_loss(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """A smooth loss a blend's weights minimise (the mean squared error here)."""
        return float(np.nanmean((predictions - truth) ** 2))

    def smooth_loss_gradient(self, stack: np.ndarray, blended: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """d smooth_loss / d w_i for blended = sum_i w_i stack[i]; stack (M, N, D)."""
        present = ~np.isnan(truth)
        residual = np.where(present, blended - np.nan_to_num(truth), 0.0)
        return 2.0 * (stack * residual).sum(axis=(1, 2)) / max(int(present.sum()), 1)

    def ranks_blend(self) -> bool:
        """Whether blend.space=ranks keeps this task's metric."""
        return False

    def aligned(self, each: list[np.ndarray]) -> list[np.ndarray]:
        """Several models' predictions of the same rows in the competition's units, made addable."""
        return each

    def finish_blend(self, blended: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """A blend of predictions in the competition's units, made valid again."""
        return blended

    # what is fitted beside the network: on a fit's training targets, on out-of-fold predictions

    def fitted_to(self, targets: np.ndarray) -> "Task":
        """The task as one fit's model uses it, given that fit's encoded training targets (a
        regression's scale); here the task itself."""
        return self

    def fit_decision(self, predictions: np.ndarray, truth: np.ndarray) -> "Task":
        """The task with its decision rule (a multi-label's thresholds) fitted to the metric on
        predictions in the competition's units; here none."""
        return self

    def decide(self, predictions: np.ndarray) -> np.ndarray:
        """Predictions in the competition's units -> what the metric and a submission of decisions
        read: `score` of decided predictions is that of the decision (idempotent)."""
        return predictions

    def decision(self) -> dict:
        """The fitted decision rule as JSON with a one-line "summary" (with_decision reads it back)."""
        return {}

    def with_decision(self, decision: dict) -> "Task":
        return self

    # --- the head ---------------------------------------------------------------------------

    def loss(self, outputs: Any, target: Any) -> Any:
        raise NotImplementedError

    def eval_loss(self, outputs: Any, target: Any) -> Any:
        return self.loss(outputs, target)

    def activate(self, outputs: Any) -> Any:
        """(B, outputs) logits -> what `metrics` and `to_units` read."""
        return outputs.float()

    # --- augmentation and TTA ---------------------------------------------------------------

    flip_swap: np.ndarray | None = None  # where each point goes under a horizontal flip

    def compose_params(self) -> dict:
        """albumentations.Compose's keyword arguments for what moves with the image."""
        return {}

    def augment_item(self, augment: Callable | None, image: np.ndarray, target: Any, original: np.ndarray):
        """One training image and its target through the per-image augmentations; `original`
        the image's (height, width) in its file. Here the target stays as it is."""
        return (image if augment is None else augment(image=image)["image"]), target

    def finish_item(self, finish: Callable, image: np.ndarray, target: Any):
        """An augmented image resized to the model's side by `finish`, and its target (here as it is)."""
        return finish(image=image)["image"], target

    def device_targets(self, targets: np.ndarray, sizes: np.ndarray, side: int) -> np.ndarray:
        """Targets of images held on the device at the model's `side` (sizes: in their files)."""
        return targets

    def warp_targets(self, targets: Any, warp: Any) -> Any:
        """A batch's targets after the batched executor's warp (batch_aug.Warp)."""
        return targets

    def view_back(self, view: Any, outputs: Any) -> Any:
        """Activated outputs of a TTA view -> those of the image itself (augment.tta.View)."""
        return outputs

    # --- the submission and the report ------------------------------------------------------

    def submission_format(self, cfg: Any, sample: pd.DataFrame | None) -> str:
        return "values"

    def submission(
        self,
        fmt: str,
        ids: np.ndarray,
        predictions: np.ndarray,
        sample: pd.DataFrame | None,
        sizes: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """One row per image: the id, then a column per target, named as the sample names them.
        `sizes`: the images' (height, width) in their files, where a dense task writes its masks."""
        columns = list(sample.columns) if sample is not None else ["id", *map(str, self.labels)]
        return pd.DataFrame({columns[0]: ids, **dict(zip(columns[1:], predictions.T, strict=True))})

    def known_labels(self, fmt: str) -> list | None:
        """The values a submission's label column may hold; None: not a label column."""
        return None

    def report_sections(self, oof: pd.DataFrame, out: Any, image_of: Callable, size_of: Callable) -> list[Section]:
        return []


def masked_loss(name: str, predicted: Any, target: Any) -> Any:
    """The mean `name` loss (l1, mse, smooth_l1) over the labelled cells of `target` only: a
    missing cell (NaN) adds nothing, not even a NaN gradient."""
    import torch.nn.functional as F

    losses = {"l1": F.l1_loss, "mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}
    present = ~target.isnan()
    per_cell = losses[name](predicted, target.nan_to_num(), reduction="none")
    return (per_cell * present).sum() / present.sum().clamp(min=1)
