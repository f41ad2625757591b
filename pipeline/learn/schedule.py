"""A time budget's plan as it is kept (budget.json): the speeds measured, the fits, the schedule
every fit trains on, and the arithmetic of a fit's seconds; and how the plan's times are said."""

import dataclasses
import json
import math
import time
from dataclasses import dataclass

from pipeline import config as C
from pipeline.files import write_text

FILL = 0.95  # of the time left, for what the pace cannot leave for later: the estimate's error stays inside


@dataclass(frozen=True)
class Speed:
    """What one probe measured at one model input side, in seconds."""

    side: int
    frozen_s: float  # per training image, the fine-tune's stages frozen
    unfrozen_s: float  # per training image, everything training
    valid_s: float  # per validation image
    start_s: float  # once a fit: its model, weights and loaders, its first steps' warm-up
    epoch_s: float  # once an epoch: its loaders' start and its checkpoint

    def at(self, side: int, exponent: float = 2.0) -> "Speed":
        """An estimate at another side: the per-image work grows as side ** exponent (2: with
        the pixels)."""
        growth = (side / self.side) ** exponent
        per_image = {k: getattr(self, k) * growth for k in ("frozen_s", "unfrozen_s", "valid_s")}
        return dataclasses.replace(self, side=side, **per_image)

    def fastest(self, other: "Speed") -> "Speed":
        """Each time the less of the two: what a probe measures is the step's time plus whatever
        else the machine did meanwhile."""
        times = {f.name: min(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in times.items() if k != "side"})

    def exponent_to(self, other: "Speed") -> float:
        """How the training time per image grew from this side to `other`'s: side ** exponent."""
        return math.log(other.unfrozen_s / self.unfrozen_s) / math.log(other.side / self.side)

    def describe(self) -> str:
        rates = f"training {1 / self.unfrozen_s:.0f} img/s"
        if self.frozen_s != self.unfrozen_s:
            rates += f" ({1 / self.frozen_s:.0f} with the backbone frozen)"
        return (
            f"at {self.side} px: {rates}, validating {1 / self.valid_s:.0f} img/s; "
            f"once a fit {self.start_s:.1f} s, once an epoch {self.epoch_s:.1f} s"
        )


@dataclass(frozen=True)
class Fit:
    fold: int | None  # None: the full fit
    train_rows: int
    valid_rows: int

    @property
    def name(self) -> str:
        return "full" if self.fold is None else f"fold {self.fold}"


@dataclass(frozen=True)
class HeadStart:
    """The first `epochs` of a fold left for a later run, trained last in the time the plan leaves."""

    fold: int
    epochs: int


@dataclass(frozen=True)
class Schedule:
    side: int
    epochs: int
    folds: tuple[int, ...]
    full_fit: bool
    head_start: HeadStart | None = None

    @classmethod
    def from_json(cls, raw: dict) -> "Schedule":
        head_start = raw.get("head_start") and HeadStart(**raw["head_start"])
        return cls(**{**raw, "folds": tuple(raw["folds"]), "head_start": head_start})

    def describe(self, all_folds: int, unfrozen_from: int | None = None) -> str:
        if len(self.folds) < all_folds:
            fits = f"{len(self.folds)} of {all_folds} folds"
        else:
            fits = f"{all_folds} folds" if all_folds > 1 else f"fold {self.folds[0]}"
        epochs = f"{self.epochs} epoch{'s' if self.epochs > 1 else ''}"
        said = f"{fits}{' and the full fit' if self.full_fit else ''}, {epochs} at {self.side} px"
        if unfrozen_from:
            said += f", the backbone unfrozen from epoch {unfrozen_from}"
        if self.head_start is not None:
            first = f"{self.head_start.epochs} epochs" if self.head_start.epochs > 1 else "epoch"
            said += f", then the first {first} of fold {self.head_start.fold}, a head start for a later run"
        return said


