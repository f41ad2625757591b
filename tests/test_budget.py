"""train.time_budget: steady-state timing, a plan that trades in a stated order, kept and paced."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_config, run, tiny

from pipeline.learn import budget, defaults
from pipeline.learn.device import Device
from pipeline.learn.fit_setup import Setup
from pipeline.learn.pace import Pace
from pipeline.learn.schedule import FILL, Fit, HeadStart, Plan, Schedule, Speed, fit_seconds, frozen_epochs
from pipeline.stages import train

FOLDS = pd.DataFrame({"fold": [k for k in range(5) for _ in range(20)]})  # 100 rows, 80 train per fold
FINE_TUNE = {"name": "efficientnet_lite0", "pretrained": "efficientnet_lite0", "freeze_depth": 5, "unfreeze_epoch": 2}


def setup_of(given=(), model=None, **train_keys) -> Setup:
    cfg = make_config(
        {"layout": "image_csv"},
        model={**FINE_TUNE, "image_size": 160, **(model or {})},
        train={"epochs": 12, "batch_size": 16, "time_budget": "20m", **train_keys},
    )
    return Setup(cfg, None, None, None, None, 3, cfg.model.image_size, frozenset(given))


def speed(side=160, per_image=0.01) -> Speed:
    return Speed(side, per_image / 2, per_image, per_image / 4, start_s=2.0, epoch_s=0.5)


def test_a_fit_costs_its_start_its_epochs_and_its_rows_frozen_then_unfrozen():
    fit = Fit(0, train_rows=80, valid_rows=20)
    model = setup_of().cfg.model  # unfrozen from epoch 2: one frozen epoch
    seconds = fit_seconds(speed(), fit, 3, model)
    assert seconds == pytest.approx(2.0 + 80 * (0.005 + 2 * 0.01) + 3 * (20 * 0.0025 + 0.5))
    assert frozen_epochs(model.model_copy(update={"unfreeze_epoch": None}), 3) == 3  # frozen for good
    assert speed().at(80).unfrozen_s == pytest.approx(0.0025) and speed().at(80).start_s == 2.0


def test_a_schedule_names_a_lone_fold():
    assert Schedule(96, 8, (3,), full_fit=False).describe(1) == "fold 3, 8 epochs at 96 px"
    assert Schedule(96, 1, (0, 1), full_fit=True).describe(5) == "2 of 5 folds and the full fit, 1 epoch at 96 px"


def test_two_probes_keep_the_faster_of_each_time():
    slow_steps = speed(per_image=0.02)  # starts in 2 s
    slow_start = Speed(160, 0.005, 0.01, 0.0025, start_s=9.0, epoch_s=0.5)
    kept = slow_start.fastest(slow_steps)
    assert (kept.side, kept.unfrozen_s, kept.start_s) == (160, 0.01, 2.0)


def test_the_trades_come_in_order_and_only_for_what_the_defaults_chose():
    options = list(budget.arrangements(setup_of(), [0, 1, 2, 3, 4]))
    assert [(o.side, len(o.folds), o.full_fit) for o in options] == [
        (160, 5, True),
        (128, 5, True),
        (96, 5, True),  # a pretrained model's smallest side
        (96, 4, True),
        (96, 3, True),
        (96, 2, True),
        (96, 1, True),
        (96, 1, False),
    ]
    kept = list(budget.arrangements(setup_of(given={"model.image_size", "train.full_fit"}), [0, 1, 2]))
    assert [(o.side, len(o.folds), o.full_fit) for o in kept] == [(160, 3, True), (160, 2, True), (160, 1, True)]


def test_the_plan_lowers_epochs_to_the_floor_before_it_trades_then_fills_the_budget():
    setup, speeds, bounds = setup_of(), {160: speed()}, (6, 30)
    roomy, said = budget.choose(setup, FOLDS, [0, 1, 2, 3, 4], speeds, bounds, left=3600)
    assert (roomy.side, roomy.epochs, len(roomy.folds), roomy.full_fit) == (160, 30, 5, True) and not said
    # one epoch of the five folds and the full fit at 160 px: 5 * (80 * 0.01 + 20 * 0.0025 + 0.5) + (100 * 0.01 + 0.5)
    tight, said = budget.choose(setup, FOLDS, [0, 1, 2, 3, 4], speeds, bounds, left=100)
    assert (tight.side, len(tight.folds), tight.full_fit) == (160, 5, True) and 6 <= tight.epochs < 12 and not said
    traded, said = budget.choose(setup, FOLDS, [0, 1, 2, 3, 4], speeds, bounds, left=40)
    assert traded.side < 160 and traded.epochs >= 6 and "trading for a smaller image side" in said[0]
    assert fills(traded, setup, left=40) == 1.0  # five folds: the pace can leave the last ones for later
    one_fold = setup_of(given={"train.folds"})
    alone, _ = budget.choose(one_fold, FOLDS, [0], speeds, bounds, left=60)
    assert fills(alone, one_fold, left=60) == FILL  # one fold: 5% kept for the estimate's error


def fills(schedule: Schedule, setup: Setup, left: float) -> float:
    """The share of `left` between the schedule's epochs and one more, checked to bound them."""
    arranged = budget.Arrangement(schedule.side, schedule.folds, schedule.full_fit, "")

    def seconds(epochs: int) -> float:
        return arranged.seconds(epochs, FOLDS, speed().at(schedule.side), setup)

    share = budget.fill(schedule.folds)
    assert seconds(schedule.epochs) <= share * left < seconds(schedule.epochs + 1)  # the most epochs that fit
    return share


