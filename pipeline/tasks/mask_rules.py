"""Segmentation's scores and the post-processing fitted to them, in numpy on probability masks
kept as uint8 (0-255), one class at a time.

Kaggle scores a mask by its Dice coefficient, an empty prediction of an empty mask scoring 1,
averaged over images (and classes). Three rules decide a mask from probabilities, fitted on
out-of-fold masks to that mean without retraining: the probability threshold; the smallest
connected component kept; and the fewest pixels left for the mask not to be empty. Areas are
fractions of the image, so a rule fitted at the model's side applies at the image's own.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

THRESHOLDS = np.round(np.arange(0.2, 0.81, 0.05), 2)
AREAS = (0.0, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04)  # of the image: candidate sizes
EIGHT_NEIGHBOURS = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Rule:
    threshold: float = 0.5
    min_component: float = 0.0  # a connected component smaller than this share of the image is dropped
    min_total: float = 0.0  # fewer pixels left than this share: the mask is empty

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """(H, W) uint8 probabilities -> (H, W) bool mask."""
        mask = probabilities >= self.threshold * 255
        pixels = mask.size
        if self.min_component > 0 and mask.any():
            labels, _ = ndimage.label(mask, EIGHT_NEIGHBOURS)
            areas = np.bincount(labels.ravel())
            keep = areas >= self.min_component * pixels
            keep[0] = False
            mask = keep[labels]
        if mask.sum() < self.min_total * pixels:
            mask[:] = False
        return mask

    def as_dict(self) -> dict:
        return asdict(self)


def dice(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, ...) bool masks -> (N,) Dice per mask, 1 where both are empty."""
    predicted, truth = predicted.reshape(len(predicted), -1), truth.reshape(len(truth), -1)
    overlap = (predicted & truth).sum(axis=1)
    total = predicted.sum(axis=1) + truth.sum(axis=1)
    return np.where(total == 0, 1.0, 2 * overlap / np.maximum(total, 1))


def iou(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, ...) bool masks -> (N,) intersection over union per mask, 1 where both are empty."""
    predicted, truth = predicted.reshape(len(predicted), -1), truth.reshape(len(truth), -1)
    overlap = (predicted & truth).sum(axis=1)
    union = (predicted | truth).sum(axis=1)
    return np.where(union == 0, 1.0, overlap / np.maximum(union, 1))


@dataclass(frozen=True)
class Components:
    """Every image's connected components at one threshold: their image, area and overlap with
    the truth, and each image's true area; what any component or total rule scores from."""

    image: np.ndarray  # (components,) the image each is in
    area: np.ndarray  # (components,) pixels
    overlap: np.ndarray  # (components,) of them in the true mask
    true_area: np.ndarray  # (images,)
    pixels: int  # of one image

    @classmethod
    def of(cls, probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> "Components":
        """(N, H, W) uint8 probabilities and bool truth."""
        image, area, overlap = [], [], []
        for i, (probability, true) in enumerate(zip(probabilities, truth, strict=True)):
            labels, count = ndimage.label(probability >= threshold * 255, EIGHT_NEIGHBOURS)
            if count:
                area.append(np.bincount(labels.ravel(), minlength=count + 1)[1:])
                overlap.append(np.bincount(labels.ravel(), weights=true.ravel(), minlength=count + 1)[1:])
                image.append(np.full(count, i))
        join = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        true_area = truth.reshape(len(truth), -1).sum(axis=1)
        return cls(join(image, np.int64), join(area, np.int64), join(overlap, np.int64), true_area, truth[0].size)

    def scores(self, min_component: float, min_totals: np.ndarray) -> np.ndarray:
        """(len(min_totals), images) Dice of each image under each total rule."""
        kept = self.area >= min_component * self.pixels
        images = len(self.true_area)
        area = np.bincount(self.image[kept], self.area[kept], minlength=images)
        overlap = np.bincount(self.image[kept], self.overlap[kept], minlength=images)
        emptied = area[None, :] < min_totals[:, None] * self.pixels
        area, overlap = np.where(emptied, 0, area), np.where(emptied, 0, overlap)
        total = area + self.true_area
        return np.where(total == 0, 1.0, 2 * overlap / np.maximum(total, 1))


def fit(probabilities: np.ndarray, truth: np.ndarray) -> tuple[Rule, float]:
    """The rule with the best mean Dice on (N, H, W) uint8 probabilities against bool truth,
    and that mean. Ties go to the simplest: the threshold nearest 0.5, then the smallest areas."""
    best, best_score = Rule(), -1.0
    totals = np.array(AREAS)
    for threshold in sorted(THRESHOLDS, key=lambda t: (abs(t - 0.5), t)):
        components = Components.of(probabilities, truth, float(threshold))
        for min_component in AREAS:
            means = components.scores(min_component, totals).mean(axis=1)
            i = int(np.argmax(means))
            if means[i] > best_score + 1e-12:
                best, best_score = Rule(float(threshold), min_component, float(totals[i])), float(means[i])
    return best, best_score
