"""train.distill: each fit's training rows learn from their labels and, with weight alpha, from a
teacher's predictions on the same images (Hinton's knowledge distillation: for classes and
labels the teacher softened at the temperature, the student's outputs softened alike, that term
weighted by T^2, tasks.pseudo_targets.SoftenedTeacher; for values and points a target blended
of the two); the validation rows keep their labels, so the student's CV is its own. Fold k learns
from the teacher's fold-k models (learn.teacher), which trained on exactly fold k's training
rows: the student reads nothing of fold k's answers through them.

The usual student is a faster backbone than the teacher blend: `make package` states each
candidate's inference time, and where a blend does not fit package.time_limit, its distilled
student may."""

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pipeline.config import Distill
from pipeline.learn.fit_setup import Setup
from pipeline.learn.inference import weighted_units
from pipeline.learn.teacher import Teacher
from pipeline.paths import Paths


@dataclass(frozen=True)
class Distiller:
    settings: Distill
    teacher: Teacher
    paths: Paths


def prepare(setup: Setup, folds: pd.DataFrame, paths: Paths) -> Setup:
    """The setup with train.distill's teacher; unchanged without train.distill."""
    settings = setup.cfg.train.distill
    if settings is None:
        return setup
    setup.task.check_distill()
    teacher = Teacher.of("train.distill.teacher", settings.teacher, paths, folds)
    return replace(setup, distiller=Distiller(settings, teacher, paths))


def join(setup: Setup, train_rows: np.ndarray, fold: int | None, name: str) -> Setup:
    """This fit's setup with its training rows' targets distilled from the teacher for `fold`
    (None: the full fit)."""
    distiller = setup.distiller
    if distiller is None:
        return setup
    settings, task = distiller.settings, setup.task
    fits = distiller.teacher.fits(distiller.paths, fold)
    units = weighted_units(setup.cfg, fits, setup.images, setup.rows[train_rows])
    targets = task.untaught_targets(setup.targets)
    targets[train_rows] = task.distilled_targets(
        setup.targets[train_rows], units, alpha=settings.alpha, temperature=settings.temperature
    )
    print(
        f"{name}: {len(train_rows)} training rows learn from {distiller.teacher.describe(distiller.paths, fold)}"
        f" (alpha {settings.alpha}, temperature {settings.temperature})"
    )
    return replace(setup, targets=targets)
