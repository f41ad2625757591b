"""train.time_budget: the folds and the full fit planned into a wall-clock budget, as a
competitor plans them.

Measure. A probe builds fold 0's model and batches, as a fit does, and times steady-state steps
after a warm-up: training with the fine-tune's stages frozen, training with everything, and
validating, each for a few steps or 1% of the budget, whichever ends first (at least 3 steps).
It starts at the smallest side the plan may trade down to, the cheapest to measure, and goes up
to the side the estimates choose, measuring each before the plan keeps it: a side the estimates
rule out is never measured (on 2 cores a probe at 256 px took two minutes of a 5-minute budget,
to learn that it was ten times too slow). The side the plan keeps is measured twice, keeping the
faster of each time (a process's first probe can run slow past its warm-up, and a probe of
seconds catches whatever else the machine does). The one-time costs are measured apart: a fit's
start (the model, its weights and loaders, its first steps' warm-up) and an epoch's (its
loaders' start and its checkpoint).

Plan. The epochs are the most that fit, between a floor (two epochs past the unfreeze, and half
the optimizer steps the data asks for: defaults.epoch_bounds) and a ceiling (train.epochs when
the config sets it, else the preset's most: a roomy budget is used). When even the floor does
not fit, the plan trades what the config left to the defaults, in this order: a smaller image
side (down to 96 px for a pretrained model), fewer folds (the others left for a later run, the
CV stated on the folds trained), then no full fit (the fold models are submitted). A plan of
several folds fills the time left, since the pace can leave its last folds for later when the
fits run late; a plan of one fold leaves 5% for the estimate's error.

Keep. The plan, with what it measured, goes to runs/<name>/<experiment>/budget.json: a re-run of
the same config trains the same schedule, keeps its finished folds and has a budget of its own.
The schedule never changes between folds, which would make their scores incomparable.

Pace. After each fit the train stage compares its time with the plan's and says so. Before each
fold after the first it asks whether that fold and the full fit still end inside the budget at
the pace so far; when not, that fold and those after it are left for a later run. Epochs and
folds are whole, so a plan can end well short of its budget: the time left at the end gives the
first fold left for later a head start, its first epochs on the same schedule, checkpointed for
the later run to resume.
"""

import dataclasses
import hashlib
import itertools
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline import config as C
from pipeline.learn import defaults, engine, validation
from pipeline.learn.device import Device
from pipeline.learn.fit import assemble, optimisation, save_checkpoint, wrap
from pipeline.learn.fit_setup import Setup
from pipeline.learn.pace import Pace
from pipeline.learn.schedule import (
    FILL,
    Fit,
    Plan,
    Schedule,
    Speed,
    clock,
    duration,
    fit_seconds,
    later_run,
    longest_head_start,
)
from pipeline.learn.validation import validation_rows
from pipeline.paths import Paths

WARMUP_STEPS, TIMED_STEPS, TIMED_VALID_BATCHES = 2, 6, 3
FEWEST_TIMED_STEPS, PROBE_SHARE = 3, 0.01  # a probe's kind of step stops past this share of the budget
AIM = 0.8  # of the budget: a plan that uses less says why
SIDE_STEP = 32  # trade the side in steps the backbones' strides divide


