"""train.average=greedy_soup: which of each fit's last k epochs are averaged into the weights it
keeps, chosen once every fold has trained (Wortsman et al., 2022, the greedy soup: the epochs in
order of their own score, each added while the soup's score holds).

Chosen on a fold's own validation rows, a soup would make that fold's CV optimistic, as
checkpoint=best does. So fold k's recipe (which epochs) is chosen on the other folds' rows: each
of them makes the soup of those epochs from its own ingredients and scores it on its own
validation rows, and the recipe is judged by the mean. The folds share one schedule, so an epoch
number names the same point of it in each. Fold k's soup is then scored on its own rows once,
and that is its CV: the score of a recipe chosen without them. The full fit takes the recipe
every trained fold chooses. A fold with no other fold trained takes every epoch offered (the
uniform soup, train.average=last_k's weights), which nothing chose.

A soup of several epochs has its BatchNorm statistics recomputed over an epoch of its fit's
training batches before it is scored or kept, as train.average's are; a soup of one epoch is
that epoch's weights, with the score its fit gave them (metrics.csv).

The ingredients stay in each fit's folder (FitFiles.ingredient): a later run that trains more
folds chooses again from them. Each fit's soup.json says which epochs and which folds chose them.
"""

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pipeline.errors import PipelineError
from pipeline.learn import averaging, distributed, fit
from pipeline.learn.fit_setup import Setup
from pipeline.paths import FitFiles
from pipeline.records import FitResult, Soup

Recipe = tuple[int, ...]  # the epochs a soup averages, in order
Rows = tuple[Setup, np.ndarray, np.ndarray | None]  # a fit's setup as it trained, its training and validation rows


def greedy(offered: list[int], score: Callable[[Recipe], float], higher_is_better: bool) -> Recipe:
    """The greedy soup of `offered` epochs under `score`: the best epoch alone, then each other in
    order of its own score, kept where the soup scores at least as well with it (ties: the later
    epoch first)."""
    sign = 1 if higher_is_better else -1
    order = sorted(reversed(offered), key=lambda epoch: -sign * score((epoch,)))
    soup, best = (order[0],), score((order[0],))
    for epoch in order[1:]:
        tried = tuple(sorted((*soup, epoch)))
        if sign * score(tried) >= sign * best:
            soup, best = tried, score(tried)
    return soup


@dataclass
class Kitchen:
    """Soups made from each fit's ingredients and scored on its validation rows, each once.

    setup       the train stage's, for the schedule and the task
    rows        a fold (None: the full fit) -> its setup as it trained and its rows
    files       a fold (None: the full fit) -> its folder
    fingerprint the config the fits belong to
    """

    setup: Setup
    rows: Callable[[int | None], Rows]
    files: Callable[[int | None], FitFiles]
    fingerprint: str
    tasted: dict = field(default_factory=dict)  # (fold, recipe) -> its score on the fold's validation rows

    def __post_init__(self):
        self.rows = functools.cache(self.rows)  # a fit's joined targets are made once
        self.history = functools.cache(self.history)  # a fold's metrics.csv is read once

    @property
    def offered(self) -> list[int]:
        epochs = self.setup.cfg.train.epochs
        return list(range(averaging.first_averaged(self.setup.cfg.train.average, epochs), epochs + 1))

    def choose(self, on: list[int]) -> Recipe:
        """The recipe the folds `on` choose: the greedy soup under their mean score."""
        if not on:
            return tuple(self.offered)
        mean = lambda recipe: float(np.mean([self.score(j, recipe) for j in on]))  # noqa: E731
        return greedy(self.offered, mean, self.setup.task.higher_is_better)

    def score(self, fold: int, recipe: Recipe) -> float:
        metric = self.setup.task.metric
        if len(recipe) == 1:
            return float(self.history(fold).loc[recipe[0], metric])
        if (fold, recipe) not in self.tasted:
            setup, parts = self.cook(fold, recipe)
            metrics, _ = fit.validate(parts.model, parts, setup, f"fold {fold}'s soup of epochs {list(recipe)}")
            self.tasted[fold, recipe] = float(metrics[metric])
        return self.tasted[fold, recipe]

    def history(self, fold: int) -> pd.DataFrame:
        """The fold's metrics.csv by epoch: what each ingredient scored as its fit validated it."""
        return pd.read_csv(self.files(fold).metrics).set_index("epoch")

    def cook(self, fold: int | None, recipe: Recipe) -> tuple[Setup, fit.Parts]:
        """The fit's model with the soup's weights, its norms recomputed where it averages several."""
        setup, train_rows, valid_rows = self.rows(fold)
        setup = fit.for_rows(setup, train_rows)
        parts = fit.assemble(setup, train_rows, valid_rows)
        mean = averaging.Averager(first=0)
        for epoch in recipe:
            mean.add_weights(_ingredient(self.files(fold), epoch))
        if len(recipe) == 1:
            mean.load_into(parts.model)
        else:
            fit.load_average(parts.model, mean, parts, setup.cfg.train.seed * 1_000_003 + setup.cfg.train.epochs + 1)
        return setup, parts


def _ingredient(out: FitFiles, epoch: int) -> dict:
    path = out.ingredient(epoch)
    if not path.exists():
        raise PipelineError(
            f"{path} is missing: train.average=greedy_soup makes {out.root.name}'s soup from its last epochs' weights; "
            f"delete {out.result} to train it again"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def serve_folds(kitchen: Kitchen, fold_ids: list[int], after: Callable[[int], None]) -> None:
    """Each trained fold's kept weights, validation predictions and result become those of the
    soup the other folds choose (`after(k)` then writes what is made from them: its oof.csv)."""
    for k in fold_ids:
        others, out = [j for j in fold_ids if j != k], kitchen.files(k)
        served = Soup.read(out.soup)
        if served is not None and served.serves(others, kitchen.fingerprint):
            continue
        recipe = kitchen.choose(others)
        setup, parts = kitchen.cook(k, recipe)
        metrics, raw = fit.validate(parts.model, parts, setup, f"fold {k}'s soup of epochs {list(recipe)}")
        score, result = float(metrics[setup.task.metric]), FitResult.read(out.result)
        if distributed.is_main():
            fit.save_model(parts.model, setup, out.model)
            raw.save(out.valid_predictions("last"))
            after(k)
            dataclasses.replace(result, last_score=score).save(out.result)
            Soup(list(recipe), others, score, kitchen.fingerprint).save(out.soup)
        chosen = f"chosen on folds {others}" if others else "every epoch offered, no other fold trained to choose"
        print(
            f"fold {k}: greedy soup of epochs {list(recipe)} ({chosen}): {setup.task.metric} {score:.5f}"
            f" (its last epoch alone {result.last_score:.5f})"
        )
    distributed.barrier()  # rank 0's files are written before any rank reads them


def serve_full(kitchen: Kitchen, fold_ids: list[int]) -> None:
    """The full fit's kept weights become the soup every trained fold chooses."""
    out = kitchen.files(None)
    served = Soup.read(out.soup)
    if FitResult.read(out.result) is None or (served is not None and served.serves(fold_ids, kitchen.fingerprint)):
        return
    recipe = kitchen.choose(fold_ids)
    setup, parts = kitchen.cook(None, recipe)
    if distributed.is_main():
        fit.save_model(parts.model, setup, out.model)
        Soup(list(recipe), list(fold_ids), float("nan"), kitchen.fingerprint).save(out.soup)
    print(f"full fit: greedy soup of epochs {list(recipe)}, chosen on folds {list(fold_ids)}")
    distributed.barrier()