def test_a_budget_too_short_for_anything_runs_the_last_trade_at_the_floor_and_says_so():
    schedule, said = budget.choose(setup_of(), FOLDS, [0, 1, 2, 3, 4], {160: speed()}, (6, 30), left=1)
    assert (schedule.side, schedule.folds, schedule.full_fit, schedule.epochs) == (96, (0,), False, 6)
    assert "runs over the budget" in said[-1] and "no full fit" in said[-2]


def test_a_plan_under_four_fifths_of_the_budget_says_why():
    cfg, now = setup_of().cfg, time.time()  # a 20 min budget
    short = Schedule(96, 3, (0,), True)
    line = budget._plan_line(cfg, short, 5, (600.0, 1300.0, 600.0), now, (3, 5))
    assert "50% of the budget" in line and "4 would take 21.7 min, past 95% of the time left" in line
    at_most = budget._plan_line(cfg, Schedule(96, 5, (0,), True), 5, (600.0, 900.0, 600.0), now, (3, 5))
    assert "5 is the most it plans" in at_most
    assert "would take" not in budget._plan_line(cfg, short, 5, (1000.0, 1400.0, 1000.0), now, (3, 5))


def test_the_floor_is_past_the_unfreeze_and_half_the_steps_and_the_ceiling_the_preset_s_most():
    cfg = setup_of().cfg  # 300 optimizer steps asked for at medium; batches of 16
    assert defaults.epoch_bounds(cfg, 640, epochs_given=False) == (4, 30)  # 150 steps of 40 an epoch
    assert defaults.epoch_bounds(cfg, 64_000, epochs_given=False) == (3, 30)  # two epochs past the unfreeze at 2
    assert defaults.epoch_bounds(cfg, 640, epochs_given=True) == (4, 12)  # train.epochs set: the most it plans
    assert defaults.epoch_bounds(setup_of(epochs=2).cfg, 640, epochs_given=True) == (2, 2)


class Batches:
    def __init__(self, n: int, size: int = 4):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield np.zeros((self.size, 1)), None, None


def test_the_stopwatch_times_only_the_steps_after_its_warm_up():
    cpu = Device(torch.device("cpu"), None, False)
    watch = budget.Stopwatch(Batches(10), warmup=2, steps=3, device=cpu)
    assert len(watch) == 5 and len(list(watch)) == 5 and watch.timed_images == 12
    short = budget.Stopwatch(Batches(1), warmup=2, steps=3, device=cpu)
    assert len(list(short)) == 1 and short.timed_images == 4  # no warm-up when there is one batch
    enough = budget.Stopwatch(Batches(10), warmup=2, steps=6, device=cpu, enough_s=0.0)
    assert len(list(enough)) == 2 + budget.FEWEST_TIMED_STEPS and enough.timed_images == 12  # a slow side


@pytest.mark.parametrize(("at_96", "measured"), [(0.01, [96, 160, 96]), (0.5, [96, 96])])
def test_the_probe_goes_up_from_the_smallest_side_as_far_as_the_estimates_allow(monkeypatch, at_96, measured):
    """160 px is far slower than 96 px: measured and traded away when the estimate from 96 px
    allows it (0.01 s an image there), never measured when even that rules it out (0.5 s)."""
    sides = []

    def probe(setup, *args):
        sides.append(setup.image_size)
        return speed(setup.image_size, at_96 if setup.image_size == 96 else 10.0)

    monkeypatch.setattr(budget, "measure", probe)
    plan = budget.make_plan(setup_of(), FOLDS, [0, 1, 2, 3, 4], paths=None, key="key")
    assert plan.schedule.side == 96 and sides == measured


