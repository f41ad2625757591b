"""Prediction against a bare model forward loop on the same in-memory batches.

The pipeline's `predict_images` (autocast where configured, softmax, copy to the host, no TTA)
against `model(x)` under `torch.no_grad()`; rounds alternate, medians compared.
Target: ratio >= 0.9.

    python benchmarks/predict_speed.py [--model test_resnet] [--images 8192] [--rounds 5] [--tiny]
"""

import argparse
import statistics
import time

import torch
from _stages import machine

from pipeline.augment import tta
from pipeline.config import Model, Train
from pipeline.learn import inference, models
from pipeline.learn.device import Device
from pipeline.tasks.classification import Classification


def bare_loop(model: torch.nn.Module, batches: list) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for images, _, _ in batches:
            model(images)
    return sum(len(b[0]) for b in batches) / (time.perf_counter() - start)


def pipeline_loop(model: torch.nn.Module, batches: list, device: Device) -> float:
    start = time.perf_counter()
    inference.predict_images(model, Classification(list(range(10))), batches, device, tta.views([]))
    return sum(len(b[0]) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a few batches, for the test suite")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.rounds = 2 * args.batch_size, 1
    torch.manual_seed(0)
    images = torch.randn(args.images, 1, args.size, args.size)
    sizes = torch.full((args.batch_size, 2), float(args.size))
    batches = [(images[i : i + args.batch_size], None, sizes) for i in range(0, args.images, args.batch_size)]
    model = models.create_model(Model(name=args.model), 10, 1).eval()
    device = Device.choose(Train(device="cpu"))
    bare_loop(model, batches[:2]), pipeline_loop(model, batches[:2], device)  # warm-up
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(model, batches))
        ours.append(pipeline_loop(model, batches, device))
    ratio = statistics.median(ours) / statistics.median(bare)
    print("| machine | model | batch | bare forward img/s | pipeline predict img/s | ratio (target >= 0.9) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {machine()}, {torch.get_num_threads()} threads | {args.model} {args.size}x{args.size} "
        f"| {args.batch_size} | {statistics.median(bare):.0f} | {statistics.median(ours):.0f} | {ratio:.3f} |"
    )


if __name__ == "__main__":
    main()