def fit_into(
    setup: Setup, folds: pd.DataFrame, fold_ids: list[int], paths: Paths
) -> tuple[Setup, list[int], "Pace | None"]:
    """`setup` and the fold ids the plan for train.time_budget trains, and its pace keeper;
    unchanged, with no pace keeper, without a budget."""
    cfg = setup.cfg
    if cfg.train.time_budget is None:
        return setup, fold_ids, None
    fingerprint = validation.fingerprint(cfg, paths.folds_csv)
    asked = f"{fingerprint}time_budget {cfg.train.time_budget} folds {fold_ids} {cfg.train.full_fit}"
    key = hashlib.sha256(asked.encode()).hexdigest()[:16]
    kept = Plan.read(paths.budget_json, key)
    if kept is None:
        kept = make_plan(setup, folds, fold_ids, paths, key)
        kept.save(paths.budget_json)
        deadline = kept.deadline
    else:
        deadline = time.time() + kept.budget_s
        print(
            f"time budget {cfg.train.time_budget}: the plan made at {clock(kept.started)} (budget.json), kept; "
            f"this run's budget ends about {clock(deadline)}"
        )
    print("\n".join(kept.said), flush=True)
    pace = Pace(kept, deadline, fits(folds, fold_ids, full_fit=False, joined=joined_rows(setup)), cfg.model)
    return apply(setup, kept.schedule, fold_ids), list(kept.schedule.folds), pace


def apply(setup: Setup, schedule: Schedule, fold_ids: list[int]) -> Setup:
    """`setup` on the schedule: its epochs, side and fits."""
    overrides = {
        "train.epochs": schedule.epochs,
        "model.image_size": schedule.side,
        "train.full_fit": schedule.full_fit,
    }
    if list(schedule.folds) != fold_ids:
        overrides["train.folds"] = list(schedule.folds)
    cfg = C.with_overrides(setup.cfg, overrides, f"train.time_budget={setup.cfg.train.time_budget}")
    return dataclasses.replace(setup, cfg=cfg, image_size=schedule.side)


def _at_side(setup: Setup, side: int) -> Setup:
    cfg = C.with_overrides(setup.cfg, {"model.image_size": side}, f"timing at {side} px")
    return dataclasses.replace(setup, cfg=cfg, image_size=side)


# --- the plan -----------------------------------------------------------------------------------


def make_plan(setup: Setup, folds: pd.DataFrame, fold_ids: list[int], paths: Paths, key: str) -> Plan:
    cfg = setup.cfg
    budget_s, started = C.seconds(cfg.train.time_budget), time.time()
    fold_rows = len(folds) - len(validation_rows(folds, fold_ids[0]))
    floor, ceiling = defaults.epoch_bounds(cfg, fold_rows, epochs_given="train.epochs" in setup.given)
    speeds, measured_twice = {}, set()
    side = min(option.side for option in arrangements(setup, fold_ids))  # then up, as far as the estimates allow
    while side not in measured_twice:  # the side kept is measured twice (see measure())
        speed = measure(setup if side == setup.image_size else _at_side(setup, side), folds, fold_ids[0], paths)
        if side in speeds:
            speed = speeds[side].fastest(speed)
            measured_twice.add(side)
        speeds[side] = speed
        left = budget_s - (time.time() - started)
        choice, traded = choose(setup, folds, fold_ids, speeds, (floor, ceiling), left)
        side = choice.side
    speed, chosen = speeds[choice.side], fits(folds, choice.folds, choice.full_fit, joined=joined_rows(setup))
    final, average = cfg.train.final_size, cfg.train.average
    planned = {f.name: fit_seconds(speed, f, choice.epochs, cfg.model, final, average) for f in chosen}
    one_more = sum(fit_seconds(speed, f, choice.epochs + 1, cfg.model, final, average) for f in chosen)
    main_schedule = sum(fit_seconds(speed, f, choice.epochs, cfg.model, average=average) for f in chosen)
    left_over = [k for k in fold_ids if k not in choice.folds]
    room = FILL * left - sum(planned.values())
    next_fit = fits(folds, left_over[:1], full_fit=False, joined=joined_rows(setup))
    if next_fit and (head := longest_head_start(next_fit[0], choice.epochs, speed, cfg.model, room)) is not None:
        choice, planned[f"fold {head[0].fold}"] = dataclasses.replace(choice, head_start=head[0]), head[1]
    said = [
        f"time budget {cfg.train.time_budget}: measured " + "; ".join(s.describe() for s in speeds.values()),
        *traded,
        _plan_line(
            cfg, choice, len(fold_ids), (sum(planned.values()), one_more, main_schedule), started, (floor, ceiling)
        ),
    ]
    if left_over:
        said.append(later_run(choice, left_over, resumed=choice.head_start and choice.head_start.fold))
    return Plan(key, budget_s, started, choice, planned, list(speeds.values()), said)


