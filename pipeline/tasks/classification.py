"""One label per image out of a fixed set: a softmax head, cross entropy (with label smoothing,
mixup and cutmix), accuracy, log loss or macro F1, and a submission of labels or of one
probability column per class."""

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.errors import PipelineError
from pipeline.predictions import OutOfFold
from pipeline.tables import line
from pipeline.tasks import register
from pipeline.tasks.base import Proposal, Section, Task
from pipeline.tasks.pseudo_targets import SoftenedTeacher


@register
class Classification(SoftenedTeacher, Task):
    name = "classification"
    METRICS: ClassVar[dict[str, bool]] = {"accuracy": True, "log_loss": False, "macro_f1": True}
    SMOOTH_METRICS = frozenset({"log_loss"})
    COUNTING_METRICS = frozenset({"accuracy", "macro_f1"})
    LOSSES = ("cross_entropy",)
    FORMATS = ("label", "probabilities")
    fold_kind = "stratified"
    stack_target = "class"
    takes_extra_images = True
    mixes = True

    def __init__(self, classes: list, metric: str = "accuracy", label_smoothing: float = 0.0, distill: Any = None):
        self.classes = self.labels = list(classes)
        self.metric = metric
        self.label_smoothing = label_smoothing
        self.distill = distill

    # --- what needs no labels --------------------------------------------------------------

    @classmethod
    def detect(cls, layout: str, label_columns: list[str], table: pd.DataFrame | None) -> str | None:
        return "one label per image" if len(label_columns) <= 1 else None

    @classmethod
    def check_targets(cls, table: pd.DataFrame, targets: list[str], source: str) -> None:
        if len(targets) != 1:
            raise PipelineError(f"classification trains one label column; the data has {targets}")
        values = table[targets[0]]
        missing = values.isna() | (values.astype(str).str.strip() == "")
        if missing.any():
            row = line(int(np.flatnonzero(missing)[0]))
            raise PipelineError(f"{source} line {row}: missing label in column {targets[0]!r}")

    @classmethod
    def strata(cls, table: pd.DataFrame, targets: list[str]) -> pd.Series:
        return table[targets[0]].astype(str)

    @classmethod
    def describe_targets(cls, table: pd.DataFrame, targets: list[str]) -> str:
        counts = table[targets[0]].astype(str).value_counts()
        ratio = counts.max() / counts.min()
        shape = "balanced" if ratio <= 1.5 else f"imbalanced, {ratio:.1f} to 1"
        return f"{len(counts)} classes, {counts.min()} to {counts.max()} rows each ({shape})"

    @classmethod
    def sample_format(cls, columns: list[str], table: pd.DataFrame, targets: list[str]) -> tuple[str, str]:
        classes = set(table[targets[0]].astype(str))
        if len(columns) > 2 and set(columns[1:]) <= classes:
            return "probabilities", "a column per class"
        return "label", "one label column"

    @classmethod
    def proposals(cls, cfg: Any, facts: Any) -> list[Proposal]:
        return [("train.label_smoothing", 0.1, "the bag of tricks")]

    @classmethod
    def search_space(cls, cfg: Any) -> dict[str, dict]:
        return {
            "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
            "train.mixup_alpha": {"type": "float", "low": 0.1, "high": 0.4, "optional": True},
        }

    @classmethod
    def label_extra(cls, extra: pd.DataFrame, table: pd.DataFrame, targets: list[str], source: str) -> pd.DataFrame:
        """Scraped rows with their labels as the training table spells its classes."""
        known = {str(v): v for v in table[targets[0]].unique()}
        unknown = sorted(set(extra[targets[0]].astype(str)) - set(known))
        if unknown:
            raise PipelineError(f"{source}: label {unknown[0]!r} is not a class of the training set")
        return extra.assign(**{targets[0]: extra[targets[0]].astype(str).map(known)})

    @classmethod
    def score_file(cls, metric: str, submitted: pd.DataFrame, solution: pd.DataFrame) -> float:
        if metric not in ("accuracy", "macro_f1") or solution.shape[1] != 2:
            return super().score_file(metric, submitted, solution)
        truth, guess = solution.iloc[:, 1].astype(str), submitted.iloc[:, 1].astype(str)
        if metric == "accuracy":
            return float((truth.to_numpy() == guess.to_numpy()).mean())
        from sklearn.metrics import f1_score

        return float(f1_score(truth, guess, average="macro"))

    @classmethod
    def labels_of(cls, table: pd.DataFrame, targets: list[str]) -> list:
        """The classes in the order of the model's outputs."""
        return sorted(table[targets[0]].unique(), key=lambda c: (str(type(c)), c))

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Classification":
        return cls(labels, cls.metric_of(cfg.train.metric), cfg.train.label_smoothing, cfg.train.distill)

    @classmethod
    def from_meta(cls, meta: dict, cfg: Any) -> "Classification":
        return cls(meta["labels"])

    # --- bound to the classes ---------------------------------------------------------------

    def encode(self, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        """(N,) class indices."""
        index = {str(c): i for i, c in enumerate(self.classes)}
        return table[targets[0]].astype(str).map(index).to_numpy(np.int64)

    def truth(self, oof: OutOfFold, targets: list[str]) -> np.ndarray:
        return self.encode(oof.table, targets)

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray | None = None) -> dict:
        """`target`: class indices, or rows of probabilities (soft pseudo-labels), scored as their likeliest."""
        target = self.label_part(target)
        truth = target.argmax(axis=1) if target.ndim == 2 else target
        return {metric: self._scored(metric, predictions, truth) for metric in self.METRICS}

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        return self._scored(self.metric, predictions, truth)

    def _scored(self, metric: str, probabilities: np.ndarray, truth: np.ndarray) -> float:
        if metric == "log_loss":
            return self.smooth_loss(probabilities, truth)
        labels = probabilities.argmax(axis=1)
        if metric == "accuracy":
            return float((labels == truth).mean())
        return macro_f1(labels, truth, probabilities.shape[1])

    def prediction_columns(self) -> list[str]:
        return [f"prob_{c}" for c in self.classes]

    def smooth_loss(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """The cross entropy of probabilities (N, classes) against class indices (N,)."""
        return float(-np.log(np.clip(predictions[np.arange(len(truth)), truth], 1e-15, None)).mean())

    def smooth_loss_gradient(self, stack: np.ndarray, blended: np.ndarray, truth: np.ndarray) -> np.ndarray:
        index = np.arange(len(truth))
        picked = np.clip(blended[index, truth], 1e-15, None)
        return -(stack[:, index, truth] / picked).mean(axis=1)

    def ranks_blend(self) -> bool:
        return self.metric != "log_loss"

    # --- pseudo-labels ---------------------------------------------------------------------

    def check_pseudo_labels(self, min_confidence: float, *, soft: bool) -> None:
        """Any setting: the largest probability is the confidence."""

    def pseudo_confidence(self, units: np.ndarray) -> np.ndarray:
        return units.max(axis=1)

    def pseudo_targets(self, units: np.ndarray, *, soft: bool, sizes: np.ndarray) -> np.ndarray:
        """(N, classes) the probabilities, or (N,) the likeliest class."""
        return units.astype(np.float32) if soft else units.argmax(axis=1)

    def soft_form(self, targets: np.ndarray) -> np.ndarray:
        """(N, classes): a class index as its one-hot row, smoothed by train.label_smoothing here,
        since the loss of such rows adds none."""
        if targets.ndim == 2:
            return targets.astype(np.float32)
        classes = len(self.classes)
        return (
            np.eye(classes, dtype=np.float32)[targets] * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        )

    def joined_targets(self, labelled: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
        """Class indices, or where either side holds probabilities every target a row of them."""
        if labelled.ndim == pseudo.ndim == 1:
            return np.concatenate([labelled, pseudo])
        return super().joined_targets(self.soft_form(labelled), self.soft_form(pseudo))

    def softened(self, units: np.ndarray, temperature: float) -> np.ndarray:
        """softmax(log p / T): Hinton's softened teacher, from its probabilities."""
        logits = np.log(np.clip(units, 1e-12, None)) / temperature
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    # --- the head ---------------------------------------------------------------------------

    def label_loss(self, outputs: Any, target: Any) -> Any:
        import torch.nn.functional as F

        if target.ndim == 2:  # soft targets from mixup/cutmix, smoothing already applied
            return self.soft_loss(outputs, target)
        return F.cross_entropy(outputs, target, label_smoothing=self.label_smoothing)

    def soft_loss(self, outputs: Any, probabilities: Any) -> Any:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()(outputs, probabilities)

    def own_logits(self, probabilities: Any) -> Any:
        return probabilities.float().clamp_min(1e-8).log()

    def eval_loss(self, outputs: Any, target: Any) -> Any:
        import torch.nn.functional as F

        target = self.label_part(target)
        return F.cross_entropy(outputs.float(), target.argmax(dim=1) if target.ndim == 2 else target)

    def activate(self, outputs: Any) -> Any:
        """(B, classes) probabilities."""
        return outputs.float().softmax(dim=-1)

    # --- the submission and the report ------------------------------------------------------

    def submission_format(self, cfg: Any, sample: pd.DataFrame | None) -> str:
        return "probabilities" if sample is not None and sample.shape[1] > 2 else "label"

    def submission(
        self,
        fmt: str,
        ids: np.ndarray,
        predictions: np.ndarray,
        sample: pd.DataFrame | None,
        sizes: np.ndarray | None = None,
    ) -> pd.DataFrame:
        if fmt == "label":
            columns = list(sample.columns) if sample is not None else ["id", "label"]
            labels = np.array(self.classes, dtype=object)[predictions.argmax(axis=1)]
            if sample is not None and pd.api.types.is_integer_dtype(sample[columns[1]]):
                labels = labels.astype(np.int64)
            return pd.DataFrame({columns[0]: ids, columns[1]: labels})
        by_class = {str(c): predictions[:, i] for i, c in enumerate(self.classes)}
        if sample is None:
            return pd.DataFrame({"id": ids, **by_class})
        missing = [c for c in sample.columns[1:] if str(c) not in by_class]
        if missing:
            raise PipelineError(f"sample submission column {missing[0]!r} is not a class; classes: {self.classes}")
        return pd.DataFrame({sample.columns[0]: ids, **{c: by_class[str(c)] for c in sample.columns[1:]}})

    def known_labels(self, fmt: str) -> list | None:
        return self.classes if fmt == "label" else None

    def report_sections(self, oof: pd.DataFrame, out: Any, image_of: Any, size_of: Any) -> list[Section]:
        """The confusion matrix and the most confused pairs, accuracy per class, the top losses."""
        columns = self.prediction_columns()
        classes = [str(c) for c in self.classes]
        actual = oof[self._target_column(oof)].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
        probabilities = oof[columns].to_numpy()
        predicted = probabilities.argmax(axis=1)
        confusion = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(confusion, (actual, predicted), 1)
        plots.save(plots.plot_confusion(confusion, classes), out / "confusion.png")
        pairs = [
            (classes[i], classes[j], confusion[i, j]) for i, j in zip(*np.nonzero(confusion), strict=True) if i != j
        ]
        confused = pd.DataFrame(sorted(pairs, key=lambda p: -p[2])[:10], columns=["actual", "predicted", "count"])
        per_class = pd.Series(np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1), index=classes)
        plots.save(plots.plot_bars(per_class, "accuracy per class (out of fold)", "class"), out / "per_class.png")
        p_actual = probabilities[np.arange(len(oof)), actual]
        worst = np.argsort(p_actual)[:16]  # the lowest probability of the actual class: the highest loss
        loss = -np.log(np.maximum(p_actual, 1e-15))
        captions = [
            f"{classes[predicted[i]]}/{classes[actual[i]]} loss {loss[i]:.2f} p {p_actual[i]:.2f}" for i in worst
        ]
        plots.save(plots.plot_grid([image_of(oof["id"].iloc[i]) for i in worst], captions), out / "top_losses.png")
        return [
            (
                "Confusion",
                plots.img("confusion.png", "confusion matrix") + "<h3>Most confused</h3>" + plots.table(confused),
            ),
            ("Accuracy per class", plots.img("per_class.png", "accuracy per class")),
            (
                "Top losses",
                "<p>predicted/actual, loss, probability of the actual class</p>"
                + plots.img("top_losses.png", "top losses"),
            ),
        ]

    def _target_column(self, oof: pd.DataFrame) -> str:
        return next(c for c in oof.columns if c not in ("id", "fold", *self.prediction_columns()))


def macro_f1(labels: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """The F1 of each class, averaged; a class neither predicted nor present scores 0."""
    confusion = np.bincount(truth * classes + labels, minlength=classes * classes).reshape(classes, classes)
    hits = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)
    return float(np.mean(np.divide(2 * hits, denominator, out=np.zeros(classes), where=denominator > 0)))
