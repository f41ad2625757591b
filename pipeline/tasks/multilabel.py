"""Any number of labels per image (Planet's tags, the chest X-ray findings): from one column of
space-separated tags or from a 0/1 column per label; a sigmoid head with binary cross entropy
(or timm's asymmetric loss), folds by iterative stratification, and F-beta per sample (F1, and
Planet's F2), micro and macro F1, mean column-wise ROC AUC and mAP.

F-beta scores decisions, so the task owns a decision rule: the thresholds, one global and one
per label with enough positives, fitted to the metric on out-of-fold probabilities
(`fit_decision`). The CV never scores thresholds on the rows that chose them: each fold is
decided by the thresholds fitted on the other folds (Task.held_out_scores), as blends are.
"""

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.errors import PipelineError
from pipeline.predictions import OutOfFold
from pipeline.tables import line, show
from pipeline.tasks import register
from pipeline.tasks.base import Section, Task
from pipeline.tasks.pseudo_targets import SoftenedTeacher, sigmoid_softened

THRESHOLDS = np.round(np.arange(0.02, 0.99, 0.02), 2)  # the candidates a threshold is chosen from
MIN_POSITIVES = 10  # fewer positive rows than this: a label keeps the global threshold
F_METRICS = {"f1_samples": ("samples", 1.0), "f2_samples": ("samples", 2.0), "f1_micro": ("micro", 1.0)}
F_METRICS |= {"f1_macro": ("macro", 1.0)}


