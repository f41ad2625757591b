"""Weight averaging (train.average): the weights a fit keeps are the mean of its last epochs'
weights, with the BatchNorm statistics recomputed for them on the training batches, and that
averaged model is the one validated (the fold's CV) and saved (for predict; the full fit alike).

  last_k   the last k epochs of the schedule as it is (timm's avg_checkpoints)
  swa      the schedule anneals to average.lr x train.lr by the last k epochs and holds it there
           while they are averaged (Izmailov et al., 2018)
  greedy_soup  the last k epochs' weights are kept as ingredients; which of them are averaged is
           chosen once every fold has trained (learn.soup; Wortsman et al., 2022)

What is averaged is what would be validated: the EMA's weights where train.ema_decay is set.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.config_training import Average
from pipeline.files import atomic_path

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def first_averaged(settings: Average, epochs: int) -> int:
    """The first of the last k epochs (all of them when fewer)."""
    return epochs - min(settings.k, epochs) + 1


def for_fit(
    settings: Average | None, epochs: int, ingredient: Callable[[int], Path] | None
) -> "Averager | Ingredients | None":
    """What a fit does with its last epochs' weights: averages them, or keeps them for a soup
    (`ingredient`: an epoch -> where its weights go, FitFiles.ingredient)."""
    if settings is None:
        return None
    if settings.across_folds:
        return Ingredients(ingredient, first_averaged(settings, epochs))
    return Averager(first_averaged(settings, epochs))


class Averager:
    """A running mean of the weights of the epochs from `first` on, kept in the checkpoint so a
    resumed fit goes on averaging where it stopped."""

    averages_in_fit = True  # the fit's last epoch loads the mean

    def __init__(self, first: int):
        self.first = first
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def takes(self, epoch: int) -> bool:
        return epoch >= self.first

    def add(self, model: nn.Module, epoch: int | None = None) -> None:
        """One more epoch's weights, summed on the host (float tensors; counters as the last epoch
        left them), where a checkpoint reloads them whatever the device."""
        self.add_weights(model.state_dict())

    def add_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for name, value in weights.items():
            value = value.detach().cpu()
            if value.is_floating_point() and name in self.sums:
                self.sums[name] += value.float()
            else:
                self.sums[name] = value.to(torch.float32, copy=True) if value.is_floating_point() else value.clone()
        self.count += 1

    def load_into(self, model: nn.Module) -> None:
        """The mean so far into `model`, each tensor in its own dtype."""
        own = model.state_dict()
        model.load_state_dict(
            {n: (s / self.count).to(own[n].dtype) if s.is_floating_point() else s for n, s in self.sums.items()}
        )

    def state_dict(self) -> dict:
        return {"first": self.first, "sums": self.sums, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.first, self.sums, self.count = state["first"], state["sums"], state["count"]


class Ingredients:
    """greedy_soup: each of the last epochs' weights saved as it is (FitFiles.ingredient), for the
    soup chosen after the folds; the fit itself keeps its last epoch's."""

    averages_in_fit = False

    def __init__(self, ingredient: Callable[[int], Path], first: int):
        self.ingredient, self.first = ingredient, first

    def takes(self, epoch: int) -> bool:
        return epoch >= self.first

    def add(self, model: nn.Module, epoch: int) -> None:
        path = self.ingredient(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({n: v.detach().cpu() for n, v in model.state_dict().items()}, tmp)

    def state_dict(self) -> dict:
        return {"first": self.first}

    def load_state_dict(self, state: dict) -> None:
        self.first = state["first"]


@torch.no_grad()
def recompute_norms(model: nn.Module, batches, images_of, keep: set[str]) -> None:
    """Every BatchNorm's running statistics recomputed as a plain mean over one pass of
    `batches` (averaged weights make the averaged statistics wrong), except the modules named
    in `keep` (frozen ones, which keep theirs). `images_of` moves a batch's images to the model."""
    norms = {n: m for n, m in model.named_modules() if isinstance(m, NORMS) and n not in keep}
    if not norms:
        return
    momenta = {n: m.momentum for n, m in norms.items()}
    for norm in norms.values():
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative mean over the pass
    was_training = model.training
    model.eval()
    for norm in norms.values():
        norm.train()
    for images, _, _ in batches:
        model(images_of(images))
    for name, norm in norms.items():
        norm.momentum = momenta[name]
    model.train(was_training)
