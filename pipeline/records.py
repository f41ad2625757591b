"""Typed records of what the stages leave behind: one fit's result, the train stage's CV
summary (cv.json), a submission's stated CV and a blend. Each reads and writes its own file."""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from pipeline import tasks
from pipeline.errors import PipelineError
from pipeline.files import sha256_file, write_text

KEPT_EPOCHS = ("best", "last")


class JsonRecord:
    """A dataclass record kept as one JSON object."""

    @classmethod
    def read(cls, path: Path):
        """The record at `path`; None when there is none, or when an older version wrote it (its
        fit is then trained again)."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (FileNotFoundError, TypeError):
            return None

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self)))


@dataclass(frozen=True)
class FitResult(JsonRecord):
    """One fit's scores at its best and its last epoch (NaN without validation rows), and which
    of the two its saved weights are."""

    best_epoch: int
    best_score: float
    last_epoch: int
    last_score: float
    kept: str  # "best" or "last" (train.checkpoint)
    model_path: str
    fingerprint: str

    @property
    def score(self) -> float:
        """The score of the weights kept in model.pt."""
        return self.best_score if self.kept == "best" else self.last_score


@dataclass(frozen=True)
class Soup(JsonRecord):
    """train.average=greedy_soup: the epochs whose weights a fit's model.pt averages, the folds
    whose validation rows chose them, and the soup's score on the fit's own (NaN: the full fit)."""

    epochs: list[int]
    chosen_on: list[int]
    score: float
    fingerprint: str

    def serves(self, chosen_on: list[int], fingerprint: str) -> bool:
        """Whether it is the soup these folds choose for a fit of this config."""
        return self.fingerprint == fingerprint and self.chosen_on == list(chosen_on)


@dataclass(frozen=True)
class Scores:
    """One epoch choice (best or last) over the folds: each fold's score, their mean and spread,
    and the score of all out-of-fold predictions pooled; with the decision rule (Task.decision)
    fitted on all those rows, which the scores never saw: each fold is scored under the rule
    fitted on the other folds."""

    folds: list[float]
    mean: float
    std: float
    oof: float
    decision: dict = field(default_factory=dict)

    @classmethod
    def of(cls, folds: list[float], oof: float, decision: dict | None = None) -> "Scores":
        folds = [float(s) for s in folds]
        mean = math.fsum(folds) / len(folds)
        std = math.sqrt(math.fsum((s - mean) ** 2 for s in folds) / len(folds))
        return cls(folds, mean, std, float(oof), decision or {})


@dataclass(frozen=True)
class CV:
    """cv.json: every fold's score at its best epoch and at its last (the full fit's recipe)."""

    metric: str
    higher_is_better: bool
    kept: str  # the epoch whose weights the fold models keep (train.checkpoint)
    epochs: int  # the schedule every fold and the full fit run
    fold_ids: list[int]
    fold_sizes: list[int]  # validation rows per fold
    best_epochs: list[int]
    best: Scores
    last: Scores
    fingerprint: str = ""
    validation_plan: str = ""  # validation.validation_plan: experiments with equal plans blend
    averaged: str = ""  # what the last epoch's weights are, with train.average (Average.describe)

    @property
    def recipe(self) -> Scores:
        """What the full fit's recipe scores: every fold at its last epoch."""
        return self.last

    @property
    def fold_models(self) -> Scores:
        """What the fold models, as saved, score."""
        return self.best if self.kept == "best" else self.last

    @property
    def score(self) -> float:
        return self.fold_models.mean

    @property
    def std(self) -> float:
        return self.fold_models.std

    def noise(self) -> float:
        """How far apart two estimates may be and still agree: the folds' spread, and at least one
        validation row's worth for a counting metric."""
        resolution = 1.0 / min(self.fold_sizes) if tasks.counts_rows(self.metric) else 0.0
        return max(self.best.std, self.last.std, resolution)

    def gain(self, better: float, worse: float) -> float:
        """How much `better` beats `worse`, positive when it does, in the metric's direction."""
        return better - worse if self.higher_is_better else worse - better

    @property
    def unstable(self) -> bool:
        """The best epochs beat the last by more than the noise: the schedule ends past its best. One
        fold has no spread to measure the noise by, so it never says so."""
        return len(self.fold_ids) > 1 and self.gain(self.best.mean, self.last.mean) > self.noise()

    def describe(self) -> list[str]:
        """Both CVs, which one the fold models keep, and a warning when the schedule ends past its best."""
        best, last = self.best, self.last
        averaged = f" ({self.averaged})" if self.averaged else ""
        lines = [
            f"CV {self.metric} {last.mean:.5f} ± {last.std:.5f} at the last epoch{averaged}, the full fit's recipe "
            f"(out-of-fold {last.oof:.5f}); {best.mean:.5f} ± {best.std:.5f} at the best epochs {self.best_epochs} "
            f"of {self.epochs} (out-of-fold {best.oof:.5f}); the fold models keep the {self.kept} epoch"
        ]
        if self.fold_models.decision:
            how = (
                "the CV is nested: each fold is scored under the decision fitted on the other folds"
                if len(self.fold_ids) > 1
                else "one fold alone: its CV is scored under the task's own decision, none fitted on its rows"
            )
            lines.append(f"decision fitted on every out-of-fold row: {self.fold_models.decision['summary']}; {how}")
        if self.unstable:
            lines.append(
                f"warning: the best epochs beat the last by {self.gain(best.mean, last.mean):.5f}, more than the "
                f"folds' noise {self.noise():.5f}: the schedule ends past its best; a lower train.lr, "
                f"train.ema_decay or more train.epochs help"
            )
        return lines

    def to_json(self) -> dict:
        kept = self.fold_models
        derived = {"score": kept.mean, "std": kept.std, "oof_score": kept.oof, "folds": kept.folds}
        return {**asdict(self), **derived, "unstable": self.unstable}

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "CV":
        if not Path(path).exists():
            raise PipelineError(f"{path} does not exist: run `make train` first")
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in raw.items() if k in known}
            return cls(**{**values, "best": Scores(**raw["best"]), "last": Scores(**raw["last"])})
        except (KeyError, TypeError):
            raise PipelineError(f"{path} was written by an older version: run `make train` again") from None


