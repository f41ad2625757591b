"""What a teacher's predictions become as training targets (learn.pseudo_labels,
learn.distillation): the defaults every task inherits, for a prediction that is its own target
(a value, a point) with no confidence and no temperature."""

import numpy as np

from pipeline.errors import PipelineError


class PseudoTargets:
    name: str

    def check_pseudo_labels(self, min_confidence: float, *, soft: bool) -> None:
        """train.pseudo_labels' settings, refused with the reason where this task cannot learn so.
        Here predictions carry no confidence, and are the targets soft or not."""
        if min_confidence > 0:
            raise PipelineError(
                f"train.pseudo_labels.min_confidence={min_confidence}: a {self.name} model's predictions carry no "
                "confidence to keep rows by; leave it at 0"
            )

    def pseudo_confidence(self, units: np.ndarray) -> np.ndarray:
        """(N,) how sure the teacher is of each prediction in the competition's units, in [0, 1]."""
        return np.ones(len(units))

    def pseudo_targets(self, units: np.ndarray, *, soft: bool, sizes: np.ndarray) -> np.ndarray:
        """A teacher's predictions in the competition's units as encoded targets (soft: its
        probabilities; else what it decides), for images of `sizes` (N, 2) (height, width)."""
        return units.astype(np.float32)

    def check_distill(self) -> None:
        """train.distill refused, with the reason, where this task cannot learn a blend of labels
        and a teacher's predictions; here it can."""

    def soft_form(self, targets: np.ndarray) -> np.ndarray:
        """Encoded targets in the form a teacher's soft targets take, to stand beside them."""
        return targets.astype(np.float32)

    def joined_targets(self, labelled: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
        """The encoded targets of the labelled rows, then the pseudo-labelled ones, in one array."""
        return np.concatenate([labelled, pseudo.astype(labelled.dtype)])

    def softened(self, units: np.ndarray, temperature: float) -> np.ndarray:
        """A teacher's predictions as soft targets at `temperature`; here as they are."""
        return units.astype(np.float32)

    def distilled_targets(self, labelled: np.ndarray, units: np.ndarray, *, alpha: float, temperature: float):
        """Training rows' targets as (1 - alpha) of their labels and alpha of the teacher's
        softened predictions (soft form); a missing label (NaN) takes the teacher's alone."""
        labels, teacher = self.soft_form(labelled), self.softened(units, temperature)
        return np.where(np.isnan(labels), teacher, (1.0 - alpha) * labels + alpha * teacher).astype(np.float32)
