"""The pipeline's training loop against a minimal hand-written PyTorch loop.

Same model, same in-memory batches, same batch size and optimizer; rounds alternate between
the two loops and the median images/s of each is compared. Target: ratio >= 0.95.

    python benchmarks/loop_overhead.py [--model test_resnet] [--images 4096] [--rounds 5] [--tiny]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _stages import machine

from pipeline.config import Model, Train
from pipeline.learn import engine, models
from pipeline.learn.device import Device
from pipeline.tasks.classification import Classification


def batches(n_images: int, batch_size: int, size: int, channels: int, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, channels, size, size, generator=generator)
    labels = torch.randint(0, 10, (n_images,), generator=generator)
    sizes = torch.full((batch_size, 2), float(size))
    return [(images[i : i + batch_size], labels[i : i + batch_size], sizes) for i in range(0, n_images, batch_size)]


def minimal_loop(model, data, optimizer) -> float:
    model.train()
    start = time.perf_counter()
    for images, labels, _ in data:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sum(len(b[0]) for b in data) / (time.perf_counter() - start)


def pipeline_model(name: str, channels: int, batch_size: int, total_steps: int):
    """A 10-class model on the CPU with the engine's optimisation state: (model, state, device)."""
    cfg = Train(lr=1e-3, weight_decay=0.0, device="cpu", batch_size=batch_size)
    device = Device.choose(cfg)
    model = models.create_model(Model(name=name), 10, channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    return model, engine.Step(optimizer, device.scaler(), cfg, total_steps=total_steps), device


def pipeline_loop(model, data, state, device) -> float:
    start = time.perf_counter()
    engine.train_one_epoch(model, data, Classification(list(range(10))), state, device, desc="pipeline")
    return sum(len(b[0]) for b in data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a few batches, for the test suite")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.rounds = 4 * args.batch_size, 1
    torch.manual_seed(0)
    data = batches(args.images, args.batch_size, args.size, 1)
    ours, state, device = pipeline_model(args.model, 1, args.batch_size, len(data) * (args.rounds + 1))
    theirs = models.create_model(Model(name=args.model), 10, 1)
    theirs.load_state_dict(ours.state_dict())
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.0)
    minimal_loop(theirs, data[:2], optimizer), pipeline_loop(ours, data[:2], state, device)  # warm-up
    minimal, pipeline = [], []
    for _ in range(args.rounds):
        minimal.append(minimal_loop(theirs, data, optimizer))
        pipeline.append(pipeline_loop(ours, data, state, device))
    ratio = statistics.median(pipeline) / statistics.median(minimal)
    print("| machine | model | batch | minimal loop img/s | pipeline img/s | ratio (target >= 0.95) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {machine()}, {torch.get_num_threads()} threads, torch {torch.__version__} "
        f"| {args.model} {args.size}x{args.size} | {args.batch_size} | {statistics.median(minimal):.0f} "
        f"| {statistics.median(pipeline):.0f} | {ratio:.3f} |"
    )


if __name__ == "__main__":
    main()
