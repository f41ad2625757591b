"""`make lr-find`: fastai's learning-rate finder. An exponential sweep of the learning rate over
fold 0's training rows, one batch per step, stopped when the loss explodes; the curve is saved
and the steepest descent suggested."""

import itertools

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pipeline import config as C
from pipeline.files import atomic_path, write_csv
from pipeline.learn import engine, plan
from pipeline.learn.device import Device
from pipeline.learn.fit import assemble, for_rows
from pipeline.learn.fit_setup import Setup
from pipeline.paths import Paths


def sweep(
    model: torch.nn.Module,
    loader,
    task,
    optimizer,
    device: Device,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
) -> tuple[np.ndarray, np.ndarray]:
    """(learning rates, smoothed losses) until the loss passes 4x its minimum."""
    model.train()
    lrs, losses, average, best = [], [], 0.0, float("inf")
    batches = itertools.cycle(loader)
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        engine.set_lr(optimizer, lr)
        images, target, _ = next(batches)
        with device.autocast():
            loss = task.loss(model(device.images(images)), target.to(device.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average = beta * average + (1 - beta) * loss.item()
        smoothed = average / (1 - beta ** (i + 1))
        if not np.isfinite(smoothed) or smoothed > 4 * best:
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    return np.array(lrs), np.array(losses)


def suggest(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The learning rate where the loss falls fastest, before its minimum."""
    stop = int(np.argmin(losses)) + 1
    if stop < 3:
        return float(lrs[max(stop - 1, 0)] / 10)
    slopes = np.gradient(losses[:stop], np.log(lrs[:stop]))
    return float(lrs[int(np.argmin(slopes))])


def run(cfg: C.Config) -> None:
    paths = Paths.of(cfg)
    setup, folds = plan.prepare(cfg, paths)
    cfg = setup.cfg
    train_rows = np.flatnonzero(folds["fold"].to_numpy() != 0)
    lrs, losses = sweep_setup(setup, train_rows)
    suggestion = suggest(lrs, losses)
    write_csv(paths.lr_find("csv"), pd.DataFrame({"lr": lrs, "loss": losses}))
    plot(lrs, losses, suggestion, paths.lr_find("png"))
    print(
        f"lr-find: steepest descent at lr {suggestion:.2e} (train.lr is {cfg.train.lr:.2e}); "
        f"curve in {paths.lr_find('png')}"
    )


def sweep_setup(setup: Setup, train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    setup = for_rows(setup, train_rows)
    parts = assemble(setup, train_rows, None)
    loader = parts.train_batches(setup.cfg.train.seed)
    return sweep(parts.model, loader, setup.task, parts.optimizer, parts.device)


def plot(lrs: np.ndarray, losses: np.ndarray, suggestion: float, path) -> None:
    figure = Figure(figsize=(6, 4))  # no pyplot: no GUI backend, no global state
    axes = figure.subplots()
    axes.plot(lrs, losses)
    axes.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.1e}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="lr find")
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
