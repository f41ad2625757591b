"""Masks (TGS salt, Severstal, SIIM, Carvana): a class per target column, each cell its mask's
run-length code in the image's own pixels (data.masks reads every shape Kaggle ships them in);
a U-Net or FPN over a timm encoder (learn.segmenter) with an output map per class, BCE plus
Dice (or either alone, or Lovász), and Kaggle's scores: mean Dice per image and class, an empty
prediction of an empty mask scoring 1, and IoU alike.

Masks move with their image under every geometric augmentation, nearest-neighbour, on both
executors. The post-processing is the task's decision rule (tasks.mask_rules: a probability
threshold, the smallest component kept, the fewest pixels for a mask not to be empty), fitted
per class on out-of-fold probability masks, each fold's by the other folds', as thresholds are.
Predictions are uint8 probability masks (0-255) at the model's side: (N, classes, S, S).
"""

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.data import masks as mask_tables
from pipeline.data import rle
from pipeline.errors import PipelineError
from pipeline.tables import line
from pipeline.tasks import mask_rules
from pipeline.tasks.base import Task
from pipeline.tasks.mask_rules import Rule

CODE_NAMES = ("encodedpixels", "rle_mask", "rle", "mask", "masks", "annotation")
MAX_CLASSES = 20  # a column with more distinct values than this does not name a mask's class
AREA_BINS = 3  # of a class's nonempty masks, by their area: what stratified folds share out


