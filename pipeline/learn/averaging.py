"""Weight averaging (train.average): the weights a fit keeps are the mean of its last epochs'
weights, with the BatchNorm statistics recomputed for them on the training batches, and that
averaged model is the one validated (the fold's CV) and saved (for predict; the full fit alike).

  last_k   the last k epochs of the schedule as it is (timm's avg_checkpoints)
  swa      the schedule anneals to average.lr x train.lr by the last k epochs and holds it there
           while they are averaged (Izmailov et al., 2018)

What is averaged is what would be validated: the EMA's weights where train.ema_decay is set.
"""

import torch
from torch import nn

from pipeline.config_training import Average

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Averager:
    """A running mean of the weights of the epochs from `first` on, kept in the checkpoint so a
    resumed fit goes on averaging where it stopped."""

    def __init__(self, settings: Average, epochs: int):
        self.first = epochs - min(settings.k, epochs) + 1
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def takes(self, epoch: int) -> bool:
        return epoch >= self.first

    def add(self, model: nn.Module) -> None:
        """One more epoch's weights, summed on the host (float tensors; counters as the last epoch
        left them), where a checkpoint reloads them whatever the device."""
        for name, value in model.state_dict().items():
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
