"""Albumentations pipelines built from `aug.*`, the one description that training and tuning share.

Augmentations run on the uint8 image at its own size; keypoints move with it (never dropped:
remove_invisible=False). Then `finish` resizes to the model's size, still uint8: batches cross
from the workers and to the GPU at a quarter of float32's bytes, and `Normalise` maps them to
the backbone's mean and std on the device, a batch at a time (as timm's prefetcher does).
"""

import albumentations as A
import numpy as np
import torch

from pipeline.config import Aug
from pipeline.errors import PipelineError


class FlipWithPairs(A.HorizontalFlip):
    """A horizontal flip that also swaps left/right keypoints (left_eye_center <-> right_eye_center)."""

    def __init__(self, swap: np.ndarray, p: float = 0.5):
        super().__init__(p=p)
        self.swap = np.asarray(swap)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params) -> np.ndarray:
        return super().apply_to_keypoints(keypoints, **params)[self.swap]


def point_names(columns: list[str]) -> list[str]:
    """x/y column pairs -> point names: left_eye_center_x, left_eye_center_y -> left_eye_center."""
    names = []
    for x, y in zip(columns[0::2], columns[1::2], strict=True):
        if not (x.endswith("x") and y.endswith("y") and x[:-1] == y[:-1]):
            raise PipelineError(f"keypoint columns must come as x, y pairs; got {x!r} then {y!r}")
        names.append(x[:-1].rstrip("_"))
    return names


def flip_permutation(names: list[str], pairs: str | list[tuple[str, str]]) -> np.ndarray:
    """Where each point goes under a horizontal flip. "auto" pairs every name containing
    'left' with the same name with 'right'."""
    if pairs == "auto":
        pairs = [(n, n.replace("left", "right")) for n in names if "left" in n and n.replace("left", "right") in names]
    position = {n: i for i, n in enumerate(names)}
    swap = np.arange(len(names))
    for a, b in pairs:
        for name in (a, b):
            if name not in position:
                raise PipelineError(f"aug.flip_pairs names {name!r}, which is not a keypoint; points: {names}")
        swap[position[a]], swap[position[b]] = position[b], position[a]
    return swap


def augmentations(aug: Aug, channels: int, size: int, swap: np.ndarray | None = None) -> list[A.BasicTransform]:
    """The enabled augmentations, in the order they apply."""
    p = aug.p
    steps: list[A.BasicTransform] = []
    if aug.random_resized_crop:
        steps.append(A.RandomResizedCrop(size=(size, size), scale=(aug.random_resized_crop, 1.0)))
    if aug.hflip:
        steps.append(FlipWithPairs(swap, p=aug.hflip) if swap is not None else A.HorizontalFlip(p=aug.hflip))
    if aug.vflip:
        steps.append(A.VerticalFlip(p=aug.vflip))
    if aug.rotate or aug.shift or aug.scale or aug.shear:
        steps.append(
            A.Affine(
                rotate=(-aug.rotate, aug.rotate),
                translate_percent=(-aug.shift, aug.shift),
                scale=(1 - aug.scale, 1 + aug.scale),
                shear=(-aug.shear, aug.shear),
                p=p,
            )
        )
    if aug.perspective:
        steps.append(A.Perspective(scale=(0.0, aug.perspective), p=p))
    if aug.brightness or aug.contrast:
        steps.append(A.RandomBrightnessContrast(brightness_limit=aug.brightness, contrast_limit=aug.contrast, p=p))
    if aug.hue or aug.saturation:
        if channels != 3:
            raise PipelineError("aug.hue and aug.saturation need RGB images; these are grayscale")
        steps.append(A.ColorJitter(brightness=0, contrast=0, saturation=aug.saturation, hue=aug.hue, p=p))
    if aug.blur:
        steps.append(A.GaussianBlur(blur_limit=(3, aug.blur), p=p))
    if aug.noise:
        steps.append(A.GaussNoise(std_range=(0.0, aug.noise), p=p))
    if aug.cutout:
        side = (aug.cutout / 2, aug.cutout)
        steps.append(
            A.CoarseDropout(num_holes_range=(1, aug.cutout_holes), hole_height_range=side, hole_width_range=side, p=p)
        )
    return steps


def compose(steps: list[A.BasicTransform], keypoints: bool, seed: int) -> A.Compose:
    # `present` rides along with each point, so a flip that swaps points swaps their labels too
    params = A.KeypointParams(format="xy", remove_invisible=False, label_fields=["present"]) if keypoints else None
    return A.Compose(steps, keypoint_params=params, seed=seed)


def finish(size: int) -> A.Compose:
    """uint8 (H, W, C) -> uint8 (size, size, C)."""
    return A.Compose([A.Resize(size, size)])


class Normalise:
    """(B, C, H, W) batches of 0-255 values -> float32 (x / 255 - mean) / std, on their device.
    A float batch is normalised in place: its owner passes a temporary."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        std_ = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1 / (255 * std_)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images if images.is_floating_point() else images.float()
        if self.scale.device != x.device:  # moved once, not copied to the device every batch
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        return x.mul_(self.scale).add_(self.shift)


def normalisation(pretrained_cfg: dict, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's mean and std; a grayscale input takes their channel average."""
    mean, std = tuple(pretrained_cfg.get("mean", (0.5,) * 3)), tuple(pretrained_cfg.get("std", (0.5,) * 3))
    if channels == 1:
        return (float(np.mean(mean)),), (float(np.mean(std)),)
    return mean, std
