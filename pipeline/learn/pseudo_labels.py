"""train.pseudo_labels: images without a label (the test images, the scraped ones relabelled)
join each fit's training rows with a teacher's predictions as their targets; never its
validation rows.

Fold k's pseudo-labels come from the teacher's fold-k models alone, which trained on fold k's
training rows and never saw its validation rows: whatever the teacher memorised, fold k's
student can learn nothing through them about the rows it is scored on, even where a test image
repeats one of those rows. The full fit, scored on nothing, learns from the teacher's full fits
(its fold models averaged, where it has none). So the student's CV stays as honest as the
teacher's: a teacher trained on other folds is refused.

A teacher is an experiment, or a blend of experiments (weighted as `make blend` weighted them,
in probabilities; a stacked blend's trees are not a model of fold k, and are refused)."""

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pipeline.config import PseudoLabels
from pipeline.errors import PipelineError
from pipeline.learn.device import Device
from pipeline.learn.fit_setup import Setup
from pipeline.learn.inference import PredictionsOnTest, predict_rows
from pipeline.learn.loader import ConcatImages
from pipeline.learn.validation import EXTRA_FOLD, validation_plan
from pipeline.paths import FitFiles, Paths
from pipeline.records import CV, Blend, trained_state


@dataclass(frozen=True)
class Teacher:
    """The experiments whose models label the pool, with their weights (one, at 1.0, unless a blend)."""

    name: str
    members: dict[str, float]
    states: dict[str, str]  # experiment -> records.trained_state: a teacher trained again retrains the student

    @classmethod
    def of(cls, settings: PseudoLabels, paths: Paths, folds: pd.DataFrame) -> "Teacher":
        name, plan = settings.teacher, validation_plan(folds)
        if name == paths.experiment_name:
            raise PipelineError(f"train.pseudo_labels.teacher={name} is this experiment: a teacher is trained before")
        if paths.blend(name).exists():
            blend = Blend.load(paths.blend(name))
            if blend.method == "stack":
                raise PipelineError(
                    f"train.pseudo_labels.teacher={name} is a stacked blend: its trees are fitted on every fold's "
                    "rows, so no part of it is fold k's alone; name a weighted blend or an experiment"
                )
            members, plans = blend.weights, {name: blend.validation_plan}
        else:
            members, plans = {name: 1.0}, {}
        for member in members:
            cv_json = paths.of_experiment(member).cv_json
            if not cv_json.exists():
                raise PipelineError(
                    f"train.pseudo_labels.teacher={name}: experiment {member} has not trained ({cv_json} does not "
                    "exist); train it first, or name a blend in runs/<name>/blends/"
                )
            plans[member] = CV.load(cv_json).validation_plan
        other = next((m for m, p in plans.items() if p != plan), None)
        if other is not None:
            raise PipelineError(
                f"train.pseudo_labels.teacher={name}: {other} was trained on other folds than {paths.folds_csv}; "
                "fold k's pseudo-labels must come from models that never saw fold k's validation rows"
            )
        states = {m: trained_state(paths.of_experiment(m).cv_json) for m in members}
        return cls(name, dict(members), states)

    def fits(self, paths: Paths, fold: int | None) -> list[tuple[FitFiles, float]]:
        """The models that label the pool for fold `fold` (None: the full fit), with weights summing to 1."""
        chosen = []
        for member, weight in self.members.items():
            fits = _member_fits(paths.of_experiment(member), fold)
            chosen += [(fit, weight / len(fits)) for fit in fits]
        missing = next((fit for fit, _ in chosen if not fit.model.exists()), None)
        if missing is not None:
            raise PipelineError(
                f"train.pseudo_labels.teacher={self.name}: {missing.model} does not exist; fold k's student learns "
                "from the teacher's fold-k model: train the teacher's folds (train.folds) first"
            )
        return chosen


def _member_fits(member: Paths, fold: int | None) -> list[FitFiles]:
    if fold is not None:
        return [member.fold(fold)]
    if member.full.model.exists():
        return [member.full]
    return [member.fold(k) for k in CV.load(member.cv_json).fold_ids]


