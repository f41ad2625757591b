"""Training batches made on the device from uint8 images that live there (train.device_aug).

As the fastest CIFAR-10 trainers do: a cached dataset small enough is copied to the GPU once as
uint8; each batch is gathered there and augmented by the ops' batched executors (aug_ops): the
geometric ops' maps composed into one affine warp, which also moves keypoints, then the
photometric ops in place, then normalisation. No worker processes, no host-to-device copy per
batch. On the CPU the same ops on a batch beat albumentations called per image (whose per-call
overhead bounds small images), so `auto` takes this path on either device whenever the
enabled ops all have a batched executor.

Random draws are kept apart from the operations: `BatchAugment.draw` makes one epoch's draws
from a numpy generator, `apply` is a pure function of the images and their draws, so a seed
gives the same batches on any device.
"""

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.augment import aug_ops
from pipeline.augment.tta import sample
from pipeline.config import Aug
from pipeline.errors import PipelineError
from pipeline.learn import distributed
from pipeline.learn.device import Normalise
from pipeline.tasks.base import Task

DEVICE_SHARE = 0.25  # at most this share of the device's memory (or RAM) goes to the resident images


@dataclass(frozen=True)
class Draws:
    """One epoch's random draws, a row per image: the composed warp both ways, and each op's own."""

    theta: torch.Tensor  # (N, 2, 3) affine map from output to input, [-1, 1] coordinates
    forward: torch.Tensor  # (N, 2, 3) the same map from input to output, for keypoints
    ops: tuple[dict[str, torch.Tensor], ...]  # per enabled op, its parameters
    grids: dict = field(default_factory=dict, compare=False, repr=False)  # (height, width) -> grid

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """(N, H, W, 2) the input point each output pixel reads: made once a batch and shared by
        its images and their masks (on a CPU, making it costs as much as the sampling)."""
        if size not in self.grids:
            self.grids[size] = F.affine_grid(self.theta, [len(self.theta), 1, *size], align_corners=False)
        return self.grids[size]

    def rows(self, index: torch.Tensor, device: torch.device) -> "Draws":
        def take(t: torch.Tensor) -> torch.Tensor:
            return t[index].to(device, non_blocking=True)

        return Draws(take(self.theta), take(self.forward), tuple({k: take(v) for k, v in d.items()} for d in self.ops))


