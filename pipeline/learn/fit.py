"""fit(): train one model for some epochs on some rows, validating on others, with a checkpoint
after every epoch so that a killed run continues where it stopped."""

import dataclasses
import functools
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3

from pipeline.augment import batch_aug, transforms
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, write_csv
from pipeline.learn import averaging, distributed, engine, models
from pipeline.learn.device import Device, Normalise
from pipeline.learn.fit_setup import Setup
from pipeline.learn.loader import ImageDataset, create_loader, default_workers
from pipeline.paths import FitFiles
from pipeline.predictions import Raw
from pipeline.records import FitResult


def build_model(setup: Setup) -> tuple[torch.nn.Module, models.Frozen]:
    model = models.create_model(setup.cfg.model, setup.task.n_outputs, setup.channels, dense=setup.task.dense)
    if setup.cfg.train.sync_bn and distributed.world_size() > 1:  # before freeze() keeps its norms
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    frozen = models.freeze(model, setup.cfg.model.freeze_depth, setup.cfg.model.freeze_blocks)
    return model, frozen


def for_rows(setup: Setup, train_rows: np.ndarray) -> Setup:
    """The setup with its task fitted to these training rows' targets (a regression's scale):
    what one fit trains, validates and saves with."""
    return dataclasses.replace(setup, task=setup.task.fitted_to(setup.targets[train_rows]))


def check(setup: Setup) -> torch.nn.Module:
    """Build once what every fit builds from the config (the model with its weights and frozen
    stages, the augmentations, the device and whether it can augment), so that a config mistake
    is said before any result is touched. Returns the model, for what its shape decides."""
    cfg = setup.cfg
    model, _ = build_model(setup)
    transforms.augmentations(cfg.aug, setup.channels, setup.image_size, setup.task.flip_swap)
    device = Device.choose(cfg.train).device
    batch_aug.should_use(cfg.train.device_aug, cfg.aug, device, len(setup.images), setup.channels, setup.image_size)
    return model


def datasets(setup: Setup, train_rows: np.ndarray, valid_rows: np.ndarray | None):
    cfg, task, size = setup.cfg, setup.task, setup.image_size
    steps = transforms.augmentations(cfg.aug, setup.channels, size, task.flip_swap)
    augment = transforms.compose(steps, task.compose_params(), cfg.train.seed)
    finish = transforms.finish(size)
    train = ImageDataset(setup.images, setup.rows[train_rows], setup.targets[train_rows], augment, finish, task)
    if valid_rows is None:
        return train, None
    valid_rows = distributed.shard(valid_rows)  # each rank validates its share; _validate gathers them
    valid = ImageDataset(setup.images, setup.rows[valid_rows], setup.targets[valid_rows], None, finish, task)
    return train, valid


@dataclass(frozen=True)
class Parts:
    """A fresh model on its device, its frozen stages, optimizer and batches."""

    device: Device
    model: torch.nn.Module  # what is saved and validated
    trained: torch.nn.Module  # what trains: the model, or the model in DistributedDataParallel
    frozen: models.Frozen
    optimizer: torch.optim.Optimizer
    train_batches: Callable[[int], Iterable]  # an epoch's seed -> its training batches
    valid_batches: Callable[[], Iterable] | None  # this rank's validation rows, in order
    n_valid: int  # this rank's validation rows
    normalise: Normalise  # the model's pixels from 0-255


def assemble(setup: Setup, train_rows: np.ndarray, valid_rows: np.ndarray | None) -> Parts:
    cfg = setup.cfg.train
    device = Device.choose(cfg)
    engine.seed_everything(cfg.seed)
    model, frozen = build_model(setup)
    model.to(device.device, memory_format=device.memory_format)
    train_set, valid_set = datasets(setup, train_rows, valid_rows)
    groups = models.param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.head_lr_mult)
    workers = default_workers() if cfg.workers is None else cfg.workers
    optimizer = engine.create_optimizer(groups, cfg)
    normalise = Normalise(*transforms.normalisation(model.pretrained_cfg, setup.channels))
    train, valid = _batches(setup, train_set, valid_set, normalise, device, workers)
    trained = wrap(model, device, cfg.compile)
    n_valid = 0 if valid_set is None else len(valid_set)
    return Parts(device, model, trained, frozen, optimizer, train, valid, n_valid, normalise)


