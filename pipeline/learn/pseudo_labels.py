"""train.pseudo_labels: images without a label (the test images, the scraped ones relabelled)
join each fit's training rows with a teacher's predictions as their targets; never its
validation rows. Fold k's come from the teacher's fold-k models (learn.teacher), so no fold
learns its answers through a test image that repeats one of its validation rows."""

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pipeline.config import PseudoLabels
from pipeline.errors import PipelineError
from pipeline.learn.fit_setup import Setup
from pipeline.learn.inference import PredictionsOnTest, weighted_units
from pipeline.learn.loader import ConcatImages
from pipeline.learn.teacher import Teacher
from pipeline.learn.validation import EXTRA_FOLD
from pipeline.paths import Paths


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
            parts.append(weighted_units(setup.cfg, weighted, setup.images, extra))
        return np.concatenate(parts)


def prepare(setup: Setup, folds: pd.DataFrame, paths: Paths) -> Setup:
    """The setup with train.pseudo_labels' pool: the test images appended to its image store
    when they join. Unchanged without train.pseudo_labels."""
    settings = setup.cfg.train.pseudo_labels
    if settings is None:
        return setup
    teacher = Teacher.of("train.pseudo_labels.teacher", settings.teacher, paths, folds)
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
    sizes = setup.images.original_sizes[pool.store_rows[kept]]
    targets = task.joined_targets(setup.targets, task.pseudo_targets(units[kept], soft=settings.soft, sizes=sizes))
    joined = first + _weighted(np.arange(len(kept)), settings.weight, setup.cfg.train.seed)
    labelled = np.setdiff1d(train_rows, pool.relabelled)
    models = pool.teacher.describe(pool.paths, fold)
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
