"""Weight averaging (train.average): the mean of the last epochs' weights, its BatchNorm
statistics recomputed, SWA's schedule, and a fit that keeps, validates and resumes it."""

import pandas as pd
import pytest
import torch
from conftest import run, run_killed_after, tiny
from torch import nn

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.learn import averaging, engine

DIGITS = {"layout": "pixel_columns", "sample_submission": None}


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 1, 1), nn.BatchNorm2d(1))


def test_the_average_is_the_mean_of_the_epochs_and_leaves_the_model_alone():
    net, average = small_net(), averaging.Averager(averaging.first_averaged(C.Average(kind="last_k", k=3), epochs=5))
    assert [average.takes(e) for e in range(1, 6)] == [False, False, True, True, True]
    weights = []
    for step in range(3):
        with torch.no_grad():
            net[0].weight.fill_(float(step))
        net[1].num_batches_tracked.fill_(10 * step)
        weights.append(net[0].weight.clone())
        average.add(net)
    assert torch.equal(net[0].weight, weights[-1])  # adding did not touch the model
    average.load_into(net)
    assert torch.allclose(net[0].weight, torch.full_like(net[0].weight, 1.0))  # (0 + 1 + 2) / 3
    assert int(net[1].num_batches_tracked) == 20  # a counter is the last epoch's


def test_recomputed_norms_are_the_statistics_of_the_pass_and_kept_ones_keep_theirs():
    torch.manual_seed(0)
    net = small_net().eval()
    batches = [(torch.randn(8, 1, 6, 6) * 3 + 1, None, None) for _ in range(4)]
    net[4].running_mean.fill_(3.0)
    before = net[4].running_mean.clone()
    averaging.recompute_norms(net, batches, lambda images: images, keep={"4"})
    features = net[0](torch.cat([b[0] for b in batches]))  # every batch the same size: the mean of means
    assert torch.allclose(net[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.equal(net[4].running_mean, before) and net[1].momentum == 0.1 and not net.training


def test_swa_anneals_to_its_lr_and_holds_it_over_the_last_k_epochs():
    cfg = C.Train(epochs=10, average={"kind": "swa", "k": 3, "lr": 0.05})
    factors = [engine.lr_factor(s, 100, cfg, 10) for s in range(100)]
    assert factors[70:] == [0.05] * 30
    assert factors[69] == pytest.approx(0.05, abs=1e-3) and max(factors[:70]) == pytest.approx(1.0, abs=1e-3)


def test_averaging_and_keeping_the_best_epoch_at_once_is_refused():
    with pytest.raises(PipelineError, match="checkpoint=best one epoch's: set one"):
        tiny(DIGITS, checkpoint="best", average={"kind": "swa"})


def test_the_kept_and_validated_weights_are_the_average_of_the_last_epochs(digits_dir, tmp_path, monkeypatch):
    added = []
    add = averaging.Averager.add

    def copied(self, model, epoch):
        added.append({name: value.clone() for name, value in model.state_dict().items()})
        add(self, model, epoch)

    monkeypatch.setattr(averaging.Averager, "add", copied)
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, epochs=3, full_fit=False, average={"kind": "last_k", "k": 2})
    run(cfg, tmp_path, monkeypatch)
    assert len(added) == 4  # the last two epochs of each fold
    saved = torch.load(tmp_path / "runs/tiny/tiny/fold1/model.pt", weights_only=True)["state_dict"]
    conv = next(name for name, value in saved.items() if value.ndim == 4)
    assert torch.allclose(saved[conv], (added[2][conv] + added[3][conv]) / 2)


@pytest.mark.parametrize("kind", ["last_k", "swa"])
def test_a_run_killed_while_it_averages_resumes_to_the_same_cv(digits_dir, tmp_path, monkeypatch, kind):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, epochs=3, full_fit=False, average={"kind": kind, "k": 2})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    uninterrupted = run(cfg, tmp_path / "a", monkeypatch)
    run_killed_after(cfg, tmp_path / "b", monkeypatch, checkpoints=2)
    assert run(cfg, tmp_path / "b", monkeypatch) == uninterrupted
    losses = [pd.read_csv(tmp_path / f"{r}/runs/tiny/tiny/fold0/metrics.csv")["valid_loss"] for r in "ab"]
    assert losses[0].tolist() == pytest.approx(losses[1].tolist(), rel=1e-6)  # finer than the accuracy


def test_the_budgets_plan_names_the_averaging(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, average={"kind": "swa", "k": 2}, time_budget="10m")
    run(cfg, tmp_path, monkeypatch)
    assert "the last 2 epochs' weights averaged (train.average swa)" in capsys.readouterr().out
