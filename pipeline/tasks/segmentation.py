"""Masks (TGS salt, Severstal, SIIM, Carvana): a class per target column, each cell its mask's
run-length code in the image's own pixels (data.masks reads every shape Kaggle ships them in);
a U-Net or FPN over a timm encoder (learn.segmenter) with an output map per class, BCE plus
Dice (or either alone, or Lovász), and Kaggle's scores: mean Dice per image and class, an empty
prediction of an empty mask scoring 1, and IoU alike.

Masks move with their image under every geometric augmentation, nearest-neighbour, on both
executors. The post-processing is the task's decision rule (tasks.mask_rules: a probability
threshold, the smallest component kept, the fewest pixels for a mask not to be empty), fitted
per class on out-of-fold probability masks, each fold's by the other folds', as thresholds are.
Predictions are uint8 probability masks (0-255) at the model's side: (N, classes, S, S), and so
are the targets the loader serves, labels and a teacher's alike (tasks.mask_targets).
"""

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.data import masks as mask_tables
from pipeline.data import rle
from pipeline.data.mask_sheets import Sheet
from pipeline.errors import PipelineError
from pipeline.predictions import OutOfFold
from pipeline.tables import line
from pipeline.tasks import mask_rules, register
from pipeline.tasks.base import Proposal, Section, Task
from pipeline.tasks.mask_rules import Rule
from pipeline.tasks.mask_targets import MaskTargets, cell_map, mask_at

CODE_NAMES = ("encodedpixels", "rle_mask", "rle", "mask", "masks", "annotation")
MAX_CLASSES = 20  # a column with more distinct values than this does not name a mask's class
AREA_BINS = 3  # of a class's nonempty masks, by their area: what stratified folds share out


