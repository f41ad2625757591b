"""A teacher: the trained models whose predictions another experiment learns from
(train.pseudo_labels, train.distill), resolved to the models of each fit.

Fold k learns from the teacher's fold-k models alone, which trained on fold k's training rows
and never saw its validation rows: whatever the teacher memorised, fold k's student learns
nothing through it about the rows it is scored on. The full fit, scored on nothing, learns from
the teacher's full fits (its fold models averaged, where it has none). A teacher trained on
other folds would break that, and is refused.

A teacher is an experiment, or a blend of experiments weighted as `make blend` weighted them
(in probabilities; a stacked blend's trees are fitted on every fold's rows, and are refused)."""

import hashlib
from dataclasses import dataclass

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.learn.validation import validation_plan
from pipeline.paths import FitFiles, Paths
from pipeline.records import CV, Blend, trained_state


@dataclass(frozen=True)
class Teacher:
    """The experiments whose models teach, with their weights (one, at 1.0, unless a blend)."""

    key: str  # the config key that names it, for messages
    name: str
    members: dict[str, float]
    states: dict[str, str]  # experiment -> records.trained_state: a teacher trained again retrains the student

    @classmethod
    def of(cls, key: str, name: str, paths: Paths, folds: pd.DataFrame) -> "Teacher":
        """The teacher `name` as `key` names it, checked against the student's folds."""
        said = f"{key}={name}"
        if name == paths.experiment_name:
            raise PipelineError(f"{said} is this experiment: a teacher is trained before")
        if paths.blend(name).exists():
            blend = Blend.load(paths.blend(name))
            if blend.method == "stack":
                raise PipelineError(
                    f"{said} is a stacked blend: its trees are fitted on every fold's rows, so no part of it is "
                    "fold k's alone; name a weighted blend or an experiment"
                )
            members, plans = blend.weights, {name: blend.validation_plan}
        else:
            members, plans = {name: 1.0}, {}
        for member in members:
            cv_json = paths.of_experiment(member).cv_json
            if not cv_json.exists():
                raise PipelineError(
                    f"{said}: experiment {member} has not trained ({cv_json} does not exist); train it first, or "
                    "name a blend in runs/<name>/blends/"
                )
            plans[member] = CV.load(cv_json).validation_plan
        other = next((m for m, p in plans.items() if p != validation_plan(folds)), None)
        if other is not None:
            raise PipelineError(
                f"{said}: {other} was trained on other folds than {paths.folds_csv}; fold k must learn from models "
                "that never saw fold k's validation rows"
            )
        states = {m: trained_state(paths.of_experiment(m).cv_json) for m in members}
        return cls(key, name, dict(members), states)

    def fits(self, paths: Paths, fold: int | None) -> list[tuple[FitFiles, float]]:
        """The models that teach fold `fold` (None: the full fit), with weights summing to 1."""
        chosen = []
        for member, weight in self.members.items():
            fits = _member_fits(paths.of_experiment(member), fold)
            chosen += [(fit, weight / len(fits)) for fit in fits]
        missing = next((fit for fit, _ in chosen if not fit.model.exists()), None)
        if missing is not None:
            raise PipelineError(
                f"{self.key}={self.name}: {missing.model} does not exist; fold k learns from the teacher's fold-k "
                "model: train the teacher's folds (train.folds) first"
            )
        return chosen

    def has_fold(self, paths: Paths, fold: int) -> bool:
        """Whether every member has a model of fold `fold` to teach it."""
        return all(paths.of_experiment(member).fold(fold).model.exists() for member in self.members)

    def describe(self, paths: Paths, fold: int | None) -> str:
        return " + ".join(f"{fit.root.parent.name}/{fit.root.name}" for fit, _ in self.fits(paths, fold))


def _member_fits(member: Paths, fold: int | None) -> list[FitFiles]:
    if fold is not None:
        return [member.fold(fold)]
    if member.full.model.exists():
        return [member.full]
    return [member.fold(k) for k in CV.load(member.cv_json).fold_ids]


def taught_folds(teachers: list[Teacher], paths: Paths, fold_ids: list[int], *, named: bool) -> list[int]:
    """The folds a student trains: those of `fold_ids` that each teacher has a model of. Folds
    train.folds names (`named`) are refused, before any fit, where a teacher lacks one; else the
    student trains the folds its teachers trained, and says so."""
    for teacher in teachers:
        lacking = [k for k in fold_ids if not teacher.has_fold(paths, k)]
        if lacking and (named or len(lacking) == len(fold_ids)):
            raise PipelineError(
                f"{teacher.key}={teacher.name} has no model of fold {lacking[0]}, one of the folds {fold_ids} this "
                "student trains: fold k learns from the teacher's fold-k model; train the teacher's folds first, "
                "or leave them out of train.folds"
            )
        if lacking:
            fold_ids = [k for k in fold_ids if k not in lacking]
            print(f"{teacher.key}={teacher.name} trained folds {fold_ids} alone: the student trains those")
    return fold_ids


def fingerprint(base: str, teachers: list[Teacher]) -> str:
    """A fit's fingerprint tied to its teachers' training as well: a teacher trained again
    trains the student again."""
    if not teachers:
        return base
    states = ",".join(f"{t.key}:{m}:{s}" for t in teachers for m, s in sorted(t.states.items()))
    return hashlib.sha256(f"{base} {states}".encode()).hexdigest()[:12]
