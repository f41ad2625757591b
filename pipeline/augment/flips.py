"""The per-image horizontal flip of keypoint targets, which renames the points it mirrors."""

import albumentations as A
import numpy as np


class FlipWithPairs(A.HorizontalFlip):
    """A horizontal flip that also swaps left/right keypoints (left_eye_center <-> right_eye_center)."""

    def __init__(self, swap: np.ndarray, p: float = 0.5):
        super().__init__(p=p)
        self.swap = np.asarray(swap)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params) -> np.ndarray:
        return super().apply_to_keypoints(keypoints, **params)[self.swap]
