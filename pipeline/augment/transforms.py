"""Albumentations pipelines built from `aug.*`, the one description that training and tuning share.

Augmentations run on the uint8 image at its own size; keypoints move with it (never dropped:
remove_invisible=False). Then `finish` resizes to the model's size, still uint8: batches cross
from the workers and to the GPU at a quarter of float32's bytes, and `Normalise` maps them to
the backbone's mean and std on the device, a batch at a time (as timm's prefetcher does).
"""

import albumentations as A
import numpy as np

from pipeline.augment import aug_ops
from pipeline.config import Aug
from pipeline.errors import PipelineError


def augmentations(aug: Aug, channels: int, size: int, swap: np.ndarray | None = None) -> list[A.BasicTransform]:
    """The enabled ops' albumentations transforms, in the order they apply. `swap`: where each
    keypoint goes under a horizontal flip (None: no keypoints)."""
    context = aug_ops.Context(channels, size, None if swap is None else lambda p: FlipWithPairs(swap, p=p))
    ops = aug_ops.enabled(aug)
    for op in ops:
        if op.needs_colour and channels != 3:
            names = " and ".join(f"aug.{k.name}" for k in op.keys)
            raise PipelineError(f"{names} need RGB images; these have {channels} channel(s)")
    return [op.per_image(op.setting(aug), context) for op in ops]


def compose(steps: list[A.BasicTransform], params: dict, seed: int) -> A.Compose | None:
    """The steps as one pipeline, with the task's `params` for what moves with the image; None
    when there are none (albumentations would warn, on every run, that its keypoint processor
    has nothing to process)."""
    if not steps:
        return None
    return A.Compose(steps, **params, seed=seed)


def finish(size: int) -> A.Compose:
    """uint8 (H, W, C) -> uint8 (size, size, C); a mask with it, nearest neighbour."""
    return A.Compose([A.Resize(size, size, mask_interpolation=aug_ops.NEAREST)])


def normalisation(pretrained_cfg: dict, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's mean and std; a grayscale input takes their channel average."""
    mean, std = tuple(pretrained_cfg.get("mean", (0.5,) * 3)), tuple(pretrained_cfg.get("std", (0.5,) * 3))
    if channels == 1:
        return (float(np.mean(mean)),), (float(np.mean(std)),)
    return mean, std


class FlipWithPairs(A.HorizontalFlip):
    """A horizontal flip that also swaps left/right keypoints (left_eye_center <-> right_eye_center)."""

    def __init__(self, swap: np.ndarray, p: float = 0.5):
        super().__init__(p=p)
        self.swap = np.asarray(swap)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params) -> np.ndarray:
        return super().apply_to_keypoints(keypoints, **params)[self.swap]
