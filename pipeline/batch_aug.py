"""Training batches made on the device from uint8 images that live there (train.device_aug).

As the fastest CIFAR-10 trainers do: a cached dataset small enough is copied to the GPU once as
uint8; each batch is gathered there and augmented with a few batched ops (one affine warp for
flips, rotation, shift, scale and shear; brightness and contrast; cutout), then normalised. No
worker processes, no host-to-device copy per batch. On the CPU the same ops on a batch beat
albumentations called per image (whose per-call overhead bounds small images), so `auto` takes
this path on either device whenever the augmentations allow it.

Random draws are kept apart from the operations: `BatchAugment.draw` makes one epoch's draws on
a CPU generator, `apply` is a pure function of the images and their draws, so a seed gives the
same batches on any device. Only the augmentations expressible this way are supported; the
others (perspective, colour, blur, noise, random resized crop) and keypoint targets keep the
per-image albumentations path.
"""

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from pipeline import distributed
from pipeline.config import Aug
from pipeline.errors import PipelineError
from pipeline.transforms import Normalise

SUPPORTED = {"hflip", "vflip", "rotate", "shift", "scale", "shear", "brightness", "contrast", "cutout"}
SETTINGS = {"p", "cutout_holes", "flip_pairs"}  # how the augmentations apply, not augmentations
DEVICE_SHARE = 0.25  # at most this share of the device's memory (or RAM) goes to the resident images


def unsupported(aug: Aug) -> list[str]:
    """The enabled augmentations the batched path cannot do, as `aug.key=value`."""
    defaults = Aug()
    return [
        f"aug.{name}={getattr(aug, name)}"
        for name in type(aug).model_fields
        if name not in SUPPORTED | SETTINGS and getattr(aug, name) != getattr(defaults, name)
    ]


@dataclass(frozen=True)
class Draws:
    """One epoch's random draws, a row per image."""

    theta: torch.Tensor  # (N, 2, 3) affine map from output to input, normalised coordinates
    contrast: torch.Tensor  # (N,) multiplier
    brightness: torch.Tensor  # (N,) added, as a fraction of the pixel range
    holes: torch.Tensor  # (N, K, 4) y0, x0, height, width as fractions of the side; height 0: none

    def rows(self, index: torch.Tensor, device: torch.device) -> "Draws":
        return Draws(*(getattr(self, f.name)[index].to(device, non_blocking=True) for f in fields(self)))


