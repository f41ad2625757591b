"""Experiments side by side, blended by their out-of-fold predictions."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import run, tiny

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.learn import experiments
from pipeline.paths import Paths
from pipeline.predictions import Raw
from pipeline.records import Blend
from pipeline.stages import blend, folds, predict, train


def faces(faces_dir, experiment: str, **train_keys) -> C.Config:
    data = {"layout": "pixel_string", "dir": str(faces_dir), "sample_submission": None, "lookup_table": None}
    return tiny(data, task="keypoints", full_fit=False, experiment=experiment, **train_keys)


def test_a_blended_submission_is_the_weighted_mean_of_its_members_kept_test_predictions(
    faces_dir, tmp_path, monkeypatch, capsys
):
    first = faces(faces_dir, "first")
    run(first, tmp_path, monkeypatch)
    train.run(faces(faces_dir, "second", lr=0.003, seed=1))
    blend.run(C.with_overrides(first, {"blend.name": "both"}, "test"))
    record = Blend.load(Paths.of(first).blend("both"))
    assert set(record.weights) == {"first", "second"} and sum(record.weights.values()) == pytest.approx(1.0)
    assert record.method == "optimise" and record.nested.oof != record.in_sample
    assert "nested CV" in capsys.readouterr().out
    predict.run(C.with_overrides(first, {"predict.blend": "both"}, "test"))
    written = pd.read_csv(sorted((tmp_path / "submissions/tiny").glob("*blend-both*.csv"))[-1])
    expected = sum(weight * member_mean(tmp_path / "runs/tiny" / name) for name, weight in record.weights.items())
    np.testing.assert_allclose(written.drop(columns=written.columns[0]).to_numpy(), expected, atol=1e-3)
    ledger = pd.read_csv(tmp_path / "submissions/ledger.csv")
    assert ledger["models"].iloc[-1] == "blend-both" and "first 0." in ledger["experiment"].iloc[-1]
    # as a single experiment's: less the averaging over its folds' models that no OOF row shows
    assert ledger["cv_score"].iloc[-1] < record.nested.oof and "fold blends' spread" in ledger["cv_method"].iloc[-1]
    train.run(faces(faces_dir, "second", lr=0.004, seed=1))
    with pytest.raises(PipelineError, match="blend both: experiment second trained again after `make blend`"):
        predict.run(C.with_overrides(first, {"predict.blend": "both"}, "test"))


def member_mean(experiment) -> np.ndarray:
    """The mean of the fold models' kept test predictions, in pixels of each image."""
    raws = [Raw.load(experiment / f"fold{k}/test_plain.npz") for k in (0, 1)]
    points, sizes = np.mean([r.predictions for r in raws], axis=0), raws[0].sizes
    half_side = np.where(np.arange(points.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) / 2.0
    return np.clip((points + 1.0) * half_side - 0.5, 0, None)


def test_experiments_are_listed_and_a_blend_refuses_one_on_other_folds(digits_dir, tmp_path, monkeypatch, capsys):
    data = {"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}
    first, second = (tiny(data, full_fit=False, experiment=name, epochs=2) for name in ("first", "second"))
    run(first, tmp_path, monkeypatch)
    train.run(C.with_overrides(second, {"model.name": "test_efficientnet"}, "test"))
    table = experiments.table(Paths.of(first))
    assert sorted(table["experiment"]) == ["first", "second"] and table["train_min"].notna().all()
    assert table.set_index("experiment").loc["second", "differs"].startswith("model.name=test_efficientnet")
    assert list(table["cv_last"]) == sorted(table["cv_last"], reverse=True)
    blend.run(C.with_overrides(first, {"blend.rounds": 1}, "test"))
    climbed = Blend.load(Paths.of(first).blend("blend"))
    assert climbed.method == "hill_climb" and all((2 * w).is_integer() for w in climbed.weights.values())  # 2 picks
    runs = tmp_path / "runs/tiny"
    shutil.move(runs / "first", tmp_path / "first")
    shutil.rmtree(runs / "second")
    folds.run(C.with_overrides(first, {"folds.seed": 7}, "test"))  # no experiment trained: new folds allowed
    train.run(second)
    shutil.move(tmp_path / "first", runs / "first")
    with pytest.raises(PipelineError, match="experiment first validated on other folds"):
        blend.run(first)


def test_the_blend_stage_reads_saved_predictions_without_torch_or_scikit_learn():
    """`make blend` only reads arrays; importing torch, timm and scikit-learn would cost it
    seconds on every call (the blend_speed benchmark's target is 5 s in all)."""
    code = "import sys, pipeline.stages.blend; print(sorted({'torch', 'timm', 'sklearn'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"
