"""The batched executor against kornia's batched augmentation, on the same ops: speed and equality.

The ops: a horizontal flip (p 0.5), an affine map (rotate 20 degrees, shift 0.1, scale 0.1,
shear 5 degrees, p 0.8) and brightness and contrast (0.2, p 0.8), on a batch of uint8 images
with 12 keypoints each. Ours: `BatchAugment.draw` (numpy, on the CPU), `apply` and `targets`
(pipeline.augment.batch_aug). Kornia's: `AugmentationSequential(RandomHorizontalFlip, RandomAffine,
ColorJiggle)` over the same images as floats in [0, 1] and the points in pixels (the conversion
timed with it). Both include their draws. Beside them, the per-image path: albumentations'
transforms of the same ops, one image at a time (pipeline.augment.transforms). Images per second, the
median of the rounds; the whole measurement is repeated (REPEATS), and the ratios are given as
the median and the range of the repeats, since they move between runs on a shared machine.

Equality: kornia's flips and affine maps (its transform_matrix, in pixels), carried into our
[-1, 1] coordinates and applied by our warp; the largest difference from kornia's images in
grey levels, and from kornia's keypoints in pixels.

    python benchmarks/kornia_aug.py [--tiny]
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from _stages import machine

from pipeline.augment import transforms
from pipeline.augment.batch_aug import BatchAugment, Draws
from pipeline.config import Aug
from pipeline.learn.device import Normalise
from pipeline.tasks.keypoints import Keypoints, keypoint_params

AUG = Aug(hflip=0.5, rotate=20, shift=0.1, scale=0.1, shear=5, brightness=0.2, contrast=0.2, p=0.8)
GREY = Normalise((0.0,), (1 / 255,))  # keeps 0-255 values
POINTS = 12
# points with no left/right names: a flip swaps none of them
POINT_TASK = Keypoints([f"p{i}_{axis}" for i in range(POINTS) for axis in "xy"])
REPEATS = 5


def kornia_sequence(colour: bool):
    import kornia.augmentation as K

    ops = [
        K.RandomHorizontalFlip(p=AUG.hflip),
        K.RandomAffine(AUG.rotate, (AUG.shift, AUG.shift), (1 - AUG.scale, 1 + AUG.scale), AUG.shear, p=AUG.p),
    ]
    if colour:
        ops.append(K.ColorJiggle(brightness=AUG.brightness, contrast=AUG.contrast, p=AUG.p))
    return K.AugmentationSequential(*ops, data_keys=["input", "keypoints"])


def batch(n: int, channels: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (n, channels, side, side), dtype=np.uint8))
    points = torch.from_numpy(rng.uniform(2, side - 3, (n, POINTS, 2)).astype(np.float32))
    return images, points


def to_unit(pixels: torch.Tensor, side: int) -> torch.Tensor:
    return (pixels + 0.5) / (side / 2) - 1


def rate(step, n: int, rounds: int) -> float:
    step()  # warm-up
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return n / statistics.median(seconds)


def speeds(n: int, channels: int, side: int, rounds: int) -> tuple[float, float, float]:
    """Images per second: ours, kornia's, and albumentations' per image (the per-image path)."""
    images, points = batch(n, channels, side)
    ours = BatchAugment(AUG, GREY, POINT_TASK)
    unit = to_unit(points, side).reshape(n, -1)
    rng = np.random.default_rng(0)

    def our_step():
        draws = ours.draw(n, rng)
        ours.apply(images, draws), ours.targets(unit, draws)

    steps = transforms.augmentations(AUG, channels, side, np.arange(POINTS))
    per_image = transforms.compose(steps, keypoint_params(), seed=0)
    arrays, present = images.permute(0, 2, 3, 1).numpy(), [True] * POINTS

    def per_image_step():
        moved = [per_image(image=a, keypoints=p, present=present) for a, p in zip(arrays, points.numpy(), strict=True)]
        torch.from_numpy(np.stack([m["image"] for m in moved])), [m["keypoints"] for m in moved]

    theirs = kornia_sequence(colour=True)
    return (
        rate(our_step, n, rounds),
        rate(lambda: theirs(images.float() / 255, points), n, rounds),
        rate(per_image_step, n, rounds),
    )


def differences(n: int, side: int) -> tuple[float, float]:
    """kornia's geometric ops against our warp given kornia's own maps: grey levels, pixels."""
    images, points = batch(n, 1, side)
    theirs = kornia_sequence(colour=False)
    warped, moved = theirs(images.float(), points)
    pixel_to_unit = torch.tensor([[2 / side, 0, 1 / side - 1], [0, 2 / side, 1 / side - 1], [0, 0, 1]])
    forward = pixel_to_unit @ theirs.transform_matrix @ torch.linalg.inv(pixel_to_unit)
    ours = BatchAugment(Aug(hflip=0.5, rotate=1), GREY, POINT_TASK)
    unflipped = {"flipped": torch.zeros(n, dtype=torch.bool)}  # the swap is the identity: nothing to rename
    draws = Draws(torch.linalg.inv(forward)[:, :2], forward[:, :2], (unflipped, {}))
    ours_moved = ours.targets(to_unit(points, side).reshape(n, -1), draws).reshape(n, POINTS, 2)
    image_gap = (ours.apply(images, draws) - warped).abs().max()
    point_gap = ((ours_moved + 1) * side / 2 - 0.5 - moved).abs().max()
    return float(image_gap), float(point_gap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small batches, 2 rounds: for the test suite")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    n, rounds, repeats = (16, 2, 1) if args.tiny else (256, 20, REPEATS)
    print(
        f"| machine | batch | ours, img/s | kornia, img/s | ours / kornia, median (range of {repeats} repeats) "
        "| albumentations per image, img/s | ours / per image, median (range) "
        "| largest difference from kornia: image, grey levels | keypoints, px |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for channels, side in ((1, 28), (3, 64)):
        ours, theirs, per_image = np.array([speeds(n, channels, side, rounds) for _ in range(repeats)]).T
        image_gap, point_gap = differences(n, side)
        print(
            f"| {machine()} | {n} x {channels}x{side}x{side}, {POINTS} points | {np.median(ours):.0f} "
            f"| {np.median(theirs):.0f} | {spread(ours / theirs)} | {np.median(per_image):.0f} "
            f"| {spread(ours / per_image)} | {image_gap:.3f} | {point_gap:.4f} |"
        )


def spread(ratios: np.ndarray) -> str:
    return f"{np.median(ratios):.2f} ({ratios.min():.2f}-{ratios.max():.2f})"


if __name__ == "__main__":
    main()
