"""What a teacher's predictions become as training targets (learn.pseudo_labels,
learn.distillation): the defaults every task inherits, for a prediction that is its own target
(a value, a point) with no confidence and no temperature, whose loss against a blend of the
label and the teacher is the blend of the two losses (for squared errors, exactly); and
SoftenedTeacher, for the heads a temperature softens, which learn the two apart."""

from typing import Any

import numpy as np

from pipeline.errors import PipelineError


def sigmoid_softened(p: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit p / T) of probabilities `p`: a sigmoid teacher softened at T."""
    p = np.clip(np.asarray(p, dtype=np.float32), 1e-6, 1 - 1e-6)
    return (1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))).astype(np.float32)


class PseudoTargets:
    name: str
    teaches_online: bool = False  # train.distill.online: a teacher's predictions on each batch become targets

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

    def untaught_targets(self, labelled: np.ndarray) -> np.ndarray:
        """The targets of rows no teacher's predictions reach (the validation rows), in the form
        distilled_targets gives the taught ones."""
        return self.soft_form(labelled)


class SoftenedTeacher(PseudoTargets):
    """Hinton's distillation proper, for a head a temperature softens (softmax, sigmoid).

    A taught row's target is its label, then the teacher's predictions softened at T, side by
    side: (N, 2 x outputs). Its loss is (1 - alpha) of the label's loss plus alpha x T^2 of the
    loss of the student's own outputs softened at T against the teacher's half (the T^2 keeps
    that term's gradients at the label term's scale), less the teacher's own entropy: the term
    is the KL divergence, 0 where the student is the teacher, so a student's logged loss reads
    as an untaught run's. So the student at T = 1 learns the
    teacher's own confidence; a blend of label and softened teacher learnt at T = 1 would leave
    it as unsure as the softened teacher. A row nothing teaches (a validation row, a
    pseudo-labelled one) holds its label in both halves. `distill` is train.distill's settings."""

    distill: Any = None
    n_outputs: int
    teaches_online = True

    def taught_online(self, target: Any, probabilities: Any, temperature: float) -> Any:
        """A batch's targets with the teacher's half its `probabilities` on the batch, softened
        at T (the activation of its own logits / T): (B, 2 x outputs)."""
        import torch

        softened = self.activate(self.own_logits(probabilities) / temperature)
        return torch.cat([self.label_part(target), softened.to(target.dtype)], dim=1)

    def label_loss(self, outputs: Any, target: Any) -> Any:
        raise NotImplementedError

    def soft_loss(self, outputs: Any, probabilities: Any) -> Any:
        """The loss of outputs (logits) against rows of probabilities: the softened teacher's
        against the outputs divided by T."""
        raise NotImplementedError

    def own_logits(self, probabilities: Any) -> Any:
        """Logits whose activation is `probabilities`: the soft loss there is their entropy."""
        raise NotImplementedError

    def distilled_targets(self, labelled: np.ndarray, units: np.ndarray, *, alpha: float, temperature: float):
        return np.concatenate([self.soft_form(labelled), self.softened(units, temperature)], axis=1)

    def untaught_targets(self, labelled: np.ndarray) -> np.ndarray:
        labels = self.soft_form(labelled)
        return np.concatenate([labels, labels], axis=1)

    def taught(self, target: Any) -> bool:
        return target.ndim == 2 and target.shape[1] == 2 * self.n_outputs

    def label_part(self, target: Any) -> Any:
        """A target's label, whether a teacher's half stands beside it or not."""
        return target[:, : self.n_outputs] if self.taught(target) else target

    def joined_targets(self, labelled: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
        if self.taught(labelled):
            pseudo = self.untaught_targets(pseudo)
        return super().joined_targets(labelled, pseudo)

    def loss(self, outputs: Any, target: Any) -> Any:
        if not self.taught(target):
            return self.label_loss(outputs, target)
        labels, teacher = target.chunk(2, dim=1)
        alpha, temperature = self.distill.alpha, self.distill.temperature
        entropy = self.soft_loss(self.own_logits(teacher), teacher)
        softened = self.soft_loss(outputs.float() / temperature, teacher) - entropy
        return (1.0 - alpha) * self.label_loss(outputs, labels) + alpha * temperature**2 * softened