def wrap(model: torch.nn.Module, device: Device, compiled: bool) -> torch.nn.Module:
    """What trains: the model, in DistributedDataParallel under torchrun, then torch.compile'd
    when asked (DDP first, as PyTorch advises). Wrap again after unfreezing: DDP registers the
    parameters that need gradients when it is built."""
    trained = model
    if distributed.world_size() > 1:
        distributed.init(device.device)
        device_ids = [device.device.index] if device.device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(trained) if compiled else trained


Batches = tuple[Callable[[int], Iterable], Callable[[], Iterable] | None]  # (an epoch's seed -> training, validation)


def _batches(
    setup: Setup,
    train_set: ImageDataset,
    valid_set: ImageDataset | None,
    normalise: Normalise,
    device: Device,
    workers: int,
) -> Batches:
    """Made on the device from resident images when train.device_aug says so, else DataLoaders
    over the per-image path."""
    cfg, n, side = setup.cfg, len(setup.images), setup.image_size
    if batch_aug.should_use(cfg.train.device_aug, cfg.aug, device.device, n, setup.channels, side):
        return _resident_batches(setup, train_set, valid_set, normalise, device.device)
    batch, seed = cfg.train.batch_size, cfg.train.seed
    valid = None
    if valid_set is not None:
        valid = functools.partial(create_loader, valid_set, 2 * batch, False, workers, seed, device, normalise)
    return lambda epoch_seed: create_loader(train_set, batch, True, workers, epoch_seed, device, normalise), valid


def _resident_batches(
    setup: Setup,
    train_set: ImageDataset,
    valid_set: ImageDataset | None,
    normalise: Normalise,
    device: torch.device,
) -> Batches:
    cfg, n, side = setup.cfg, len(setup.images), setup.image_size
    key = (str(device), side)
    if key not in setup.resident:  # once per stage, shared by its folds and trials
        setup.resident[key] = batch_aug.resident_images(setup.images, np.arange(n), side, device)
        print(f"device_aug: {n} images resident on {device}, augmented there")
    resident, rows = setup.resident[key], torch.as_tensor(train_set.rows).to(device)
    augment = batch_aug.BatchAugment(cfg.aug, normalise, setup.task)
    targets = torch.as_tensor(_resident_targets(setup, train_set, resident)).to(device)
    valid = None
    if valid_set is not None:
        valid = functools.partial(
            batch_aug.ResidentBatches,
            resident.images,
            torch.as_tensor(valid_set.rows).to(device),
            torch.as_tensor(_resident_targets(setup, valid_set, resident)),
            torch.from_numpy(resident.sizes[valid_set.rows]),
            2 * cfg.train.batch_size,
            normalise,
        )
    images, batch = resident.images, cfg.train.batch_size
    return lambda seed: batch_aug.DeviceBatches(images, targets, augment, batch, seed, rows), valid


def _resident_targets(setup: Setup, dataset: ImageDataset, resident: batch_aug.Resident) -> np.ndarray:
    return setup.task.device_targets(dataset.targets, resident.sizes[dataset.rows], setup.image_size)