@dataclass(frozen=True)
class Plan:
    """What budget.json keeps."""

    key: str
    budget_s: float
    started: float  # time.time() when the probe began
    schedule: Schedule
    planned: dict[str, float]  # each fit's seconds
    speeds: list[Speed]
    said: list[str]

    @property
    def deadline(self) -> float:
        return self.started + self.budget_s

    def save(self, path) -> None:
        write_text(path, json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def read(cls, path, key: str) -> "Plan | None":
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if raw.get("key") != key or "schedule" not in raw:  # another config, or an older budget.json
            return None
        speeds = [Speed(**s) for s in raw["speeds"]]
        return cls(**{**raw, "schedule": Schedule.from_json(raw["schedule"]), "speeds": speeds})


def longest_head_start(
    fit: Fit, epochs: int, speed: Speed, model: C.Model, room: float
) -> tuple[HeadStart, float] | None:
    """The most epochs of the fold `fit`, fewer than the schedule's `epochs`, that fit in `room`
    seconds, and their seconds; None when not one does."""
    fitting = [(e, fit_seconds(speed, fit, e, model)) for e in range(1, epochs)]
    fitting = [(e, seconds) for e, seconds in fitting if seconds <= room]
    return (HeadStart(fit.fold, fitting[-1][0]), fitting[-1][1]) if fitting else None


def fit_seconds(
    speed: Speed,
    fit: Fit,
    epochs: int,
    model: C.Model,
    final: C.FinalSize | None = None,
    average: C.Average | None = None,
) -> float:
    """A fit's seconds at `speed`, with its weight averaging's; with train.final_size, its last
    stage's too, everything training at the larger side (its speed grown with the pixels)."""
    frozen = frozen_epochs(model, epochs)
    training = fit.train_rows * (frozen * speed.frozen_s + (epochs - frozen) * speed.unfrozen_s)
    seconds = speed.start_s + training + epochs * (fit.valid_rows * speed.valid_s + speed.epoch_s)
    seconds += averaging_seconds(speed, fit, average)
    if final is None:
        return seconds
    larger = speed.at(final.image_size)
    per_epoch = fit.train_rows * larger.unfrozen_s + fit.valid_rows * larger.valid_s + larger.epoch_s
    return seconds + larger.start_s + final.epochs * per_epoch


def averaging_seconds(speed: Speed, fit: Fit, average: C.Average | None) -> float:
    """What train.average adds to a fit: a pass over its training rows that recomputes the
    BatchNorm statistics (forward only, timed as validating); with greedy_soup up to k soups
    where a fold's is chosen (each a model built, that pass and its validation rows), one for the
    full fit."""
    if average is None:
        return 0.0
    if not average.across_folds:
        return fit.train_rows * speed.valid_s
    soups = 1 if fit.fold is None else average.k
    return soups * (speed.start_s + (fit.train_rows + fit.valid_rows) * speed.valid_s)


def frozen_epochs(model: C.Model, epochs: int) -> int:
    """The epochs that train with the fine-tune's stages frozen."""
    if not (model.freeze_depth or model.freeze_blocks):
        return 0
    return epochs if model.unfreeze_epoch is None else min(epochs, model.unfreeze_epoch - 1)


def later_run(schedule: Schedule, left: list[int], resumed: int | None, full_fit: bool = False) -> str:
    """How to train the folds `left`, and the full fit with `full_fit`, for later: the same
    schedule without the budget; `resumed`: the fold given a head start, if one is."""
    same = f"train.time_budget=null train.epochs={schedule.epochs} model.image_size={schedule.side}"
    named = [f"fold {left[0]}" if len(left) == 1 else f"folds {', '.join(map(str, left))}"] if left else []
    named += [fit_named("full")] if full_fit else []
    resuming = "" if resumed is None else f" and resumes fold {resumed}"
    return (
        f"  {' and '.join(named)} {'is' if len(left) + full_fit == 1 else 'are'} left for a later run on the same "
        f'schedule, which keeps the folds trained now{resuming}: make train ARGS="{same}"'
    )


def fit_named(name: str) -> str:
    return "the full fit" if name == "full" else name


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if abs(seconds) < 90 else f"{seconds / 60:.1f} min"


def clock(timestamp: float) -> str:
    return time.strftime("%H:%M", time.localtime(timestamp))