@register
class Segmentation(MaskTargets, Task):  # what a teacher's masks become as targets: tasks.mask_targets
    name = "segmentation"
    METRICS: ClassVar[dict[str, bool]] = {"dice": True, "iou": True}
    LOSSES = ("bce_dice", "bce", "dice", "lovasz")
    FORMATS = ("rle",)
    fold_kind = "stratified"
    reads_masks = True
    dense = True  # an output map per class, not a vector

    def __init__(
        self, classes: list, metric="dice", loss="bce_dice", order="column", rules=None, sheet: Sheet | None = None
    ):
        self.labels = [str(c) for c in classes]
        self.metric, self.loss_name, self.order, self.sheet = metric, loss, order, sheet or Sheet()
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
    def keys_beside(cls, table: pd.DataFrame, targets: list[str], others: list[str]) -> list[Proposal]:
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
            verb = "holds" if len(label_columns) == 1 else "hold"
            return f"{', '.join(map(repr, label_columns))} {verb} run-length codes of masks"
        return None

    @classmethod
    def check_targets(cls, table: pd.DataFrame, targets: list[str], source: str) -> None:
        """Checked as they are read (data.masks); whether they fit their images, as they are decoded."""

    @classmethod
    def check_sizes(cls, table: pd.DataFrame, targets: list[str], sizes: np.ndarray, source: str) -> None:
        """Every code ends inside its image: one past it names the image and the class."""
        for image_id, size, codes in zip(table["id"], sizes, table[targets].to_numpy(dtype=object), strict=True):
            for name, code in zip(targets, codes, strict=True):
                rle.fitted_runs(code, tuple(int(v) for v in size), f"{source}, id {image_id!r}, class {name!r}")

    @classmethod
    def strata(cls, table: pd.DataFrame, targets: list[str]) -> pd.Series:
        """Which classes each image has, and for one class the tercile of its area: folds get
        their share of empty images and of small and large masks."""
        areas = table[targets].apply(lambda codes: codes.map(lambda code: rle.area(code, "a training mask")))
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
    def inference_wheels(cls) -> list[str]:
        """The decoders' library, at the version that trained: the Kaggle image may lack it."""
        from importlib.metadata import version

        return [f"segmentation-models-pytorch=={version('segmentation-models-pytorch')}"]

    @classmethod
    def score_file(cls, metric: str, submitted: pd.DataFrame, solution: pd.DataFrame) -> float:
        """Mean Dice (or IoU) over every image and class of two sheets of codes (rows in the same
        order, any of the three layouts), from the runs."""
        if metric not in cls.METRICS:
            return super().score_file(metric, submitted, solution)
        scores = [
            code_score(metric, guess, truth, f"submission line {line(i)}, column {column!r}")
            for column in solution.columns[1:]
            if _codes(solution[column], allow_empty=True)
            for i, (guess, truth) in enumerate(
                zip(mask_tables.blank_empty(submitted[column]), mask_tables.blank_empty(solution[column]), strict=True)
            )
        ]
        return float(np.mean(scores))

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Segmentation":
        order = getattr(cfg.data, "rle_order", "column")
        metric, loss = cls.metric_of(cfg.train.metric), cls.loss_of(cfg.train.loss)
        return cls(labels, metric, loss, order, sheet=Sheet.of(cfg.data))

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
        named = zip(self.labels, codes, strict=True)
        return np.stack([mask_at(code, original, shape, self.order, f"mask of class {c!r}") for c, code in named], 2)

    def target_maps(self, cells: np.ndarray, original: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """One row's target cells (labels or a teacher's, tasks.mask_targets) -> (height, width,
        classes) uint8 0-255 at `shape`."""
        named = zip(self.labels, cells, strict=True)
        return np.stack([cell_map(cell, original, shape, self.order, f"mask of class {c!r}") for c, cell in named], 2)

    def augment_item(self, augment: Any, image: np.ndarray, target: np.ndarray, original: np.ndarray):
        mask = self.target_maps(target, original, image.shape[:2])
        if augment is None:
            return image, mask
        moved = augment(image=image, mask=mask)
        return moved["image"], moved["mask"]

    def finish_item(self, finish: Any, image: np.ndarray, target: np.ndarray):
        """(S, S, C) image and (classes, S, S) mask at the model's side."""
        moved = finish(image=image, mask=target)
        return moved["image"], np.ascontiguousarray(moved["mask"].transpose(2, 0, 1))

    def device_targets(self, targets: np.ndarray, sizes: np.ndarray, side: int) -> np.ndarray:
        """(N, classes, side, side) uint8 0-255 target maps, as the resident images are resized."""
        return np.stack(
            [self.target_maps(t, s, (side, side)).transpose(2, 0, 1) for t, s in zip(targets, sizes, strict=True)]
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

        target, outputs = target.float() / 255, outputs.float()  # 0-255 maps: tasks.mask_targets
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

    # --- out of fold: uint8 probability masks at the model's side -----------------------------

    def compact(self, predictions: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(predictions, dtype=np.float32) * 255).astype(np.uint8)

    def aligned(self, each: list[np.ndarray]) -> list[np.ndarray]:
        """Maps (N, classes, S, S) of models of different sides, resized bilinear to the largest S."""
        import cv2

        side = max(maps.shape[-1] for maps in each)
        out = []
        for maps in each:
            if maps.shape[-1] != side:
                flat = [
                    cv2.resize(m, (side, side), interpolation=cv2.INTER_LINEAR)
                    for m in maps.reshape(-1, *maps.shape[2:])
                ]
                maps = np.stack(flat).reshape(*maps.shape[:2], side, side)
            out.append(maps)
        return out

    def truth(self, oof: OutOfFold, targets: list[str]) -> np.ndarray:
        """(N, classes, S, S) uint8 0/1 masks at the predictions' side."""
        side = oof.predictions.shape[-2:]
        codes = oof.table[targets].fillna("").to_numpy(dtype=object)
        return np.stack([self.masks_of(c, s, side).transpose(2, 0, 1) for c, s in zip(codes, oof.sizes, strict=True)])

    def oof_table(self, oof: OutOfFold) -> pd.DataFrame:
        """The rows with each class's mask at a threshold of 0.5 as a code at the image's size
        (pred_<class>), and its Dice and true and predicted share of the image at the model's."""
        truth, predicted = self.truth(oof, self.labels) > 0, oof.predictions >= 128
        codes = self._plain_codes(oof.predictions, oof.sizes)
        columns = {}
        for j, name in enumerate(self.labels):
            columns[f"pred_{name}"] = codes[:, j] if len(codes) else []
            columns[f"dice_{name}"] = mask_rules.dice(predicted[:, j], truth[:, j])
            columns[f"area_{name}"] = truth[:, j].mean(axis=(1, 2))
            columns[f"predicted_area_{name}"] = predicted[:, j].mean(axis=(1, 2))
        return pd.concat([oof.table, pd.DataFrame(columns)], axis=1)

    def _plain_codes(self, predictions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """(N, classes) each image's masks at a threshold of 0.5 and no other rule, as codes at its size."""
        plain = self.with_decision({"rules": [Rule().as_dict()] * len(self.labels)})
        codes = [plain._image_codes(p, size) for p, size in zip(predictions, sizes, strict=True)]
        return np.array(codes, dtype=object).reshape(len(codes), len(self.labels))

    def smooth_loss(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """The binary cross entropy of probabilities (0-255) against 0/1 masks, over every pixel."""
        p = np.clip(predictions / 255.0, 1e-7, 1 - 1e-7)
        return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())

    def smooth_loss_gradient(self, stack: np.ndarray, blended: np.ndarray, truth: np.ndarray) -> np.ndarray:
        p = np.clip(blended / 255.0, 1e-7, 1 - 1e-7)
        per_pixel = -(truth / p - (1 - truth) / (1 - p)) / 255.0
        return (stack * per_pixel).reshape(len(stack), -1).mean(axis=1)

    def view_back(self, view: Any, outputs: Any) -> Any:
        """(B, classes, S, S) probabilities in a TTA view -> in the image: the view's warp undone."""
        if view.is_identity:
            return outputs
        import torch

        from pipeline.augment.tta import warp

        square = torch.cat([view.theta, torch.tensor([[0.0, 0.0, 1.0]])]).inverse()[:2]
        return warp(outputs, square.to(outputs).expand(len(outputs), 2, 3))

    # --- the decision: the post-processing ---------------------------------------------------

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """The metric of (N, classes, S, S) uint8 probabilities decided by the rules, against 0/1 truth."""
        scored = mask_rules.dice if self.metric == "dice" else mask_rules.iou
        decided = self.decide(predictions)
        return float(np.mean([scored(decided[:, j] > 0, truth[:, j] > 0) for j in range(len(self.labels))]))

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
        return Segmentation(self.labels, self.metric, self.loss_name, self.order, rules, self.sheet)

    # --- the submission ------------------------------------------------------------------------

    def submission_format(self, cfg: Any, sample: pd.DataFrame | None) -> str:
        return "rle"

    def submission(
        self, fmt: str, ids: np.ndarray, predictions: np.ndarray, sample: pd.DataFrame | None, sizes=None
    ) -> pd.DataFrame:
        """Each image's masks at its own size, the rules applied, as run-length codes laid out as
        the competition's sheet lays them (data.mask_sheets), named as the sample names them."""
        codes = [self._image_codes(p, size) for p, size in zip(predictions, sizes, strict=True)]
        by_class = {name: [c[j] for c in codes] for j, name in enumerate(self.labels)}
        return self.sheet.written(by_class, list(ids), sample)

    def _image_codes(self, probabilities: np.ndarray, size: np.ndarray) -> list[str]:
        """(classes, S, S) probabilities (0-255) -> each class's code at the image's (height, width)."""
        import cv2

        height, width = (int(v) for v in size)
        resized = cv2.resize(np.ascontiguousarray(probabilities.transpose(1, 2, 0), dtype=np.float32), (width, height))
        resized = resized.reshape(height, width, -1)
        return [rle.encode(rule.apply(resized[..., j]), self.order) for j, rule in enumerate(self.rules)]

    def report_sections(self, oof: pd.DataFrame, out: Any, image_of: Any, size_of: Any) -> list[Section]:
        """True and predicted masks on samples and on the worst images by Dice, and Dice by area."""
        first = self.labels[0]
        dice = oof[[f"dice_{c}" for c in self.labels]].to_numpy(float).mean(axis=1)
        plots.save(plots.plot_dice_by_area(oof[f"area_{first}"], oof[f"dice_{first}"], first), out / "dice_by_area.png")
        rng = np.random.default_rng(0)
        for name, rows in (
            ("samples", rng.choice(len(oof), min(12, len(oof)), replace=False)),
            ("worst", np.argsort(dice)[:12]),
        ):
            pictures = [self._overlaid(oof.iloc[i], image_of, size_of) for i in rows]
            captions = [f"id {oof['id'].iloc[i]}: Dice {dice[i]:.3f}" for i in rows]
            plots.save(plots.plot_grid(pictures, captions), out / f"masks_{name}.png")
        shown = "<p>green: true, red: predicted at 0.5, yellow: both; the first class</p>"
        return [
            ("Masks", shown + plots.img("masks_samples.png", "masks on samples")),
            ("Worst images", shown + plots.img("masks_worst.png", "masks on the worst images")),
            ("Dice by mask area", plots.img("dice_by_area.png", "Dice by mask area")),
        ]

    def _overlaid(self, row: pd.Series, image_of: Any, size_of: Any) -> np.ndarray:
        image, first = image_of(row["id"]), self.labels[0]
        size, shape = size_of(row["id"]), image.shape[:2]
        truth, predicted = (mask_at(row[c], size, shape, self.order, f"oof.csv {c}") for c in (first, f"pred_{first}"))
        return plots.overlay_masks(image, truth, predicted)


def code_score(metric: str, guess: str, truth: str, where: str) -> float:
    """Dice or IoU of two codes' masks, 1 where both are empty."""
    shared, total = rle.overlap(guess, truth, where), rle.area(guess, where) + rle.area(truth, where)
    if total == 0:
        return 1.0
    return 2 * shared / total if metric == "dice" else shared / (total - shared)


def _codes(values: pd.Series, *, allow_empty: bool = False) -> bool:
    """Whether a column holds run-length codes: text cells, each a valid code, some with a run
    unless `allow_empty` (a solution may have no mask at all)."""
    cells = mask_tables.blank_empty(values)
    if values.dtype != object or not (allow_empty or (cells != "").any()):
        return False
    try:
        for i, code in enumerate(cells):
            rle.runs(code, f"line {line(i)}")
    except PipelineError:
        return False
    return allow_empty or cells.str.split().map(len).max() >= 2