def optimisation(setup: Setup, parts: Parts, epochs: int, out: FitFiles | None = None) -> engine.Step:
    """The optimiser's state for `epochs` of `parts`' batches: the schedule's length, mixup, EMA,
    and the weight averaging (train.average: a soup's ingredients go to the fit's folder `out`,
    None for a schedule that never reaches them, as the budget's probe)."""
    cfg, task = setup.cfg.train, setup.task
    steps_per_epoch = math.ceil(len(parts.train_batches(cfg.seed)) / cfg.accumulate)
    return engine.Step(
        parts.optimizer,
        parts.device.scaler(),
        cfg,
        steps_per_epoch * epochs,
        mixup=engine.create_mixup(cfg, task.n_outputs, soft_targets=setup.targets.ndim == 2) if task.mixes else None,
        ema=ModelEmaV3(parts.model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay else None,
        average=averaging.for_fit(cfg.average, epochs, out.ingredient if out is not None else None),
        teacher=setup.distiller and setup.distiller.online_teacher(task, parts.device, parts.normalise),
    )


def fit(
    setup: Setup,
    train_rows: np.ndarray,
    valid_rows: np.ndarray | None,
    out: FitFiles,
    epochs: int,
    fingerprint: str,
    name: str,
    on_epoch: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[], None] | None = None,
    stop_after: int | None = None,
    init_from: Path | None = None,
) -> FitResult:
    """Train for `epochs`, resuming from the checkpoint in `out`; `on_epoch` sees each epoch's
    metrics row (tuning reports it to Optuna's pruner, which may stop the fit by raising);
    `on_checkpoint` is called once each epoch's checkpoint is written; `stop_after` stops the
    schedule after that epoch (a head start: its checkpoint resumes the rest); `init_from`: a
    saved model whose weights a fit without a checkpoint starts from (train.final_size).

    Every epoch is validated and scored; the weights saved for prediction are those of the
    epoch train.checkpoint names: the last (the recipe the full fit repeats) or the best."""
    setup = for_rows(setup, train_rows)
    cfg, task = setup.cfg.train, setup.task
    parts = assemble(setup, train_rows, valid_rows)
    device, model, frozen, trained = parts.device, parts.model, parts.frozen, parts.trained
    if init_from is not None:  # before the EMA copies the model
        model.load_state_dict(torch.load(init_from, map_location=device.device, weights_only=True)["state_dict"])
    state = optimisation(setup, parts, epochs, out)
    history, best = _resume(out, model, state, fingerprint)
    keeps_best = cfg.checkpoint == "best" and parts.valid_batches is not None
    for epoch in range(len(history) + 1, (stop_after or epochs) + 1):
        if setup.cfg.model.unfreeze_epoch and epoch >= setup.cfg.model.unfreeze_epoch and frozen.params:
            frozen.unfreeze()
            trained = wrap(model, device, cfg.compile)
        started = time.perf_counter()
        engine.seed_everything(cfg.seed * 1_000_003 + epoch)
        loader = parts.train_batches(cfg.seed * 1_000_003 + epoch)
        row = {"epoch": epoch, **_train_epoch(trained, loader, task, state, device, frozen, f"{name} {epoch}/{epochs}")}
        evaluated = state.ema.module if state.ema is not None else model
        if state.average is not None and state.average.takes(epoch):
            state.average.add(evaluated, epoch)
            if epoch == epochs and state.average.averages_in_fit:
                load_average(evaluated, state.average, parts, cfg.seed * 1_000_003 + epoch)
        improved = False
        if parts.valid_batches is not None:
            row, best, improved = _validate(evaluated, parts, setup, row, best, out)
        else:
            best = {"epoch": epoch, "score": float("nan")}
        row["seconds"] = time.perf_counter() - started
        if (improved and keeps_best) or (epoch == epochs and not keeps_best):
            save_model(evaluated, setup, out.model)
        history.append(row)
        save_checkpoint(out, model, state, history, best, fingerprint)
        if on_checkpoint is not None:
            on_checkpoint()
        print(_summary(name, row, task.metric))
        if on_epoch is not None:
            on_epoch(row)
    last_score = float(history[-1].get(task.metric, float("nan")))
    kept = "best" if keeps_best else "last"
    return FitResult(best["epoch"], best["score"], epochs, last_score, kept, str(out.model), fingerprint)


def load_average(evaluated: torch.nn.Module, average: averaging.Averager, parts: Parts, seed: int) -> None:
    """The averaged weights into the model that is validated and saved, its BatchNorm statistics
    recomputed over an epoch of training batches (frozen norms keep theirs)."""
    average.load_into(evaluated)
    keep = {name for name, module in parts.model.named_modules() if any(module is n for n in parts.frozen.norms)}
    with parts.device.autocast():
        averaging.recompute_norms(evaluated, parts.train_batches(seed), parts.device.images, keep)


def _train_epoch(model, loader, task, state, device, frozen, desc) -> dict:
    """One epoch; under torchrun the loss and speed are those of all ranks together."""
    try:
        row = engine.train_one_epoch(model, loader, task, state, device, frozen, desc)
    except FloatingPointError as exc:
        raise PipelineError(f"{desc}: training diverged ({exc}); lower train.lr") from None
    ranks = distributed.world_size()
    return {**row, "train_loss": distributed.mean(row["train_loss"]), "images_per_s": row["images_per_s"] * ranks}


