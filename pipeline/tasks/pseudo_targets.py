"""What a task's teacher predictions become as training targets (learn.pseudo_labels): the
defaults every task inherits, for a prediction that is its own target with no confidence."""

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

    def pseudo_targets(self, units: np.ndarray, *, soft: bool) -> np.ndarray:
        """A teacher's predictions in the competition's units as encoded targets (soft: its
        probabilities; else what it decides)."""
        return units.astype(np.float32)

    def joined_targets(self, labelled: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
        """The encoded targets of the labelled rows, then the pseudo-labelled ones, in one array."""
        return np.concatenate([labelled, pseudo.astype(labelled.dtype)])