def test_a_budget_plans_once_keeps_its_plan_and_paces_each_fit(blobs_dir, tmp_path, monkeypatch, capsys):
    data = {"layout": "pixel_columns", "dir": str(blobs_dir), "sample_submission": None}
    cfg = tiny(data, epochs=2, time_budget="1h")
    cv = run(cfg, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    kept = json.loads((tmp_path / "runs/tiny/tiny/budget.json").read_text())
    assert (
        kept["schedule"] == {"side": 32, "epochs": 2, "folds": [0, 1], "full_fit": True, "head_start": None}
        and cv["epochs"] == 2
    )
    assert "the 2 epochs asked for" in out and "measured at 32 px: training" in out
    assert [line.startswith("budget: fold 0 took") for line in out.splitlines()].count(True) == 1
    assert "budget: full took" in out and not (tmp_path / "runs/tiny/tiny/budget-probe").exists()
    assert all(v > 0 for v in kept["speeds"][0].values())
    (tmp_path / "runs/tiny/tiny/cv.json").unlink()
    train.run(cfg)  # the kept plan: the same schedule, so the finished fits are kept
    again = capsys.readouterr().out
    assert "kept" in again and "finished before" in again and "budget: fold 0 took" not in again
    assert json.loads((tmp_path / "runs/tiny/tiny/budget.json").read_text()) == kept


def test_a_short_budget_trains_fewer_folds_and_a_later_run_trains_the_rest(blobs_dir, tmp_path, monkeypatch, capsys):
    data = {"layout": "pixel_columns", "dir": str(blobs_dir), "sample_submission": None}
    short = tiny(data, epochs=2, time_budget="0.01s")  # model.image_size is set: the folds are traded
    cv = run(short, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert cv["fold_ids"] == [0] and "fold 1 is left for a later run" in out and "runs over the budget" in out
    assert not (tmp_path / "runs/tiny/tiny/full").exists()
    later = tiny(data, epochs=cv["epochs"])
    assert run(later, tmp_path, monkeypatch)["fold_ids"] == [0, 1]
    assert "fold 0: finished before" in capsys.readouterr().out  # the fold trained under the budget is kept


def test_the_time_a_short_plan_leaves_starts_the_next_fold_and_a_later_run_resumes_it(
    blobs_dir, tmp_path, monkeypatch, capsys
):
    data = {"layout": "pixel_columns", "dir": str(blobs_dir), "sample_submission": None}
    per_row = Speed(32, 0.5, 0.5, 1e-9, start_s=0.0, epoch_s=0.0)  # slower than it runs: on pace
    monkeypatch.setattr(budget, "measure", lambda *args: per_row)
    fold_epoch = 0.5 * len(pd.read_csv(blobs_dir / "train.csv")) / 2
    # two folds and the full fit take 8 fold epochs at the floor of 2, one fold and the full fit 6: 7 leave 1
    short = tiny(data, epochs=2, time_budget=f"{7.5 * fold_epoch / FILL:.3f}s")
    cv = run(short, tmp_path, monkeypatch)
    out, fold1 = capsys.readouterr().out, tmp_path / "runs/tiny/tiny/fold1"
    assert cv["fold_ids"] == [0] and "then the first epoch of fold 1, a head start for a later run" in out
    assert (
        "fold 1 is left for a later run on the same schedule, which keeps the folds trained now and resumes fold 1"
        in out
    )
    assert "budget: fold 1 took" in out and (fold1 / "last.pt").exists() and not (fold1 / "result.json").exists()
    assert len(pd.read_csv(fold1 / "metrics.csv")) == 1
    kept = json.loads((tmp_path / "runs/tiny/tiny/budget.json").read_text())
    assert Plan.read(tmp_path / "runs/tiny/tiny/budget.json", kept["key"]).schedule.head_start.epochs == 1
    assert run(tiny(data, epochs=2), tmp_path, monkeypatch)["fold_ids"] == [0, 1]
    assert "resuming after epoch 1" in capsys.readouterr().out and len(pd.read_csv(fold1 / "metrics.csv")) == 2


def test_the_pace_leaves_for_later_the_folds_that_would_end_past_the_budget_and_sizes_the_head_start(
    monkeypatch, capsys
):
    model, clock = setup_of().cfg.model, [1001.0]  # the probe took 1 s
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    schedule = Schedule(160, 4, (0, 1, 2), full_fit=True)
    planned = {f.name: fit_seconds(speed(), f, 4, model) for f in budget.fits(FOLDS, [0, 1, 2], True)}
    assert planned == {"fold 0": 7.0, "fold 1": 7.0, "fold 2": 7.0, "full": 7.5}
    kept = Plan("key", 32.0, 1000.0, schedule, planned, [speed()], [])
    pace = Pace(kept, kept.deadline, budget.fits(FOLDS, range(5), full_fit=False), model)
    assert pace.starts("fold 0", trained=[])
    for k in (0, 1):  # each fold 20% late
        clock[0] += 8.4
        pace.done(f"fold {k}", 8.4)
        assert pace.starts(f"fold {k + 1}", trained=list(range(k + 1))) == (k == 0)  # 1026.8, then 1035.2: past 1032
    out = capsys.readouterr().out
    assert "fold 2 and the full fit would end about" in out and "the CV is stated on 2 of 5 folds" in out
    assert "folds 2, 3, 4 are left for a later run on the same schedule" in out
    assert pace.starts("full", trained=[0, 1])  # 9 s at this pace, by 1026.8
    clock[0] += 9.0
    pace.done("full", 9.0)
    assert "full took 9 s, planned 8 s (+20%)" in capsys.readouterr().out
    # 5.2 s left: 95% of it at this pace is 4.1 s of plan, one epoch of fold 2 (2.95 s) and not two (4.3 s)
    assert pace.head_start(trained=[0, 1]) == HeadStart(2, 1)
    assert pace.head_start(trained=[0, 1, 2, 3, 4]) is None
    clock[0] = 1031.0
    assert pace.head_start(trained=[0, 1]) is None and "too little for an epoch" in capsys.readouterr().out
    late = Pace(kept, kept.deadline, budget.fits(FOLDS, range(5), full_fit=False), model)
    late.done("fold 0", 30.0)  # 1031: the full fit would end past 1032
    assert not late.starts("full", trained=[0]) and "no full fit: the fold models are submitted" in (
        said := capsys.readouterr().out
    )
    assert "folds 1, 2, 3, 4 and the full fit are left for a later run" in said


def test_fits_that_run_late_leave_the_next_fold_and_the_full_fit_for_a_later_run_that_keeps_the_first(
    blobs_dir, tmp_path, monkeypatch, capsys
):
    data = {"layout": "pixel_columns", "dir": str(blobs_dir), "sample_submission": None}
    instant = Speed(32, 1e-9, 1e-9, 1e-9, start_s=1e-3, epoch_s=0.0)  # far faster than any fit runs
    monkeypatch.setattr(budget, "measure", lambda *args: instant)
    monkeypatch.setattr(Plan, "deadline", property(lambda plan: plan.started))  # planned in, then over
    run(tiny(data, epochs=1), tmp_path, monkeypatch)  # a full model of another config
    cv = run(tiny(data, epochs=2, time_budget="1h"), tmp_path, monkeypatch)
    out, full = capsys.readouterr().out, tmp_path / "runs/tiny/tiny/full"
    assert "plan: 2 folds and the full fit" in out and cv["fold_ids"] == [0]
    assert "fold 1 and the full fit would end about" in out and "fold 1 is left for a later run" in out
    assert "no full fit: the fold models are submitted" in out and "fold 1 and the full fit are left for a" in out
    assert "was not trained with this config, removed" in out and not (full / "model.pt").exists()
    assert run(tiny(data, epochs=2), tmp_path, monkeypatch)["fold_ids"] == [0, 1]
    assert "fold 0: finished before" in capsys.readouterr().out and (full / "result.json").exists()


def test_a_side_not_measured_is_estimated_as_the_measured_ones_grew():
    small, large = speed(96, 0.01), speed(160, 0.04)  # 4x the time for (160 / 96) ** 2.71 the pixels
    assert budget.estimate({96: small}, 96) is small
    assert budget.estimate({96: small}, 192).unfrozen_s == pytest.approx(0.04)  # one: with the pixels
    grown = budget.estimate({96: small, 160: large}, 128).unfrozen_s
    assert grown == pytest.approx(0.01 * (128 / 96) ** small.exponent_to(large)) and 0.0178 < grown < 0.04
