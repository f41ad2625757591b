"""train_one_epoch / evaluate and what they share: device placement, mixed precision, the
learning-rate schedule. No stage logic here."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.config_training import Train
from pipeline.learn.averaging import Averager, Ingredients
from pipeline.learn.device import Device


def lr_factor(step: int, total: int, cfg: Train, steps_per_epoch: int) -> float:
    """The learning rate at `step` as a fraction of train.lr.

    onecycle (fastai's fit_one_cycle): cosine from lr/25 up to lr over pct_start, then cosine
    down to lr * final_lr_ratio. cosine: linear warmup over warmup_epochs, then cosine down.
    train.average=swa: the schedule ends k epochs early at lr * average.lr, held for those.
    """
    low = cfg.final_lr_ratio
    if cfg.average is not None and cfg.average.held_lr is not None:
        held = min(cfg.average.k * steps_per_epoch, total)
        if step >= total - held:
            return cfg.average.held_lr
        total, low = total - held, cfg.average.held_lr
    progress = step / max(total, 1)
    if cfg.scheduler == "onecycle":
        if progress < cfg.pct_start:
            return _cosine(1 / 25, 1.0, progress / cfg.pct_start)
        return _cosine(1.0, low, (progress - cfg.pct_start) / (1 - cfg.pct_start))
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return _cosine(1.0, low, (step - warmup) / max(total - warmup, 1))


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def create_mixup(cfg: Train, n_classes: int, *, soft_targets: bool = False):
    """timm's Mixup, or with `soft_targets` (rows of probabilities) SoftTargetMixup; None when off."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return None
    if soft_targets:
        return SoftTargetMixup(cfg)
    return Mixup(
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        prob=cfg.mixup_prob,
        label_smoothing=cfg.label_smoothing,
        num_classes=n_classes,
    )


class SoftTargetMixup:
    """timm's Mixup for targets that are already probabilities (soft pseudo-labels), which its
    own would one-hot: each image's position in the batch goes through timm's draw as its class,
    and what comes back, how much of each image a mixed one holds, mixes the targets."""

    def __init__(self, cfg: Train):
        self.pairing = Mixup(
            mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha,
            prob=cfg.mixup_prob,
            num_classes=cfg.batch_size,
            label_smoothing=0.0,
        )

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(len(images), device=images.device)
        images, shares = self.pairing(images, positions)  # (B, batch_size): mixed image i's share of image j
        return images, shares[:, : len(images)].to(target.dtype) @ target


@dataclass
class Step:
    """The optimisation state train_one_epoch advances."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    cfg: Train
    total_steps: int
    step: int = 0  # optimizer steps taken so far
    mixup: Mixup | SoftTargetMixup | None = None
    ema: ModelEmaV3 | None = None
    average: Averager | Ingredients | None = None
    # train.distill.online: (images, targets) -> the targets with the teacher's half on these images
    teacher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


class BatchCounter:
    """Batches this process has trained or evaluated: what a tuning worker's heartbeat watches,
    so that it stops when the work does, though its own thread would go on."""

    done = 0


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    task,
    state: Step,
    device: Device,
    frozen=None,
    desc: str = "train",
    sync_every: int = 20,
) -> dict:
    """One pass over `loader`. The loss stays on the device and is read (a host sync) only every
    `sync_every` steps, for the progress bar and the divergence check. `data_wait`: the share of
    the epoch this process spent waiting for its next batch (on a GPU, what the queued work did
    not hide)."""
    model.train()
    if frozen is not None:
        frozen.keep_norms_in_eval()
    cfg, seen, start = state.cfg, 0, time.perf_counter()
    total_loss = torch.zeros((), device=device.device)
    state.optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # None: no bar without a TTY
    waited, asked = 0.0, time.perf_counter()
    for i, (images, target, _) in enumerate(bar):
        waited += time.perf_counter() - asked
        images, target = device.images(images), target.to(device.device, non_blocking=True)
        if state.mixup is not None:
            images, target = state.mixup(images, target)
        if state.teacher is not None:
            target = state.teacher(images, target)
        with device.autocast():
            loss = task.loss(model(images), target)
        state.scaler.scale(loss / cfg.accumulate).backward()
        if (i + 1) % cfg.accumulate == 0 or i + 1 == len(loader):
            _optimizer_step(model, state, len(loader))
        total_loss += loss.detach() * len(images)
        seen += len(images)
        BatchCounter.done += 1
        if (i + 1) % sync_every == 0 or i + 1 == len(loader):
            mean_loss = total_loss.item() / seen
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"loss is {mean_loss} by step {state.step}")
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        asked = time.perf_counter()
    seconds = time.perf_counter() - start
    group = state.optimizer.param_groups[0]
    return {
        "train_loss": total_loss.item() / max(seen, 1),
        "lr": group["lr"] / group.get("lr_scale", 1.0),
        "images_per_s": seen / max(seconds, 1e-9),
        "data_wait": waited / max(seconds, 1e-9),
    }


def _optimizer_step(model: nn.Module, state: Step, steps_per_epoch: int) -> None:
    set_lr(state.optimizer, state.cfg.lr * lr_factor(state.step, state.total_steps, state.cfg, steps_per_epoch))
    if state.cfg.clip_grad:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), state.cfg.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if state.ema is not None:
        state.ema.update(unwrap(model), step=state.step)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, task, device: Device, labelled: bool = True, desc: str = "valid"
) -> dict:
    """Predictions for every item (classification: probabilities; keypoints: [-1, 1] coordinates),
    the original image sizes, and the loss when the items are labelled."""
    model.eval()
    predictions, targets, sizes, total_loss, seen = [], [], [], 0.0, 0
    for images, target, size in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        with device.autocast():
            outputs = model(device.images(images))
        predictions.append(task.activate(outputs).cpu())
        if labelled:
            total_loss += task.eval_loss(outputs, target.to(device.device)).item() * len(images)
            targets.append(target)
        sizes.append(size)
        seen += len(images)
        BatchCounter.done += 1
    return {
        "predictions": torch.cat(predictions).numpy(),
        "targets": torch.cat(targets).numpy() if targets else None,
        "sizes": torch.cat(sizes).numpy(),
        "loss": total_loss / max(seen, 1),
    }


def create_optimizer(groups: list[dict], cfg: Train) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # timm's Mixup draws from numpy