class BatchAugment:
    """`aug.*` as batched tensor ops on (N, C, S, S) uint8 images, ending normalised float."""

    def __init__(self, aug: Aug, normalise: Normalise):
        if unsupported(aug):
            raise PipelineError(f"batched augmentation cannot do {', '.join(unsupported(aug))}")
        self.aug, self.normalise = aug, normalise
        # decided once: a test on the draws would read them back from the GPU every batch
        self.warps = any((aug.hflip, aug.vflip, aug.rotate, aug.shift, aug.scale, aug.shear))
        self.recolours = bool(aug.brightness or aug.contrast)

    def draw(self, n: int, generator: torch.Generator) -> Draws:
        aug = self.aug

        def uniform(low: float, high: float, shape: tuple = ()) -> torch.Tensor:
            return low + (high - low) * torch.rand((n, *shape), generator=generator)

        def chosen(p: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) < p

        geometric = chosen(aug.p) if aug.rotate or aug.shift or aug.scale or aug.shear else torch.zeros(n, dtype=bool)
        flips = torch.stack([chosen(aug.hflip), chosen(aug.vflip)], dim=1)
        angle = torch.deg2rad(uniform(-aug.rotate, aug.rotate)) * geometric
        shear = torch.deg2rad(uniform(-aug.shear, aug.shear)) * geometric
        zoom = torch.where(geometric, uniform(1 - aug.scale, 1 + aug.scale), 1.0)
        shift = uniform(-aug.shift, aug.shift, (2,)) * geometric[:, None] * 2  # 2: a side is 2 units long
        photometric = chosen(aug.p) if aug.brightness or aug.contrast else torch.zeros(n, dtype=bool)
        contrast = torch.where(photometric, uniform(1 - aug.contrast, 1 + aug.contrast), 1.0)
        brightness = torch.where(photometric, uniform(-aug.brightness, aug.brightness), 0.0)
        return Draws(_inverse_affine(flips, angle, shear, zoom, shift), contrast, brightness, self._holes(n, generator))

    def _holes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        aug, k = self.aug, self.aug.cutout_holes
        if not aug.cutout:
            return torch.zeros(n, k, 4)
        size = aug.cutout / 2 + aug.cutout / 2 * torch.rand(n, k, 2, generator=generator)
        corner = (1 - size) * torch.rand(n, k, 2, generator=generator)
        count = torch.randint(1, k + 1, (n, 1), generator=generator)
        used = (torch.arange(k)[None, :] < count) & (torch.rand(n, 1, generator=generator) < aug.p)
        return torch.cat([corner, size * used[..., None]], dim=2)

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """uint8 (N, C, S, S) -> normalised float (N, C, S, S); a pure function of its inputs.
        Values stay 0-255 until normalised; every op after the first copy works in place."""
        x = images.float()
        if self.warps:
            grid = F.affine_grid(draws.theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.recolours:
            x.mul_(draws.contrast.view(-1, 1, 1, 1)).add_(255 * draws.brightness.view(-1, 1, 1, 1)).clamp_(0, 255)
        if self.aug.cutout:
            x.masked_fill_(_hole_mask(draws.holes, x.shape[-1])[:, None], 0)
        return self.normalise(x)


def _inverse_affine(
    flips: torch.Tensor, angle: torch.Tensor, shear: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """The output -> input maps (N, 2, 3) for: flip, then rotate, shear and zoom about the centre,
    then shift; in grid_sample's normalised coordinates (a square image spans [-1, 1])."""
    n = len(angle)
    forward = torch.zeros(n, 3, 3)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # rotation x shear (x by y) x zoom, then the flips' signs on the input axes
    forward[:, 0, 0], forward[:, 0, 1] = zoom * cos, zoom * (cos * tan - sin)
    forward[:, 1, 0], forward[:, 1, 1] = zoom * sin, zoom * (sin * tan + cos)
    forward[:, :2, :2] *= torch.where(flips, -1.0, 1.0)[:, None, :]
    forward[:, :2, 2], forward[:, 2, 2] = shift, 1.0
    return torch.linalg.inv(forward)[:, :2, :]


def _hole_mask(holes: torch.Tensor, side: int) -> torch.Tensor:
    """(N, K, 4) fractional holes -> (N, S, S) bool, True inside any hole."""
    centres = (torch.arange(side, device=holes.device) + 0.5) / side
    y0, x0, height, width = holes.unbind(dim=2)  # each (N, K)
    inside_y = (centres >= y0[..., None]) & (centres < (y0 + height)[..., None])  # (N, K, S)
    inside_x = (centres >= x0[..., None]) & (centres < (x0 + width)[..., None])
    return (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1)


class DeviceBatches:
    """One epoch of shuffled, augmented batches from images held on the device: yields what a
    DataLoader over ImageDataset yields, (images, targets, sizes), the last partial batch dropped.
    `rows`: which of `images` each item is (default: all of them, in order), so the resident
    images are shared by every fold's and every trial's batches."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        augment: BatchAugment,
        batch_size: int,
        seed: int,
        rows: torch.Tensor | None = None,
    ):
        self.images, self.targets, self.augment = images, targets, augment
        self.rows = torch.arange(len(images), device=images.device) if rows is None else rows
        self.batch_size, self.seed = batch_size, seed
        self.sizes = torch.tensor(images.shape[-2:], dtype=torch.float32).expand(batch_size, 2)

    def __len__(self) -> int:
        """Under torchrun: this rank's share of the items, in its share of each batch."""
        per_rank = len(self.rows) // distributed.world_size()
        return max(1, per_rank // distributed.rank_batch(self.batch_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.rows), generator=generator)
        draws = self.augment.draw(len(order), generator)  # row i: the draws of the i-th item served
        mine = torch.from_numpy(distributed.shard(np.arange(len(order))))  # positions this rank serves
        batch, device = distributed.rank_batch(self.batch_size), self.images.device
        for start in range(0, len(self) * batch, batch):
            position = mine[start : start + batch]
            items = order[position].to(device, non_blocking=True)
            images = self.augment.apply(self.images[self.rows[items]], draws.rows(position, device))
            yield images, self.targets[items], self.sizes[: len(items)]


class ResidentBatches:
    """Evaluation batches from the resident images: `rows` in order, unaugmented, normalised;
    what a DataLoader over the per-image path yields for them, with no per-image work.
    `sizes`: each row's original (height, width), for the metrics."""

    def __init__(
        self,
        images: torch.Tensor,
        rows: torch.Tensor,
        targets: torch.Tensor,
        sizes: torch.Tensor,
        batch_size: int,
        normalise: Normalise,
    ):
        self.images, self.rows, self.targets, self.sizes = images, rows, targets, sizes
        self.batch_size, self.normalise = batch_size, normalise

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.rows), self.batch_size):
            part = slice(start, start + self.batch_size)
            yield self.normalise(self.images[self.rows[part]]), self.targets[part], self.sizes[part]


def resident_images(images: Sequence, rows: np.ndarray, side: int, device: torch.device) -> torch.Tensor:
    """The rows' uint8 images as one (N, C, side, side) tensor on `device`, resized as the
    per-image path resizes them."""
    resize = A.Resize(side, side)
    resized = [resize(image=np.asarray(images[r]))["image"].reshape(side, side, -1) for r in rows]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous().to(device)


def memory_bytes(device: torch.device) -> int:
    """The GPU's memory, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def should_use(policy: str, aug: Aug, task_kind: str, device: torch.device, n: int, channels: int, side: int) -> bool:
    """train.device_aug: "on" insists (and says why it cannot), "auto" takes it whenever it can."""
    reasons = unsupported(aug) + (["keypoint targets"] if task_kind == "keypoints" else [])
    if n * channels * side * side > DEVICE_SHARE * memory_bytes(device):
        reasons.append(f"{n} images of {channels}x{side}x{side} (more than {DEVICE_SHARE:.0%} of {device}'s memory)")
    if policy == "on" and reasons:
        raise PipelineError(f"train.device_aug=on cannot be used with {', '.join(reasons)}; set train.device_aug=off")
    return policy == "on" or (policy == "auto" and not reasons)
