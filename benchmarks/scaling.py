"""Time per training epoch against the number of images and against the image side.

The pipeline's own path (uint8 images, the demo's affine augmentation, its loader, the engine's
train_one_epoch) with the demo model, `test_resnet`, batch 64, on random 1-channel images: one
epoch at 1k, 2k, 4k and 8k images of 28x28, then 2k images at sides 28, 56 and 112 (the model
input follows the image side). Target: the time linear in the number of images, i.e. the same
milliseconds per image at every size; the constant is the figure to plan with.

    python benchmarks/scaling.py [--sizes 1000 2000 4000 8000] [--sides 28 56 112] [--tiny]
"""

import argparse
import time

import numpy as np
import torch
from _stages import machine
from loop_overhead import pipeline_model

from pipeline import engine, transforms
from pipeline.config import Aug
from pipeline.loader import ImageDataset, create_loader, default_workers
from pipeline.tasks import Classification

BATCH = 64
AUG = Aug(rotate=10, shift=0.1, scale=0.1, p=0.8)  # configs/digits.yaml's


def epoch_seconds(n: int, side: int, seed: int = 0) -> float:
    """One epoch's wall clock after a two-batch warm-up epoch, loader included."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    augment = transforms.compose(transforms.augmentations(AUG, 1, side), False, seed)
    finish = transforms.finish(side, (0.5,), (0.5,))
    model, state, device = pipeline_model("test_resnet", 1, BATCH, n // BATCH + 2)
    task = Classification(list(range(10)))
    for rows in (np.arange(2 * BATCH), np.arange(n)):  # the warm-up, then the timed epoch
        dataset = ImageDataset(images, rows, labels[rows], augment, finish)
        start = time.perf_counter()
        engine.train_one_epoch(model, create_loader(dataset, BATCH, True, default_workers(), seed), task, state, device)
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
    print("| machine | images | side | seconds per epoch | ms per image | ms per image / smallest run's |")
    print("|---|---|---|---|---|---|")
    first = None
    for n, side in runs:
        seconds = epoch_seconds(n, side)
        per_image = 1000 * seconds / n
        first = first or per_image
        print(f"| {machine()} | {n} | {side} | {seconds:.1f} | {per_image:.3f} | {per_image / first:.2f} |")


if __name__ == "__main__":
    main()
