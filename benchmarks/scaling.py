"""Time per training epoch against the number of images and against the image side.

The pipeline's two training paths with the demo model, `test_resnet`, batch 64, the demo's
affine augmentation, on random 1-channel images, loader and the engine's train_one_epoch
included: the batched path (`train.device_aug=auto` takes it here: the images resident, each
batch augmented by a few tensor ops) and the per-image path (albumentations per image, the
DataLoader, normalised a batch at a time). One epoch at 1k, 2k, 4k and 8k images of 28x28,
then 2k images at sides 56 and 112 (the model input follows the image side). Target: the time
linear in the number of images, i.e. the same milliseconds per image at every size; the
constant is the figure to plan with.

    python benchmarks/scaling.py [--sizes 1000 2000 4000 8000] [--sides 28 56 112] [--tiny]
"""

import argparse
import time

import numpy as np
import torch
from _stages import machine
from loop_overhead import pipeline_model

from pipeline.augment import batch_aug, transforms
from pipeline.config import Aug
from pipeline.data.images import MemoryImages
from pipeline.learn import engine
from pipeline.learn.device import Normalise
from pipeline.learn.loader import ImageDataset, create_loader, default_workers
from pipeline.tasks.classification import Classification

BATCH = 64
AUG = Aug(rotate=10, shift=0.1, scale=0.1, p=0.8)  # configs/digits.yaml's
NORMALISE = Normalise((0.5,), (0.5,))


def epoch_seconds(n: int, side: int, batched: bool, seed: int = 0) -> float:
    """One epoch's wall clock after a two-batch warm-up epoch, loader included."""
    rng = np.random.default_rng(seed)
    images = MemoryImages(rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8))
    labels = rng.integers(0, 10, n)
    model, state, device = pipeline_model("test_resnet", 1, BATCH, n // BATCH + 2)
    if batched:
        resident = batch_aug.resident_images(images, np.arange(n), side, device.device).images
        augment, targets = batch_aug.BatchAugment(AUG, NORMALISE), torch.as_tensor(labels)
    else:
        augment = transforms.compose(transforms.augmentations(AUG, 1, side), {}, seed)
    for rows in (np.arange(2 * BATCH), np.arange(n)):  # the warm-up, then the timed epoch
        start = time.perf_counter()
        if batched:
            batches = batch_aug.DeviceBatches(resident, targets, augment, BATCH, seed, torch.as_tensor(rows))
        else:
            dataset = ImageDataset(images, rows, labels[rows], augment, transforms.finish(side))
            batches = create_loader(dataset, BATCH, True, default_workers(), seed, device, NORMALISE)
        engine.train_one_epoch(model, batches, Classification(list(range(10))), state, device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--sides", type=int, nargs="+", default=[28, 56, 112])
    parser.add_argument("--tiny", action="store_true", help="two small sizes, for the test suite")
    args = parser.parse_args()
    if args.tiny:
        args.sizes, args.sides = [2 * BATCH, 4 * BATCH], [28, 32]
    torch.manual_seed(0)
    runs = [(n, args.sides[0]) for n in args.sizes] + [(args.sizes[1 % len(args.sizes)], s) for s in args.sides[1:]]
    print(
        "| machine | images | side | batched: seconds per epoch | ms per image | / smallest run's "
        "| per-image: seconds per epoch | ms per image | / smallest run's |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    first = {}
    for n, side in runs:
        cells = []
        for batched in (True, False):
            seconds = epoch_seconds(n, side, batched)
            per_image = 1000 * seconds / n
            first.setdefault(batched, per_image)
            cells.append(f"{seconds:.1f} | {per_image:.3f} | {per_image / first[batched]:.2f}")
        print(f"| {machine()} | {n} | {side} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