@dataclass(frozen=True)
class Arrangement:
    """Which fits run at which side; the epochs come after."""

    side: int
    folds: tuple[int, ...]
    full_fit: bool
    trade: str  # what was traded to come to it; "" for the config's own

    def seconds(self, epochs: int, folds: pd.DataFrame, speed: Speed, setup: Setup) -> float:
        model, train = setup.cfg.model, setup.cfg.train
        made = fits(folds, self.folds, self.full_fit, joined=joined_rows(setup))
        return sum(fit_seconds(speed, f, epochs, model, train.final_size, train.average) for f in made)


def choose(
    setup: Setup, folds: pd.DataFrame, fold_ids: list[int], speeds: dict, bounds: tuple[int, int], left: float
) -> tuple[Schedule, list[str]]:
    """The first arrangement, in trade order, whose floor of epochs fits in `left` seconds (the
    last one when none does), with the most epochs that fit; and what it traded, said."""
    (floor, ceiling), said = bounds, []
    options = list(arrangements(setup, fold_ids))
    for n, option in enumerate(options):
        speed, room = estimate(speeds, option.side), fill(option.folds) * left
        at_floor = option.seconds(floor, folds, speed, setup)
        if at_floor <= room or n == len(options) - 1:
            fitting = [e for e in range(floor, ceiling + 1) if option.seconds(e, folds, speed, setup) <= room]
            if not fitting:
                said.append(
                    f"  even this takes {duration(at_floor)} at the floor of {floor} epochs, more than the "
                    f"{duration(max(left, 0))} left: it runs over the budget"
                )
            return Schedule(option.side, max(fitting, default=floor), option.folds, option.full_fit), said
        arranged = Schedule(option.side, floor, option.folds, option.full_fit).describe(len(fold_ids))
        said.append(
            f"  {arranged} (the floor) take {duration(at_floor)}, more than the {duration(max(left, 0))} "
            f"left: trading for {options[n + 1].trade}"
        )
    raise AssertionError("unreachable: the last arrangement is always taken")