@register
class Multilabel(SoftenedTeacher, Task):
    name = "multilabel"
    METRICS: ClassVar[dict[str, bool]] = {metric: True for metric in (*F_METRICS, "roc_auc", "map")}
    # the blend's weights minimise the cross entropy; its thresholds are refitted on the blend
    SMOOTH_METRICS = frozenset(F_METRICS)
    LOSSES = ("bce", "asymmetric")
    FORMATS = ("tags", "probabilities", "binary")
    fold_kind = "multilabel"
    stack_target = "labels"

    def __init__(
        self, labels: list, metric: str = "f1_samples", loss: str = "bce", thresholds: Any = 0.5, distill: Any = None
    ):
        self.labels = [str(label) for label in labels]
        self.metric, self.loss_name, self.distill = metric, loss, distill
        self.thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(self.labels),))

    # --- what needs no labels --------------------------------------------------------------

    @classmethod
    def claim_columns(cls, table: pd.DataFrame, columns: list[str]) -> list[str]:
        """Two or more 0/1 columns: one per label."""
        binary = [c for c in columns if _binary(table[c])]
        return binary if len(binary) > 1 else []

    @classmethod
    def detect(cls, layout: str, label_columns: list[str], table: pd.DataFrame | None) -> str | None:
        if table is None or any(c not in table.columns for c in label_columns):
            return None
        if len(label_columns) > 1 and all(_binary(table[c]) for c in label_columns):
            return f"{len(label_columns)} columns of 0/1: a label each"
        if len(label_columns) == 1 and _tags(table[label_columns[0]]).map(len).gt(1).any():
            return f"{label_columns[0]!r} holds several space-separated tags per image"
        return None

    @classmethod
    def check_targets(cls, table: pd.DataFrame, targets: list[str], source: str) -> None:
        if len(targets) == 1:
            return  # tags: any words, an empty cell none
        for column in targets:
            bad = ~table[column].isin([0, 1, 0.0, 1.0, "0", "1"])
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise PipelineError(
                    f"{source} line {line(i)}, column {column!r}: {show(table[column].iloc[i])} is not 0 or 1"
                )

    @classmethod
    def label_matrix(cls, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        return cls(cls.labels_of(table, targets)).encode(table, targets)

    @classmethod
    def labels_of(cls, table: pd.DataFrame, targets: list[str]) -> list:
        """The tags in sorted order, or the label columns in theirs."""
        if len(targets) > 1:
            return list(targets)
        return sorted(set().union(*_tags(table[targets[0]])))

    @classmethod
    def describe_targets(cls, table: pd.DataFrame, targets: list[str]) -> str:
        matrix = cls.label_matrix(table, targets)
        counts = pd.Series(matrix.sum(axis=0), index=cls.labels_of(table, targets))
        return (
            f"{matrix.shape[1]} labels, {matrix.sum(axis=1).mean():.2f} per image; the rarest, "
            f"{counts.idxmin()!r}, on {int(counts.min())} images, the commonest on {int(counts.max())}"
        )

    @classmethod
    def sample_format(cls, columns: list[str], table: pd.DataFrame, targets: list[str]) -> tuple[str, str]:
        if len(columns) > 2 and set(columns[1:]) <= set(cls.labels_of(table, targets)):
            return "probabilities", "a probability column per label"
        return "tags", "one column of space-separated tags"

    @classmethod
    def score_file(cls, metric: str, submitted: pd.DataFrame, solution: pd.DataFrame) -> float:
        """Tags against tags, or label columns against label columns (as the solution has them)."""
        if solution.shape[1] == 2:
            labels = sorted(set().union(*_tags(solution.iloc[:, 1]), *_tags(submitted.iloc[:, 1])))
            task, columns = cls(labels, metric), [str(solution.columns[1])]
            guess, truth = (
                task.encode(submitted.set_axis(solution.columns, axis=1), columns),
                task.encode(solution, columns),
            )
        else:
            task = cls(list(solution.columns[1:]), metric)
            guess, truth = submitted[solution.columns[1:]].to_numpy(float), solution.iloc[:, 1:].to_numpy(float)
        return task.score(guess, truth)

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Multilabel":
        return cls(labels, cls.metric_of(cfg.train.metric), cls.loss_of(cfg.train.loss), distill=cfg.train.distill)

    @classmethod
    def from_meta(cls, meta: dict, cfg: Any) -> "Multilabel":
        return cls(meta["labels"])

    # --- bound to the labels ----------------------------------------------------------------

    def encode(self, table: pd.DataFrame, targets: list[str]) -> np.ndarray:
        """(N, labels) 0/1."""
        if len(targets) > 1:
            return table[targets].apply(pd.to_numeric).to_numpy(np.float32)
        index = {label: i for i, label in enumerate(self.labels)}
        matrix = np.zeros((len(table), len(self.labels)), dtype=np.float32)
        for row, tags in enumerate(_tags(table[targets[0]])):
            matrix[row, [index[t] for t in tags if t in index]] = 1.0
        return matrix

    def truth(self, oof: OutOfFold, targets: list[str]) -> np.ndarray:
        return self.encode(oof.table, targets)

    def prediction_columns(self) -> list[str]:
        return [f"prob_{label}" for label in self.labels]

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray | None = None) -> dict:
        """Every metric; the F scores under the one threshold best on these rows (to compare epochs:
        the CV's thresholds come from the other folds)."""
        target = self.label_part(target)
        return {
            metric: Multilabel(self.labels, metric)._fit_global(predictions, target).score(predictions, target)
            for metric in self.METRICS
        }

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        if self.metric in F_METRICS:
            return f_beta_score(self.metric, self.decide(predictions) > 0.5, truth > 0.5)
        return ranking_score(self.metric, predictions, truth)

    # --- the decision ----------------------------------------------------------------------

    def decide(self, predictions: np.ndarray) -> np.ndarray:
        """The F scores' 0/1 decisions; the ranking metrics read the probabilities."""
        return (predictions >= self.thresholds).astype(np.float64) if self.metric in F_METRICS else predictions

    def fit_decision(self, predictions: np.ndarray, truth: np.ndarray) -> "Multilabel":
        """The global threshold best for the metric, then each label's own in turn where it has
        MIN_POSITIVES positive rows."""
        if self.metric not in F_METRICS:
            return self
        fitted = self._fit_global(predictions, truth)
        kind, beta = F_METRICS[self.metric]
        positives, thresholds = truth.sum(axis=0), fitted.thresholds.copy()
        for j in np.flatnonzero(positives >= MIN_POSITIVES):  # coordinate ascent, one pass
            column_scores = _column_scores(kind, beta, predictions >= thresholds, truth > 0.5, predictions[:, j], j)
            thresholds[j] = _best_threshold(column_scores)
        return self.with_decision({"thresholds": thresholds.tolist()})

    def _fit_global(self, predictions: np.ndarray, truth: np.ndarray) -> "Multilabel":
        if self.metric not in F_METRICS:
            return self
        scores = [f_beta_score(self.metric, predictions >= t, truth > 0.5) for t in THRESHOLDS]
        return self.with_decision({"thresholds": [_best_threshold(np.array(scores))] * len(self.labels)})

    def decision(self) -> dict:
        if self.metric not in F_METRICS:
            return {}
        low, high = self.thresholds.min(), self.thresholds.max()
        shown = f"{low:.2f}" if low == high else f"{low:.2f} to {high:.2f}"
        return {"thresholds": self.thresholds.tolist(), "summary": f"thresholds {shown} ({self.metric})"}

    def with_decision(self, decision: dict) -> "Multilabel":
        return Multilabel(self.labels, self.metric, self.loss_name, decision.get("thresholds", self.thresholds))

    # --- what blends combine ----------------------------------------------------------------

    def smooth_loss(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """The binary cross entropy of probabilities against 0/1 truth, over every cell."""
        p = np.clip(predictions, 1e-7, 1 - 1e-7)
        return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())

    def smooth_loss_gradient(self, stack: np.ndarray, blended: np.ndarray, truth: np.ndarray) -> np.ndarray:
        p = np.clip(blended, 1e-7, 1 - 1e-7)
        return -(stack * (truth / p - (1 - truth) / (1 - p))).mean(axis=(1, 2))

    def ranks_blend(self) -> bool:
        return self.metric not in F_METRICS

    # --- pseudo-labels ---------------------------------------------------------------------

    def check_pseudo_labels(self, min_confidence: float, *, soft: bool) -> None:
        """Any setting: the least sure label is the confidence."""

    def pseudo_confidence(self, units: np.ndarray) -> np.ndarray:
        """A row's least sure label: max(p, 1 - p) at its lowest."""
        return np.maximum(units, 1.0 - units).min(axis=1)

    def pseudo_targets(self, units: np.ndarray, *, soft: bool, sizes: np.ndarray) -> np.ndarray:
        """(N, labels) the probabilities, or 0/1 at 0.5."""
        return units.astype(np.float32) if soft else (units >= 0.5).astype(np.float32)

    def softened(self, units: np.ndarray, temperature: float) -> np.ndarray:
        """sigmoid(logit p / T) for each label."""
        return sigmoid_softened(units, temperature)

    # --- the head ---------------------------------------------------------------------------

    def label_loss(self, outputs: Any, target: Any) -> Any:
        if self.loss_name == "asymmetric":
            from timm.loss import AsymmetricLossMultiLabel

            # the ASL paper's setting for multi-label: gamma- 4, gamma+ 0, a 0.05 margin on negatives
            return AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")(
                outputs.float(), target
            )
        return self.soft_loss(outputs, target)

    def soft_loss(self, outputs: Any, probabilities: Any) -> Any:
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(outputs.float(), probabilities.float())

    def own_logits(self, probabilities: Any) -> Any:
        p = probabilities.float().clamp(1e-6, 1 - 1e-6)
        return (p / (1 - p)).log()

    def eval_loss(self, outputs: Any, target: Any) -> Any:
        return self.soft_loss(outputs, self.label_part(target))

    def activate(self, outputs: Any) -> Any:
        """(B, labels) probabilities."""
        return outputs.float().sigmoid()

    # --- the submission and the report ------------------------------------------------------

    def submission_format(self, cfg: Any, sample: pd.DataFrame | None) -> str:
        return "probabilities" if sample is not None and sample.shape[1] > 2 else "tags"

    def submission(
        self,
        fmt: str,
        ids: np.ndarray,
        predictions: np.ndarray,
        sample: pd.DataFrame | None,
        sizes: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Space-separated tags over the thresholds, or a probability (or 0/1) column per label."""
        chosen = predictions >= self.thresholds
        if fmt == "tags":
            columns = list(sample.columns) if sample is not None else ["id", "tags"]
            names = np.array(self.labels, dtype=object)
            return pd.DataFrame({columns[0]: ids, columns[1]: [" ".join(names[row]) for row in chosen]})
        values = chosen.astype(np.int64) if fmt == "binary" else predictions
        by_label = dict(zip(self.labels, values.T, strict=True))
        columns = [str(c) for c in sample.columns[1:]] if sample is not None else self.labels
        missing = [c for c in columns if c not in by_label]
        if missing:
            raise PipelineError(f"sample submission column {missing[0]!r} is not a label; labels: {self.labels}")
        return pd.DataFrame(
            {sample.columns[0] if sample is not None else "id": ids, **{c: by_label[c] for c in columns}}
        )

    def report_sections(self, oof: pd.DataFrame, out: Any, image_of: Any, size_of: Any) -> list[Section]:
        """ROC AUC and positives per label; the images with the highest loss, their tags beside."""
        probabilities = oof[self.prediction_columns()].to_numpy(float)
        target = [c for c in oof.columns if c not in ("id", "fold", *self.prediction_columns())]
        truth = self.encode(oof, target)
        auc = pd.Series([_column_auc(probabilities[:, j], truth[:, j]) for j in range(len(self.labels))], self.labels)
        plots.save(plots.plot_bars(auc, "ROC AUC per label (out of fold)", "label"), out / "auc_per_label.png")
        p = np.clip(probabilities, 1e-7, 1 - 1e-7)
        loss = -(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean(axis=1)
        worst, names = np.argsort(-loss)[:16], np.array(self.labels, dtype=object)
        captions = [
            f"true {' '.join(names[truth[i] > 0.5]) or '-'} / p>0.5 {' '.join(names[p[i] > 0.5]) or '-'}" for i in worst
        ]
        plots.save(plots.plot_grid([image_of(oof["id"].iloc[i]) for i in worst], captions), out / "top_losses.png")
        return [
            ("ROC AUC per label", plots.img("auc_per_label.png", "ROC AUC per label")),
            ("Top losses", "<p>true tags / tags over 0.5</p>" + plots.img("top_losses.png", "top losses")),
        ]


def _best_threshold(scores: np.ndarray) -> float:
    """The middle of the candidates that score best: the widest margin either side."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(THRESHOLDS[best[len(best) // 2]])


def _tags(values: pd.Series) -> pd.Series:
    """Each cell's set of space-separated tags; an empty cell has none."""
    return values.fillna("").astype(str).str.split().map(set)


def _binary(values: pd.Series) -> bool:
    return bool(values.notna().all() and values.isin([0, 1, 0.0, 1.0]).all())


def _f_beta(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> np.ndarray:
    """F-beta from counts; nothing true and nothing predicted scores 1."""
    b2 = beta * beta
    hits = (1 + b2) * tp
    denominator = hits + b2 * fn + fp
    return np.divide(hits, denominator, out=np.ones(np.shape(hits)), where=denominator > 0)


AXIS = {"samples": 1, "macro": 0, "micro": None}  # what the counts are summed over, per average


def f_beta_score(metric: str, decided: np.ndarray, truth: np.ndarray) -> float:
    """F-beta of 0/1 decisions (N, labels) per sample, micro or macro, as F_METRICS names it."""
    kind, beta = F_METRICS[metric]
    axis = AXIS[kind]
    tp, fp, fn = ((decided & truth).sum(axis), (decided & ~truth).sum(axis), (~decided & truth).sum(axis))
    return float(np.mean(_f_beta(tp, fp, fn, beta)))


def _column_scores(
    kind: str, beta: float, decided: np.ndarray, truth: np.ndarray, column: np.ndarray, j: int
) -> np.ndarray:
    """The score for each candidate threshold of label j, the others' decisions as they are."""
    options = column[:, None] >= THRESHOLDS  # (N, thresholds)
    hit, miss = truth[:, j, None], ~truth[:, j, None]
    tp_j, fp_j, fn_j = options & hit, options & miss, ~options & hit
    if kind == "macro":
        others = np.delete(np.arange(truth.shape[1]), j)
        rest = _f_beta(*(m[:, others].sum(0) for m in _cells(decided, truth)), beta).sum()
        return (rest + _f_beta(tp_j.sum(0), fp_j.sum(0), fn_j.sum(0), beta)) / truth.shape[1]
    base = [np.delete(m, j, axis=1).sum(axis=1) for m in _cells(decided, truth)]  # (N,) without label j
    if kind == "micro":
        return _f_beta(*(b.sum() + m.sum(0) for b, m in zip(base, (tp_j, fp_j, fn_j), strict=True)), beta)
    return _f_beta(*(b[:, None] + m for b, m in zip(base, (tp_j, fp_j, fn_j), strict=True)), beta).mean(axis=0)


def _cells(decided: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return decided & truth, decided & ~truth, ~decided & truth


def _column_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else float("nan")


def ranking_score(metric: str, probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The mean over labels with positives and negatives of ROC AUC, or of average precision (mAP)."""
    from sklearn.metrics import average_precision_score

    scored = [j for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < len(truth)]
    if not scored:
        return float("nan")
    if metric == "roc_auc":
        return float(np.mean([_column_auc(probabilities[:, j], truth[:, j]) for j in scored]))
    return float(np.mean([average_precision_score(truth[:, j], probabilities[:, j]) for j in scored]))
