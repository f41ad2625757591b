"""Datasets over the uint8 image store and the loader factory."""

import os
from collections.abc import Callable, Iterator, Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.learn import distributed
from pipeline.learn.device import Device
from pipeline.tasks.base import Task


class ConcatImages(Sequence):
    """Several image stores seen as one (competition images, then scraped extras)."""

    def __init__(self, parts: list[Sequence]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.original_sizes = np.concatenate([p.original_sizes for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[part][i - self.starts[part]]


class ImageDataset(Dataset):
    """Rows of an image store with their targets, augmented (the task moves its targets with the
    image) then finished to a uint8 tensor. Each item also returns its file's (height, width),
    for the metrics and the predictions in competition units."""

    def __init__(
        self,
        images: Sequence,
        rows: np.ndarray,
        targets: np.ndarray | None,
        augment: A.Compose | None,
        finish: A.Compose,
        task: Task | None = None,
    ):
        """`task`: what moves the targets with the image; None, they stay as they are."""
        self.images, self.rows, self.targets = images, np.asarray(rows), targets
        self.augment, self.finish, self.task = augment, finish, task

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image = np.asarray(self.images[self.rows[i]])
        original = self.images.original_sizes[self.rows[i]]
        target = self.targets[i] if self.targets is not None else np.float32(np.nan)
        if self.task is not None and self.targets is not None:
            image, target = self.task.augment_item(self.augment, image, target, original)
            image, target = self.task.finish_item(self.finish, image, target)
        else:
            image = image if self.augment is None else self.augment(image=image)["image"]
            image = self.finish(image=image)["image"]  # may be the store's read-only array: torch.tensor copies
        size = torch.tensor(original, dtype=torch.float32)
        return torch.tensor(image.transpose(2, 0, 1)), torch.as_tensor(target), size

    def reseed(self, seed: int) -> None:
        if self.augment is not None:
            self.augment.set_random_seed(seed)


def _reseed_worker(worker_id: int) -> None:
    """Each worker's augmentations draw from its own seed, which torch varies per epoch."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**32)


def default_workers() -> int:
    """No worker processes on two cores or fewer: measured faster there (the model needs both
    cores); otherwise one core stays with the training loop."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


class DeviceLoader:
    """A DataLoader's uint8 batches moved to the device (from pinned memory, non-blocking) and
    normalised there; targets and sizes stay where the DataLoader made them."""

    def __init__(self, loader: DataLoader, device: Device, normalise: Callable[[torch.Tensor], torch.Tensor]):
        self.loader, self.device, self.normalise = loader, device, normalise

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for images, targets, sizes in self.loader:
            yield self.normalise(self.device.images(images)), targets, sizes


def create_loader(
    dataset: ImageDataset,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    device: Device,
    normalise: Callable[[torch.Tensor], torch.Tensor],
) -> DeviceLoader:
    """Batches of `dataset` on `device`, normalised. Under torchrun a
    training loader serves this rank's share of the rows and of the batch."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    dataset.reseed(seed + distributed.rank())
    sampler = None
    if train and distributed.world_size() > 1:
        sampler = DistributedSampler(dataset, distributed.world_size(), distributed.rank(), seed=seed, drop_last=True)
        batch_size = distributed.rank_batch(batch_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        pin_memory=device.device.type == "cuda",
        generator=generator,
        worker_init_fn=_reseed_worker if workers else None,
        persistent_workers=False,
    )
    return DeviceLoader(loader, device, normalise)