@dataclass(frozen=True)
class StatedCV:
    """The CV a submission states: that of exactly the models in its file, and how it was made."""

    metric: str
    score: float
    std: float
    method: str
    models: str  # "full", "folds", "both", or "blend-<name>"
    experiment: str  # its name, or a blend's members and weights


def trained_state(cv_json: Path) -> str:
    """What an experiment's training left, as its cv.json states it (config, folds, scores): a
    blend member's, which changes when it trains again."""
    return sha256_file(cv_json)[:16]


@dataclass(frozen=True)
class Blend:
    """runs/<name>/blends/<blend>.yaml: the experiments a blend holds, their weights, and its
    scores: nested CV (weights fitted on the other folds, scored on the held-out one) and the
    in-sample score of the weights it submits with (fitted on every row: optimistic)."""

    name: str
    metric: str
    method: str  # "hill_climb" or "optimise"
    models: str  # each member's models: "folds" or "full"
    space: str  # "probabilities" or "ranks"
    tta: list[str]
    validation_plan: str
    weights: dict[str, float]  # experiment -> weight, summing to 1
    trained: dict[str, str]  # experiment -> its state when blended (blend.member_state)
    member_scores: dict[str, float]  # experiment -> its OOF score
    nested: Scores
    in_sample: float
    features: list[str] = field(default_factory=list)  # method stack: the tabular columns beside the members
    second_level: str = ""  # method stack: the sha256 of its trees' file (Paths.blend_model)

    def describe_members(self) -> str:
        if self.method == "stack":
            return f"stack({' + '.join([*self.weights, *self.features])})"
        return " + ".join(f"{name} {weight:.3f}" for name, weight in self.weights.items())

    def save(self, path: Path) -> None:
        write_text(path, yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "Blend":
        if not Path(path).exists():
            raise PipelineError(f"{path} does not exist: run `make blend` first")
        raw = yaml.safe_load(Path(path).read_text())
        try:
            return cls(**{**raw, "nested": Scores(**raw["nested"])})
        except (KeyError, TypeError):
            raise PipelineError(f"{path} was written by an older version: run `make blend` again") from None


@dataclass(frozen=True)
class Bundle:
    """bundle.yaml of a packaged submission: each experiment's part (its weight, blend.space and
    its models' folders, relative to the dataset, with their weights) and the CV it states."""

    parts: list[dict]  # {"weight": w, "space": s, "models": [{"folder": "models/<exp>/fold0", "weight": w}]}
    stated: StatedCV
    labels: list[str]  # the classes, or the keypoint columns, in the models' output order
    decision: dict = field(default_factory=dict)  # Task.decision, fitted out of fold
    second_level: str | None = None  # a stacked blend's trees, relative to the dataset
    features: list[str] = field(default_factory=list)  # the tabular columns they read

    def save(self, path: Path) -> None:
        write_text(path, yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "Bundle":
        if not Path(path).exists():
            raise PipelineError(f"{path} does not exist: the dataset was not made by `make package`")
        raw = yaml.safe_load(Path(path).read_text())
        try:
            stated = StatedCV(**raw["stated"])
            return cls(raw["parts"], stated, raw["labels"], raw["decision"], raw["second_level"], raw["features"])
        except (KeyError, TypeError):
            raise PipelineError(f"{path} was written by another version: run `make package` again") from None
