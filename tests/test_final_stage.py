"""train.final_size: the main schedule, then a last stage at a larger side whose weights, CV and
predictions are the fit's; resumed in either stage; planned into a time budget."""

import re

import pandas as pd
import pytest
import torch
from conftest import run, run_killed_after, tiny

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.learn import budget, schedule

DIGITS = {"layout": "pixel_columns", "sample_submission": None}
FINAL = {"image_size": 48, "epochs": 1, "lr": 0.002}


def test_the_last_stage_trains_at_its_side_and_is_what_the_fit_keeps(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, final_size=FINAL)
    cv = run(cfg, tmp_path, monkeypatch)
    runs = tmp_path / "runs/tiny/tiny"
    for fit in ("fold0", "fold1", "full"):
        saved = torch.load(runs / fit / "model.pt", weights_only=True)
        assert saved["meta"]["image_size"] == 48, fit
        assert not (runs / fit / "main").exists()  # the main schedule's folder goes once the fit is done
    history = pd.read_csv(runs / "fold0/metrics.csv")  # one history: the main schedule's epoch, then the last stage's
    assert history[["epoch", "image_size"]].to_numpy().tolist() == [[1, 32], [2, 48]]
    assert cv["best_epochs"] == [2, 2] and cv["epochs"] == 2 and len(cv["folds"]) == 2


def test_a_run_killed_in_its_last_stage_resumes_there(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, epochs=2, full_fit=False, final_size={**FINAL, "epochs": 2})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    uninterrupted = run(cfg, tmp_path / "a", monkeypatch)
    run_killed_after(cfg, tmp_path / "b", monkeypatch, checkpoints=3)  # fold 0: two epochs, then the last stage's first
    capsys.readouterr()
    assert run(cfg, tmp_path / "b", monkeypatch) == uninterrupted
    out = capsys.readouterr().out
    assert "fold0: resuming after epoch 1" in out and "fold 0 epoch" not in out  # its main schedule not trained again
    losses = [pd.read_csv(tmp_path / f"{r}/runs/tiny/tiny/fold0/metrics.csv")["valid_loss"] for r in "ab"]
    assert losses[0].tolist() == pytest.approx(losses[1].tolist(), rel=1e-6)


def test_a_last_stage_no_larger_than_the_main_schedule_is_refused_before_any_fit(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, final_size={**FINAL, "image_size": 32})
    with pytest.raises(PipelineError, match="final_size.image_size=32 is not larger than the 32 px"):
        run(cfg, tmp_path, monkeypatch)
    assert not (tmp_path / "runs/tiny/tiny/fold0").exists()


def test_a_last_stage_is_checked_against_the_side_the_budget_chose(digits_dir, tmp_path, monkeypatch):
    asked = tiny({**DIGITS, "dir": str(digits_dir)}, full_fit=False, final_size={**FINAL, "image_size": 40})
    cfg = C.with_overrides(asked, {"model.image_size": 48}, "test")  # the config's side is no smaller

    def traded(setup, folds, fold_ids, paths):  # as a tight budget trades the side down
        return budget.apply(setup, schedule.Schedule(32, 1, tuple(fold_ids), False), fold_ids), fold_ids, None

    monkeypatch.setattr(budget, "fit_into", traded)
    run(cfg, tmp_path, monkeypatch)
    saved = torch.load(tmp_path / "runs/tiny/tiny/fold0/model.pt", weights_only=True)
    assert saved["meta"]["image_size"] == 40


def test_a_budget_plans_the_last_stage_at_its_side():
    speed = schedule.Speed(side=32, frozen_s=0.01, unfrozen_s=0.01, valid_s=0.005, start_s=2.0, epoch_s=1.0)
    fit = schedule.Fit(0, train_rows=100, valid_rows=50)
    model = tiny(DIGITS).model
    alone = schedule.fit_seconds(speed, fit, 3, model)
    final = tiny(DIGITS, final_size=FINAL).train.final_size
    larger = (48 / 32) ** 2  # the per-image work grows with the pixels
    staged = alone + 2.0 + (100 * 0.01 * larger + 50 * 0.005 * larger + 1.0)
    assert schedule.fit_seconds(speed, fit, 3, model, final) == pytest.approx(staged)


def test_the_last_stage_says_itself_in_the_budgets_plan(digits_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, final_size=FINAL, time_budget="10m")
    run(cfg, tmp_path, monkeypatch)
    assert re.search(r"then 1 at 48 px \(train.final_size, [0-9.]+ (s|min) of the training\)", capsys.readouterr().out)
