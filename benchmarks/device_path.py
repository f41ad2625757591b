"""The GPU path: batches made on the device from resident uint8 images, against a timm-style loop.

Both train the same model at the same resolution and batch, with AMP (bf16 where supported) and
channels_last on CUDA, for whole epochs over the same in-memory uint8 images (CIFAR-sized,
32x32 RGB) with the same augmentations (horizontal flip, shift, brightness):
  - timm-style: per-image albumentations in DataLoader workers, uint8 batches copied from pinned
    memory without blocking and normalised on the device (timm's train.py with its default
    prefetcher; this is also the pipeline's per-image path);
  - pipeline: `train.device_aug=on`, the images copied to the device once, each batch gathered,
    augmented and normalised there (pipeline.augment.batch_aug), the engine's train_one_epoch.
Figures: images/s (median of rounds) and peak device memory. On a CPU-only machine the same
script runs on the CPU (no memory column); the GPU figures need a GPU.

    python benchmarks/device_path.py [--model resnet18] [--images 20000] [--batch-size 256] [--tiny]
"""

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from _stages import machine

from pipeline.augment import batch_aug, transforms
from pipeline.config import Aug, Model, Train
from pipeline.data.images import MemoryImages
from pipeline.learn import engine, models
from pipeline.learn.device import Device, Normalise
from pipeline.learn.loader import ImageDataset, create_loader, default_workers
from pipeline.tasks.classification import Classification

AUG = Aug(hflip=0.5, shift=0.125, brightness=0.2, p=1.0)
NORMALISE = Normalise((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def timm_style_epoch(model, loader, optimizer, device: Device) -> float:
    """timm's train_one_epoch without its extras: images/s over one pass."""
    model.train()
    start, seen = time.perf_counter(), 0
    for images, target, _ in loader:
        images, target = device.images(images), target.to(device.device, non_blocking=True)
        with device.autocast():
            loss = F.cross_entropy(model(images), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(images)
    if device.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def pipeline_epoch(model, batches, state, device: Device) -> float:
    start = time.perf_counter()
    engine.train_one_epoch(model, batches, Classification(list(range(10))), state, device, desc="device_aug")
    if device.device.type == "cuda":
        torch.cuda.synchronize()
    return len(batches) * batches.batch_size / (time.perf_counter() - start)


def peak_memory_gb(device: Device) -> str:
    if device.device.type != "cuda":
        return "n/a"
    peak = torch.cuda.max_memory_allocated(device.device) / 2**30
    torch.cuda.reset_peak_memory_stats(device.device)
    return f"{peak:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="test_resnet, a few batches, for the test suite")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.images, args.batch_size, args.rounds = "test_resnet", 64, 16, 1
    rng = np.random.default_rng(0)
    images = MemoryImages(rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8))
    labels = rng.integers(0, 10, args.images)
    cfg = Train(batch_size=args.batch_size, lr=1e-3)
    device = Device.choose(cfg)
    torch.backends.cudnn.benchmark = True

    def fresh_model():
        torch.manual_seed(0)
        return models.create_model(Model(name=args.model), 10, 3).to(device.device, memory_format=device.memory_format)

    augment = transforms.compose(transforms.augmentations(AUG, 3, 32), {}, 0)
    dataset = ImageDataset(images, np.arange(args.images), labels, augment, transforms.finish(32))
    theirs = fresh_model()
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-3)
    workers = max(default_workers(), 1 if device.device.type == "cuda" else 0)
    timm_rates = [
        timm_style_epoch(
            theirs, create_loader(dataset, args.batch_size, True, workers, r, device, NORMALISE), optimizer, device
        )
        for r in range(args.rounds + 1)
    ][1:]  # the first epoch warms up (cudnn.benchmark, workers)
    timm_memory = peak_memory_gb(device)
    ours = fresh_model()
    resident = batch_aug.resident_images(images, np.arange(args.images), 32, device.device).images
    targets = torch.as_tensor(labels).to(device.device)
    device_aug = batch_aug.BatchAugment(AUG, NORMALISE)
    total = (args.rounds + 1) * (args.images // args.batch_size)
    state = engine.Step(torch.optim.AdamW(ours.parameters(), lr=1e-3), device.scaler(), cfg, total)
    our_rates = [
        pipeline_epoch(ours, batch_aug.DeviceBatches(resident, targets, device_aug, args.batch_size, r), state, device)
        for r in range(args.rounds + 1)
    ][1:]
    our_memory = peak_memory_gb(device)
    timm_rate, our_rate = statistics.median(timm_rates), statistics.median(our_rates)
    amp = str(device.amp_dtype).replace("torch.", "") if device.amp_dtype else "fp32"
    print(
        "| machine | model, input, batch | precision | timm-style loop img/s (workers) | pipeline device_aug img/s "
        "| ratio | peak memory timm-style / pipeline |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {machine()} | {args.model}, 32x32x3, {args.batch_size} | {amp} | {timm_rate:.0f} ({workers}) "
        f"| {our_rate:.0f} | {our_rate / timm_rate:.2f} | {timm_memory} / {our_memory} |"
    )


if __name__ == "__main__":
    main()