def arrangements(setup: Setup, fold_ids: list[int]) -> Iterator[Arrangement]:
    """In the order a budget trades: the config's own, then smaller sides, fewer folds, no full
    fit; only what the config left to the defaults is traded."""
    cfg, side, ids, full_fit = setup.cfg, setup.image_size, tuple(fold_ids), setup.cfg.train.full_fit
    yield Arrangement(side, ids, full_fit, "")
    if "model.image_size" not in setup.given:
        sides = list(range((side - 1) // SIDE_STEP * SIDE_STEP, defaults.smallest_side(cfg) - 1, -SIDE_STEP))
        for smaller in sides:
            yield Arrangement(smaller, ids, full_fit, f"a smaller image side, model.image_size {side} -> {smaller}")
        side = sides[-1] if sides else side
    if "train.folds" not in setup.given:
        for n in range(len(ids) - 1, 0, -1):
            trade = f"fewer folds, {n} of {len(fold_ids)} (the others left for a later run)"
            yield Arrangement(side, ids[:n], full_fit, trade)
        ids = ids[:1]
    if "train.full_fit" not in setup.given and full_fit:
        yield Arrangement(side, ids, False, "no full fit (the fold models are submitted)")


def fill(fold_ids) -> float:
    """The share of the time left a plan of these folds may fill: all of it when the pace can leave
    a fold for later, should the fits run late."""
    return 1.0 if len(fold_ids) > 1 else FILL


def fits(folds: pd.DataFrame, fold_ids, full_fit: bool, joined: int = 0) -> list[Fit]:
    """The fits a schedule trains, with their rows: a fold trains on the rows it does not
    validate on (scraped extras too) and the `joined` ones; the full fit on every row."""
    made = []
    for k in fold_ids:
        valid = len(validation_rows(folds, k))
        made.append(Fit(int(k), len(folds) - valid + joined, valid))
    return made + ([Fit(None, len(folds) + joined, 0)] if full_fit else [])


def joined_rows(setup: Setup) -> int:
    """The training rows train.pseudo_labels adds to every fit, at most (learn.pseudo_labels.Pool)."""
    return 0 if setup.pool is None else setup.pool.added_rows


def estimate(speeds: dict[int, Speed], side: int) -> Speed:
    """The speed at `side`: as measured there, else from the nearest measurement, grown as the
    two nearest measurements grew (with the pixels, when there is one)."""
    if side in speeds:
        return speeds[side]
    nearest = sorted(speeds, key=lambda s: abs(s - side))
    if len(nearest) == 1:
        return speeds[nearest[0]].at(side)
    return speeds[nearest[0]].at(side, speeds[nearest[0]].exponent_to(speeds[nearest[1]]))


def _plan_line(
    cfg: C.Config,
    schedule: Schedule,
    all_folds: int,
    seconds: tuple[float, float, float],
    started: float,
    bounds: tuple[int, int],
) -> str:
    """`seconds`: the schedule's, with one epoch more, and its main schedule's alone."""
    (floor, ceiling), (seconds, one_more, main_schedule), probe = bounds, seconds, time.time() - started
    share = (probe + seconds) / C.seconds(cfg.train.time_budget)
    asked = cfg.train.epochs
    if schedule.epochs < asked:
        why = f"train.epochs {asked} lowered to fit"
    elif schedule.epochs > asked:
        why = f"train.epochs {asked} raised to use the budget"
    else:
        why = f"the {asked} epochs asked for"
    if schedule.epochs == ceiling and share < AIM:
        why += f"; {ceiling} is the most it plans"
    elif share < AIM:  # epochs and folds are whole: the next step up can be a large one
        past = f"past {fill(schedule.folds):.0%} of the time left"
        why += f"; {schedule.epochs + 1} would take {duration(one_more)}, {past}"
    final, average, then = cfg.train.final_size, cfg.train.average, ""
    if average is not None:
        then += f", {average.describe(folds=len(schedule.folds))}"
    if final is not None:
        last_stage = duration(seconds - main_schedule)
        then += f", then {final.epochs} at {final.image_size} px (train.final_size, {last_stage} of the training)"
    return (
        f"plan: {schedule.describe(all_folds, cfg.model.unfreeze_epoch)}{then} ({why}; floor {floor}): "
        f"{duration(seconds)} of training after {duration(probe)} of timing, "
        f"ending about {clock(time.time() + seconds)}, {share:.0%} of the budget"
    )


# --- the probe ----------------------------------------------------------------------------------


class Stopwatch:
    """The first `warmup + steps` of `batches`; times the last `steps` of them (the device
    synchronised at both ends, so that queued GPU work is counted) and the wait for the first.
    The timed steps stop early, after `FEWEST_TIMED_STEPS`, once they have taken `enough_s`."""

    def __init__(self, batches, warmup: int, steps: int, device: Device, enough_s: float = math.inf):
        self.batches, self.device, self.enough_s = batches, device, enough_s
        self.length = min(len(batches), warmup + steps)
        self.warmup = min(warmup, self.length - 1)
        self.first_s = self.warmup_s = self.timed_s = 0.0
        self.timed_images = 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        self._sync()
        began = time.perf_counter()
        for i, batch in enumerate(itertools.islice(iter(self.batches), self.length)):
            if i == 0:
                self.first_s = time.perf_counter() - began
            if i == self.warmup:
                self._sync()
                self.warmup_s, timed_from = time.perf_counter() - began, time.perf_counter()
            if i >= self.warmup:
                self.timed_images += len(batch[0])
            yield batch
            if i + 1 - self.warmup >= FEWEST_TIMED_STEPS and time.perf_counter() - timed_from >= self.enough_s:
                break
        self._sync()
        self.timed_s = time.perf_counter() - timed_from

    @property
    def per_image(self) -> float:
        return self.timed_s / max(self.timed_images, 1)

    def _sync(self) -> None:
        if self.device.device.type == "cuda":
            torch.cuda.synchronize(self.device.device)


def measure(setup: Setup, folds: pd.DataFrame, fold: int, paths: Paths) -> Speed:
    """Time fold `fold`'s fit, as fit() runs it, for a few steps of each kind. The first probe
    of a process can run slow past its warm-up (on 2 cores: frozen steps and validation up to
    2x, training 15%, where the fits after it did not), and a probe of a few seconds on a shared
    machine as much as 22% (58 img/s where the epochs ran 74): the plan measures the side it keeps
    twice and keeps the faster of each time. Each kind of training step stops at 1% of the budget
    (past its first 3 timed): at 256 px on 2 cores six steps of 64 images took a minute."""
    cfg = setup.cfg.train
    if setup.distiller is not None:  # an online teacher's passes are in each training step
        setup = setup.distiller.bound(setup, fold)
    enough_s = PROBE_SHARE * C.seconds(cfg.time_budget)
    valid = validation_rows(folds, fold)
    began = time.perf_counter()
    parts = assemble(setup, np.setdiff1d(np.arange(len(folds)), valid), valid)
    state = optimisation(setup, parts, epochs=10**6)  # a schedule so long that the rate stays at its start
    built = time.perf_counter() - began
    warmups, trained = [], parts.trained
    frozen = None
    if parts.frozen.params:
        frozen = Stopwatch(parts.train_batches(cfg.seed), WARMUP_STEPS, TIMED_STEPS, parts.device, enough_s)
        engine.train_one_epoch(trained, frozen, setup.task, state, parts.device, parts.frozen, "timing, frozen")
        warmups.append(frozen)
        parts.frozen.unfreeze()
        trained = wrap(parts.model, parts.device, cfg.compile)
    unfrozen = Stopwatch(parts.train_batches(cfg.seed + 1), WARMUP_STEPS, TIMED_STEPS, parts.device, enough_s)
    engine.train_one_epoch(trained, unfrozen, setup.task, state, parts.device, None, "timing")
    warmups.append(unfrozen)
    validating = Stopwatch(parts.valid_batches(), 1, TIMED_VALID_BATCHES, parts.device)
    engine.evaluate(parts.model, validating, setup.task, parts.device, desc="timing")
    checkpoint_s = _time_checkpoint(parts, state, paths)
    warm = sum(max(0.0, w.warmup_s - w.per_image * w.warmup * cfg.batch_size) for w in warmups)
    loader_start = max(0.0, validating.first_s - validating.per_image * 2 * cfg.batch_size)
    return Speed(
        side=setup.image_size,
        frozen_s=(frozen or unfrozen).per_image,
        unfrozen_s=unfrozen.per_image,
        valid_s=validating.per_image,
        start_s=built + warm,
        epoch_s=2 * loader_start + checkpoint_s,
    )


def _time_checkpoint(parts, state: engine.Step, paths: Paths) -> float:
    probe = paths.budget_probe
    shutil.rmtree(probe.root, ignore_errors=True)
    probe.root.mkdir(parents=True)
    began = time.perf_counter()
    try:
        save_checkpoint(probe, parts.model, state, [{"epoch": 1}], {"epoch": 1, "score": math.nan}, "timing")
        return time.perf_counter() - began
    finally:
        shutil.rmtree(probe.root, ignore_errors=True)


# --- the pace -----------------------------------------------------------------------------------
