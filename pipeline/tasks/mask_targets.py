"""A segmentation model's training targets, whether labels or a teacher's (learn.pseudo_labels,
learn.distillation): each cell, one image and class, is one of

  a run-length code   the label: a 0/1 mask in the image's own pixels
  a probability map   a soft pseudo-label: the teacher's (S, S) uint8 0-255 at its model's side
  Taught              a distilled row: its label's code and the teacher's map softened at T,
                      blended (1 - alpha) and alpha when the image is read

and `cell_map` reads any of them as (H, W) uint8 0-255 at the side the loader asks (a code's mask
x 255, nearest-neighbour; a map bilinear). The loss reads targets / 255: BCE against a blended map
is exactly the blend of the label's BCE and the teacher's, and Dice reads it as a soft mask.
Lovász learns 0/1 masks only, so soft targets are refused under it. Contrails' 4th place learnt
from the fold ensemble's soft masks."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data import rle
from pipeline.errors import PipelineError
from pipeline.tasks.pseudo_targets import PseudoTargets, sigmoid_softened


@dataclass(frozen=True)
class Taught:
    """A distilled cell: the label, and the teacher's softened map that joins it by `alpha`."""

    code: str
    teacher: np.ndarray  # (S, S) uint8 0-255 at the teacher's model side
    alpha: float


def mask_at(code: str, original: np.ndarray, shape: tuple[int, int], order: str, where: str) -> np.ndarray:
    """A code of an image of `original` (height, width) -> its uint8 0/1 mask resized to `shape`,
    nearest neighbour."""
    import cv2

    mask = rle.decode(code, tuple(int(v) for v in original), order, where)
    if mask.shape == tuple(shape):
        return mask
    return cv2.resize(mask, tuple(shape)[::-1], interpolation=cv2.INTER_NEAREST_EXACT)


def cell_map(cell: Any, original: np.ndarray, shape: tuple[int, int], order: str, where: str) -> np.ndarray:
    """Any target cell -> (height, width) uint8 0-255 at `shape`."""
    import cv2

    if isinstance(cell, str):
        return mask_at(cell, original, shape, order, where) * np.uint8(255)
    if isinstance(cell, Taught):
        label = mask_at(cell.code, original, shape, order, where).astype(np.float32) * 255
        teacher = cv2.resize(cell.teacher, tuple(shape)[::-1], interpolation=cv2.INTER_LINEAR)
        return np.round((1 - cell.alpha) * label + cell.alpha * teacher).astype(np.uint8)
    return cv2.resize(cell, tuple(shape)[::-1], interpolation=cv2.INTER_LINEAR)


def cells(maps: np.ndarray) -> np.ndarray:
    """(N, classes, S, S) maps -> (N, classes) cells, each one image's and class's (S, S) uint8."""
    out = np.empty(maps.shape[:2], dtype=object)
    for i, j in np.ndindex(out.shape):
        out[i, j] = np.ascontiguousarray(maps[i, j], dtype=np.uint8)
    return out


class MaskTargets(PseudoTargets):
    """Pseudo-labels and distillation for a task whose targets are cells of masks."""

    loss_name: str

    def _plain_codes(self, predictions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_pseudo_labels(self, min_confidence: float, *, soft: bool) -> None:
        if soft:
            self._check_soft("train.pseudo_labels.soft=true")

    def check_distill(self) -> None:
        self._check_soft("train.distill")

    def _check_soft(self, said: str) -> None:
        if self.loss_name == "lovasz":
            raise PipelineError(
                f"{said}: train.loss=lovasz learns 0/1 masks, and a teacher's probability maps are not; set train.loss "
                "to bce_dice, bce or dice"
            )

    def pseudo_confidence(self, units: np.ndarray) -> np.ndarray:
        """An image's mean certainty over its pixels and classes: max(p, 1 - p), p from 0-255."""
        return np.maximum(units, 255.0 - units).mean(axis=(1, 2, 3)) / 255.0

    def pseudo_targets(self, units: np.ndarray, *, soft: bool, sizes: np.ndarray) -> np.ndarray:
        """(N, classes) the teacher's probability maps (soft), else its masks at a threshold of 0.5,
        each a code at its image's size."""
        return cells(np.round(units)) if soft else self._plain_codes(units, sizes)

    def soft_form(self, targets: np.ndarray) -> np.ndarray:
        return targets

    def untaught_targets(self, labelled: np.ndarray) -> np.ndarray:
        return labelled.copy()

    def softened(self, units: np.ndarray, temperature: float) -> np.ndarray:
        """(N, classes, S, S) probabilities 0-255 -> sigmoid(logit p / T), 0-255."""
        return 255.0 * sigmoid_softened(np.asarray(units) / 255.0, temperature)

    def distilled_targets(self, labelled: np.ndarray, units: np.ndarray, *, alpha: float, temperature: float):
        """(N, classes) Taught cells: each label with the teacher's map softened at T."""
        teacher = cells(np.round(self.softened(units, temperature)))
        out = np.empty(labelled.shape, dtype=object)
        for i, j in np.ndindex(out.shape):
            out[i, j] = Taught(labelled[i, j], teacher[i, j], alpha)
        return out