def validate(model: torch.nn.Module, parts: Parts, setup: Setup, name: str) -> tuple[dict, Raw]:
    """`model` on the validation rows of `parts`, every rank's share gathered: its metrics (with
    valid_loss) and its raw predictions; `name` says which weights in the error of a diverged fit."""
    task = setup.task
    result = engine.evaluate(model, parts.valid_batches(), task, parts.device)
    result["loss"] = distributed.mean(result["loss"], weight=parts.n_valid)
    for key in ("predictions", "targets", "sizes"):
        result[key] = distributed.unshard(result[key])
    if not math.isfinite(result["loss"]):
        raise PipelineError(f"{name}: the validation loss is {result['loss']}: training diverged; lower train.lr")
    metrics = task.metrics(result["predictions"], result["targets"], result["sizes"])
    return {"valid_loss": result["loss"], **metrics}, Raw(task.compact(result["predictions"]), result["sizes"])


def _validate(model, parts: Parts, setup: Setup, row: dict, best: dict | None, out: FitFiles):
    """The epoch's row with its validation metrics, the best epoch so far, and whether this one
    is it. The predictions are kept for the last epoch and for the best."""
    task = setup.task
    metrics, raw = validate(model, parts, setup, f"epoch {row['epoch']}")
    row = {**row, **metrics}
    score = metrics[task.metric]
    sign = 1 if task.higher_is_better else -1
    improved = best is None or sign * score > sign * best["score"]
    if improved:
        best = {"epoch": row["epoch"], "score": score}
    if distributed.is_main():  # every rank holds every row: one writes them
        raw.save(out.valid_predictions("last"))
        if improved:
            raw.save(out.valid_predictions("best"))
    return row, best, improved


def save_model(model: torch.nn.Module, setup: Setup, path: Path) -> None:
    """Weights plus what predict needs to rebuild the model and read its outputs."""
    task = setup.task
    meta = {
        "name": setup.cfg.model.name,
        "num_outputs": task.n_outputs,
        "in_chans": setup.channels,
        "image_size": setup.image_size,
        "dense": task.dense,
        "decoder": setup.cfg.model.decoder,
        **task.meta(),
    }
    _torch_save({"state_dict": model.state_dict(), "meta": meta}, path)


def save_checkpoint(out: FitFiles, model, state: engine.Step, history: list, best: dict, fingerprint: str) -> None:
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "step": state.step,
        "history": history,
        "best": best,
        "fingerprint": fingerprint,
    }
    if state.ema is not None:
        checkpoint["ema"] = state.ema.state_dict()
    if state.average is not None:
        checkpoint["average"] = state.average.state_dict()
    _torch_save(checkpoint, out.checkpoint)
    write_csv(out.metrics, pd.DataFrame(history))


def _torch_save(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a full disk as a RuntimeError
            free = shutil.disk_usage(tmp.parent).free / 2**20
            raise PipelineError(
                f"{path} could not be written ({free:.0f} MiB free on its disk): {str(exc).splitlines()[0]}"
            ) from None


def _resume(out: FitFiles, model, state: engine.Step, fingerprint: str):
    """The history and best so far, restored from the checkpoint when it belongs to this config."""
    path = out.checkpoint
    if not path.exists():
        out.root.mkdir(parents=True, exist_ok=True)
        return [], None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("fingerprint") != fingerprint:
        print(f"{out.root}: the checkpoint belongs to another config; starting again")
        return [], None
    model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scaler.load_state_dict(checkpoint["scaler"])
    state.step = checkpoint["step"]
    if state.ema is not None:
        state.ema.load_state_dict(checkpoint["ema"])
    if state.average is not None:
        state.average.load_state_dict(checkpoint["average"])
    history = checkpoint["history"]
    print(f"{out.root}: resuming after epoch {len(history)}")
    return history, checkpoint["best"]


def _summary(name: str, row: dict, metric: str) -> str:
    parts = [f"{name} epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    if "valid_loss" in row:
        parts += [f"valid_loss {row['valid_loss']:.4f}", f"{metric} {row[metric]:.5f}"]
    parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.0f} img/s", f"waiting for data {row['data_wait']:.0%}"]
    return "  ".join(parts)