@dataclass(frozen=True)
class Pool:
    """The unlabelled images, as rows of the setup's image store (the test images appended to it)."""

    settings: PseudoLabels
    teacher: Teacher
    store_rows: np.ndarray  # the pool's images in Setup.images: the test images, then the extra ones
    n_test: int  # the first n_test are the test images
    relabelled: np.ndarray  # folds.csv positions of the extra rows the pool relabels: never trained as labelled
    test: PredictionsOnTest | None
    paths: Paths

    @property
    def added_rows(self) -> int:
        """The training rows the pool adds to a fit, at most (before min_confidence)."""
        return round(self.settings.weight * len(self.store_rows)) - len(self.relabelled)

    def targets(self, setup: Setup, fold: int | None) -> np.ndarray:
        """The teacher's predictions on the pool for this fit, in the competition's units."""
        weighted = self.teacher.fits(self.paths, fold)
        parts = [] if self.test is None else [self.test.blend(weighted)]
        extra = self.store_rows[self.n_test :]
        if len(extra):
            parts.append(_predicted(setup, weighted, extra))
        return np.concatenate(parts)


def _predicted(setup: Setup, weighted: list[tuple[FitFiles, float]], rows: np.ndarray) -> np.ndarray:
    """The weighted models' predictions on `rows` of the setup's images, in the competition's units."""
    device, total = Device.choose(setup.cfg.train), 0.0
    for fit, weight in weighted:
        raw, task = predict_rows(setup.cfg, fit.model, setup.images, rows, device)
        total = total + weight * task.to_units(raw.predictions, raw.sizes)
    return total


def prepare(setup: Setup, folds: pd.DataFrame, paths: Paths) -> Setup:
    """The setup with train.pseudo_labels' pool: the test images appended to its image store
    when they join. Unchanged without train.pseudo_labels."""
    settings = setup.cfg.train.pseudo_labels
    if settings is None:
        return setup
    teacher = Teacher.of(settings, paths, folds)
    setup.task.check_pseudo_labels(settings.min_confidence, soft=settings.soft)
    extra = np.flatnonzero(folds["fold"].to_numpy() == EXTRA_FOLD) if settings.rows != "test" else np.array([], int)
    if settings.rows == "extra" and not len(extra):
        raise PipelineError(
            f"train.pseudo_labels.rows=extra: {paths.folds_csv} holds no scraped rows; run `make scrape folds`, or "
            "set rows=test"
        )
    test, images, test_rows = None, setup.images, np.array([], int)
    if settings.rows != "extra":
        test = PredictionsOnTest(setup.cfg, paths)
        images = ConcatImages([setup.images, test.images])
        test_rows = len(setup.images) + np.arange(len(test.images))
    pool = Pool(settings, teacher, np.concatenate([test_rows, setup.rows[extra]]), len(test_rows), extra, test, paths)
    return replace(setup, images=images, pool=pool, resident={})


def fingerprint(setup: Setup, base: str) -> str:
    """The fits' fingerprint, tied to the teacher's training as well: a teacher trained again
    trains the student again."""
    if setup.pool is None:
        return base
    states = ",".join(f"{m}:{s}" for m, s in sorted(setup.pool.teacher.states.items()))
    return hashlib.sha256(f"{base} {states}".encode()).hexdigest()[:12]


def join(setup: Setup, train_rows: np.ndarray, fold: int | None, name: str) -> tuple[Setup, np.ndarray]:
    """This fit's setup and training rows with the pool joined under its teacher's labels for
    `fold` (None: the full fit); the validation rows stay as they are."""
    pool = setup.pool
    if pool is None:
        return setup, train_rows
    settings, task = pool.settings, setup.task
    units = pool.targets(setup, fold)
    kept = np.flatnonzero(task.pseudo_confidence(units) >= settings.min_confidence)
    first = len(setup.rows)
    rows = np.concatenate([setup.rows, pool.store_rows[kept]])
    targets = task.joined_targets(setup.targets, task.pseudo_targets(units[kept], soft=settings.soft))
    joined = first + _weighted(np.arange(len(kept)), settings.weight, setup.cfg.train.seed)
    labelled = np.setdiff1d(train_rows, pool.relabelled)
    models = " + ".join(f"{fit.root.parent.name}/{fit.root.name}" for fit, _ in pool.teacher.fits(pool.paths, fold))
    print(
        f"{name}: {len(kept)} of {len(units)} unlabelled images join training labelled by {models}"
        f" ({'soft' if settings.soft else 'hard'}, min_confidence {settings.min_confidence}, weight {settings.weight})"
    )
    return replace(setup, rows=rows, targets=targets), np.concatenate([labelled, joined])


def _weighted(positions: np.ndarray, weight: float, seed: int) -> np.ndarray:
    """Each position `weight` times: whole repeats, then a seeded share of them for the fraction."""
    whole, fraction = divmod(weight, 1.0)
    share = np.random.default_rng(seed).permutation(positions)[: round(fraction * len(positions))]
    return np.concatenate([np.tile(positions, int(whole)), np.sort(share)])