@dataclass(frozen=True)
class Warp:
    """One batch's geometric draws, applied to what moves with its images: the task's targets."""

    ops: list[aug_ops.Op]
    draws: Draws
    swap: torch.Tensor | None  # where each point goes under a horizontal flip, on the batch's device

    def points(self, points: torch.Tensor) -> torch.Tensor:
        """(N, K, 2) points in [-1, 1] -> where the warp takes them, renamed where a flip renames
        them (NaN, missing, stays NaN)."""
        forward = self.draws.forward
        moved = points @ forward[:, :, :2].transpose(1, 2) + forward[:, None, :, 2]
        for op, params in zip(self.ops, self.draws.ops, strict=True):
            if op.geometric:
                moved = op.relabel(moved, params, self.swap)
        return moved

    def masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) target maps -> where the warp takes them, nearest-neighbour: a mask stays 0/255."""
        return sample(masks.float(), self.draws.grid(tuple(masks.shape[-2:])), mode="nearest").to(masks.dtype)


class BatchAugment:
    """`aug.*` as batched tensor ops on (N, C, S, S) uint8 images, ending normalised float; the
    `task` moves its targets with them (None: they stay as they are)."""

    def __init__(self, aug: Aug, normalise: Normalise, task: Task | None = None):
        if aug_ops.not_batched(aug):
            raise PipelineError(f"batched augmentation cannot do {', '.join(aug_ops.not_batched(aug))}")
        self.ops = aug_ops.enabled(aug)
        self.settings = [op.setting(aug) for op in self.ops]
        self.normalise = normalise
        self.task = task
        self.swap = None if task is None or task.flip_swap is None else torch.as_tensor(task.flip_swap)
        # decided once: a test on the draws would read them back from the GPU every batch
        self.warps = any(op.geometric for op in self.ops)

    def draw(self, n: int, rng: np.random.Generator) -> Draws:
        drawn = [op.draw(setting, n, rng) for op, setting in zip(self.ops, self.settings, strict=True)]
        forward = np.tile(np.eye(3), (n, 1, 1))
        for op, params in zip(self.ops, drawn, strict=True):
            if op.geometric:
                forward = op.matrix(params) @ forward
        as_tensors = tuple({k: torch.as_tensor(v, dtype=_dtype(v)) for k, v in d.items()} for d in drawn)
        theta = torch.as_tensor(np.linalg.inv(forward)[:, :2], dtype=torch.float32)
        return Draws(theta, torch.as_tensor(forward[:, :2], dtype=torch.float32), as_tensors)

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """uint8 (N, C, S, S) -> normalised float (N, C, S, S); a pure function of its inputs.
        Values stay 0-255 until normalised; every op after the first copy works in place."""
        x = images.float()
        if self.warps:
            x = sample(x, draws.grid(tuple(x.shape[-2:])))
        for op, params in zip(self.ops, draws.ops, strict=True):
            if not op.geometric:
                x = op.apply(x, params)
        return self.normalise(x)

    def targets(self, targets: torch.Tensor, draws: Draws) -> torch.Tensor:
        """The targets after the same warp as their images, as the task moves them."""
        if self.task is None or not self.warps:
            return targets
        if self.swap is not None and self.swap.device != targets.device:  # moved once, not every batch
            self.swap = self.swap.to(targets.device)
        return self.task.warp_targets(targets, Warp(self.ops, draws, self.swap))


def _dtype(values: np.ndarray) -> torch.dtype:
    return torch.bool if values.dtype == bool else torch.float32


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
        rng = np.random.default_rng(self.seed)
        order = torch.from_numpy(rng.permutation(len(self.rows)))
        draws = self.augment.draw(len(order), rng)  # row i: the draws of the i-th item served
        mine = torch.from_numpy(distributed.shard(np.arange(len(order))))  # positions this rank serves
        batch, device = distributed.rank_batch(self.batch_size), self.images.device
        for start in range(0, len(self) * batch, batch):
            position = mine[start : start + batch]
            items = order[position].to(device, non_blocking=True)
            drawn = draws.rows(position, device)
            images = self.augment.apply(self.images[self.rows[items]], drawn)
            yield images, self.augment.targets(self.targets[items], drawn), self.sizes[: len(items)]


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


@dataclass(frozen=True)
class Resident:
    """Images held on the device, and what the resize to their common side forgot."""

    images: torch.Tensor  # (N, C, side, side) uint8
    sizes: np.ndarray  # (N, 2) float32: each image's (height, width) in its file


def resident_images(images: Sequence, rows: np.ndarray, side: int, device: torch.device) -> Resident:
    """The rows' uint8 images as one (N, C, side, side) tensor on `device`, resized as the
    per-image path resizes them; each decoded once."""
    resize = A.Resize(side, side)
    resized = [resize(image=np.asarray(images[r]))["image"].reshape(side, side, -1) for r in rows]
    stacked = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous().to(device)
    return Resident(stacked, images.original_sizes[rows].astype(np.float32))


def memory_bytes(device: torch.device) -> int:
    """The GPU's memory, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def should_use(policy: str, aug: Aug, device: torch.device, n: int, channels: int, side: int) -> bool:
    """train.device_aug: "on" insists (and says why it cannot), "auto" takes it whenever it can."""
    reasons = aug_ops.not_batched(aug)
    if n * channels * side * side > DEVICE_SHARE * memory_bytes(device):
        reasons.append(f"{n} images of {channels}x{side}x{side} (more than {DEVICE_SHARE:.0%} of {device}'s memory)")
    if policy == "on" and reasons:
        raise PipelineError(f"train.device_aug=on cannot be used with {', '.join(reasons)}; set train.device_aug=off")
    return policy == "on" or (policy == "auto" and not reasons)