class Segmentation(Task):
    name = "segmentation"
    METRICS: ClassVar[dict[str, bool]] = {"dice": True, "iou": True}
    LOSSES = ("bce_dice", "bce", "dice", "lovasz")
    FORMATS = ("rle",)
    fold_kind = "stratified"
    reads_masks = True
    dense = True  # an output map per class, not a vector

    def __init__(self, classes: list, metric: str = "dice", loss: str = "bce_dice", order: str = "column", rules=None):
        self.labels = [str(c) for c in classes]
        self.metric, self.loss_name, self.order = metric, loss, order
        self.rules = [Rule(**r) for r in rules] if rules else [Rule()] * len(self.labels)

    # --- what needs no labels --------------------------------------------------------------

    @classmethod
    def training_table(cls, frame: pd.DataFrame, layout: Any, source) -> tuple[pd.DataFrame, list[str]]:
        return mask_tables.training_table(frame, layout, source)

    @classmethod
    def claim_columns(cls, table: pd.DataFrame, columns: list[str]) -> list[str]:
        """Columns of run-length codes: named as Kaggle names them, or every cell a valid code."""
        return [c for c in columns if c.lower() in CODE_NAMES or _codes(table[c])]

    @classmethod
    def keys_beside(cls, table: pd.DataFrame, targets: list[str], others: list[str]) -> list[tuple]:
        """One code column beside a column of a few values (Severstal's ClassId): a row per image
        and class."""
        few = [c for c in others if table[c].notna().all() and table[c].nunique() <= MAX_CLASSES]
        if len(targets) == 1 and len(few) == 1:
            return [("data.class_column", few[0], "a few values beside the codes: the class of each row's mask")]
        return []

    @classmethod
    def detect(cls, layout: str, label_columns: list[str], table: pd.DataFrame | None) -> str | None:
        if table is None or not label_columns or any(c not in table.columns for c in label_columns):
            return None
        if all(_codes(table[c]) for c in label_columns):
            return f"{', '.join(map(repr, label_columns))} hold run-length codes of masks"
        return None

    @classmethod
    def check_targets(cls, table: pd.DataFrame, targets: list[str], source: str) -> None:
        """Checked as they are read (data.masks); whether they fit their images, as they are decoded."""

    @classmethod
    def strata(cls, table: pd.DataFrame, targets: list[str]) -> pd.Series:
        """Which classes each image has, and for one class the tercile of its area: folds get
        their share of empty images and of small and large masks."""
        areas = table[targets].apply(lambda codes: codes.map(area_of))
        pattern = (areas > 0).astype(int).astype(str).agg("".join, axis=1)
        if len(targets) > 1:
            return pattern
        nonempty = areas.iloc[:, 0][areas.iloc[:, 0] > 0]
        if nonempty.nunique() < AREA_BINS:
            return pattern
        bins = pd.qcut(nonempty, AREA_BINS, labels=False, duplicates="drop").reindex(table.index)
        return pattern + bins.map(lambda b: "" if pd.isna(b) else f"-{int(b)}")

    @classmethod
    def describe_targets(cls, table: pd.DataFrame, targets: list[str]) -> str:
        empty = [int((table[c] == "").sum()) for c in targets]
        shares = ", ".join(f"{c}: {n} empty" for c, n in zip(targets, empty, strict=True))
        return f"{len(targets)} mask class(es), run-length codes; of {len(table)} images {shares}"

    @classmethod
    def sample_format(cls, columns: list[str], table: pd.DataFrame, targets: list[str]) -> tuple[str, str]:
        return "rle", "run-length codes"

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Segmentation":
        order = getattr(cfg.data, "rle_order", "column")
        return cls(labels, cls.metric_of(cfg.train.metric), cls.loss_of(cfg.train.loss), order)

    @classmethod
    def from_meta(cls, meta: dict, cfg: Any) -> "Segmentation":
        return cls.of_labels(cfg, meta["labels"])

    # --- bound to the classes ---------------------------------------------------------------

    def encode(self, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        """(N, classes) the codes, decoded per image as it is read."""
        return table[targets].fillna("").to_numpy(dtype=object)

    def masks_of(self, codes: np.ndarray, original: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """One row's codes -> (height, width, classes) uint8 0/1 at `shape`, resized from the
        image's `original` (height, width), nearest neighbour."""
        import cv2

        height, width = (int(v) for v in original)
        planes = [
            rle.decode(code, (height, width), self.order, f"mask of class {c!r}")
            for c, code in zip(self.labels, codes, strict=True)
        ]
        stacked = np.stack(planes, axis=2)
        if (height, width) == tuple(shape):
            return stacked
        resized = cv2.resize(stacked, tuple(shape)[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        return resized.reshape(*shape, len(planes))

    def augment_item(self, augment: Any, image: np.ndarray, target: np.ndarray, original: np.ndarray):
        mask = self.masks_of(target, original, image.shape[:2])
        if augment is None:
            return image, mask
        moved = augment(image=image, mask=mask)
        return moved["image"], moved["mask"]

    def finish_item(self, finish: Any, image: np.ndarray, target: np.ndarray):
        """(S, S, C) image and (classes, S, S) mask at the model's side."""
        moved = finish(image=image, mask=target)
        return moved["image"], np.ascontiguousarray(moved["mask"].transpose(2, 0, 1))

    def device_targets(self, targets: np.ndarray, sizes: np.ndarray, side: int) -> np.ndarray:
        """(N, classes, side, side) uint8 masks, as the resident images are resized."""
        return np.stack(
            [self.masks_of(t, s, (side, side)).transpose(2, 0, 1) for t, s in zip(targets, sizes, strict=True)]
        )

    def warp_targets(self, targets: Any, warp: Any) -> Any:
        return warp.masks(targets)

    # --- the head ---------------------------------------------------------------------------

    def activate(self, outputs: Any) -> Any:
        """(B, classes, S, S) logits -> probabilities."""
        return outputs.float().sigmoid()

    def loss(self, outputs: Any, target: Any) -> Any:
        import torch.nn.functional as F
        from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss

        target, outputs = target.float(), outputs.float()
        if self.loss_name == "lovasz":
            return LovaszLoss("multilabel", per_image=True)(outputs, target)
        bce = F.binary_cross_entropy_with_logits(outputs, target)
        if self.loss_name == "bce":
            return bce
        dice = DiceLoss("multilabel", from_logits=True)(outputs, target)
        return dice if self.loss_name == "dice" else bce + dice

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray) -> dict:
        """At a threshold of 0.5 and no other rule: mean Dice and IoU per image and class, and
        the share of (image, class) pairs told empty or not correctly."""
        predicted, truth = predictions >= 0.5, target > 0
        flat = lambda masks: masks.reshape(-1, *masks.shape[2:])  # noqa: E731  (N*classes, S, S)
        empty_right = predicted.any(axis=(2, 3)) == truth.any(axis=(2, 3))
        return {
            "dice": float(mask_rules.dice(flat(predicted), flat(truth)).mean()),
            "iou": float(mask_rules.iou(flat(predicted), flat(truth)).mean()),
            "empty_accuracy": float(empty_right.mean()),
        }

    # --- the decision: the post-processing ---------------------------------------------------

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """The metric of (N, classes, S, S) uint8 probabilities decided by the rules, against 0/1 truth."""
        scored = mask_rules.dice if self.metric == "dice" else mask_rules.iou
        decided = self.decide(predictions)
        return float(np.mean([scored(decided[:, j], truth[:, j] > 0) for j in range(len(self.labels))]))

    def decide(self, predictions: np.ndarray) -> np.ndarray:
        """(N, classes, S, S) uint8 probabilities -> the masks the rules keep, as 0/255, which
        the rules keep as they are (their threshold is under 1, their components kept whole)."""
        decided = np.stack([[rule.apply(p) for p in predictions[:, j]] for j, rule in enumerate(self.rules)], axis=1)
        return decided.astype(np.uint8) * 255

    def fit_decision(self, predictions: np.ndarray, truth: np.ndarray) -> "Segmentation":
        """Each class's rule fitted to mean Dice on its probability masks."""
        rules = [mask_rules.fit(predictions[:, j], truth[:, j] > 0)[0] for j in range(len(self.labels))]
        return self.with_decision({"rules": [r.as_dict() for r in rules]})

    def decision(self) -> dict:
        shown = "; ".join(
            f"{c}: threshold {r.threshold:.2f}, components of {r.min_component:.2%}+, empty under {r.min_total:.2%}"
            for c, r in zip(self.labels, self.rules, strict=True)
        )
        return {"rules": [r.as_dict() for r in self.rules], "summary": f"post-processing {shown}"}

    def with_decision(self, decision: dict) -> "Segmentation":
        rules = decision.get("rules") or [r.as_dict() for r in self.rules]
        return Segmentation(self.labels, self.metric, self.loss_name, self.order, rules)


def area_of(code: str) -> int:
    """Pixels in a checked code's mask: the sum of its lengths."""
    return int(sum(int(n) for n in code.split()[1::2])) if code else 0


def _codes(values: pd.Series) -> bool:
    """Whether a column holds run-length codes: text cells, some with a run, each a valid code."""
    cells = mask_tables.blank_empty(values)
    if values.dtype != object or not (cells != "").any():
        return False
    try:
        for i, code in enumerate(cells):
            rle.runs(code, f"line {line(i)}")
    except PipelineError:
        return False
    return cells.str.split().map(len).max() >= 2
