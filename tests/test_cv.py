"""What you submit is what you validated: both CVs per fold, an OOF score recomputable from
oof.csv in the competition's units, a full fit on the folds' schedule, and a ledger that states
the CV of the models in the file."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import KEYPOINTS, run, tiny

from pipeline.errors import PipelineError
from pipeline.learn import selection
from pipeline.learn.inference import PredictionsOnTest
from pipeline.paths import Paths
from pipeline.predictions import Raw
from pipeline.records import CV, Scores
from pipeline.stages import predict, score, submissions


def digits(digits_dir, **train_keys):
    data = {"layout": "pixel_columns", "dir": str(digits_dir), "solution": "solution.csv"}
    return tiny(data, **{"epochs": 3, **train_keys})


def oof_table(root, fold_ids) -> pd.DataFrame:
    return pd.concat([pd.read_csv(root / f"fold{k}/oof.csv") for k in fold_ids], ignore_index=True)


def test_every_fold_keeps_its_best_and_last_epoch_and_the_full_fit_runs_the_same_schedule(
    digits_dir, tmp_path, monkeypatch
):
    cv = run(digits(digits_dir), tmp_path, monkeypatch)
    runs = tmp_path / "runs/tiny/tiny"
    fold_figures = zip(cv["fold_ids"], cv["best"]["folds"], cv["last"]["folds"], cv["best_epochs"], strict=True)
    for k, best, last, epoch in fold_figures:
        history = pd.read_csv(runs / f"fold{k}/metrics.csv")
        assert history["accuracy"].iloc[-1] == pytest.approx(last) and history["accuracy"].max() == pytest.approx(best)
        assert history["accuracy"].iloc[epoch - 1] == pytest.approx(best)
    assert cv["kept"] == "last" and cv["score"] == cv["last"]["mean"] and cv["epochs"] == 3
    assert len(pd.read_csv(runs / "full/metrics.csv")) == 3  # the folds' schedule, not their mean best epoch
    oof = oof_table(runs, cv["fold_ids"])
    probabilities = oof[["prob_0", "prob_1", "prob_2"]].to_numpy()
    assert cv["oof_score"] == pytest.approx((probabilities.argmax(axis=1) == oof["label"]).mean())
    assert cv["last"]["oof"] == cv["oof_score"]


def test_keypoint_oof_score_is_rmse_in_pixels_over_the_labelled_points(faces_dir, tmp_path, monkeypatch):
    data = {"layout": "pixel_string", "dir": str(faces_dir), "sample_submission": None, "lookup_table": None}
    cv = run(tiny(data, task="keypoints", epochs=2), tmp_path, monkeypatch)
    oof = oof_table(tmp_path / "runs/tiny/tiny", cv["fold_ids"])
    assert oof[KEYPOINTS].isna().any().any()  # some points are missing
    truth, predicted = oof[KEYPOINTS].to_numpy(), oof[[f"pred_{c}" for c in KEYPOINTS]].to_numpy()
    rmse = np.sqrt(np.nanmean((predicted - truth) ** 2))
    assert cv["oof_score"] == pytest.approx(rmse) and rmse < 32  # pixels of a 32-pixel image
    pooled_by_fold = [np.sqrt(np.nanmean((predicted - truth)[oof["fold"] == k] ** 2)) for k in cv["fold_ids"]]
    assert cv["folds"] == pytest.approx(pooled_by_fold, rel=1e-4)  # each fold's RMSE, as training measured it


def test_checkpoint_best_keeps_the_best_epoch_for_the_folds(digits_dir, tmp_path, monkeypatch):
    cv = run(digits(digits_dir, checkpoint="best"), tmp_path, monkeypatch)
    assert cv["kept"] == "best" and cv["score"] == cv["best"]["mean"] and cv["oof_score"] == cv["best"]["oof"]
    raw = Raw.load(tmp_path / "runs/tiny/tiny/fold0/valid_best.npz")
    oof = pd.read_csv(tmp_path / "runs/tiny/tiny/fold0/oof.csv")
    np.testing.assert_allclose(oof[["prob_0", "prob_1", "prob_2"]].to_numpy(), raw.predictions, atol=1e-6)


def record(best: list[float], last: list[float], kept: str = "last", metric: str = "accuracy") -> CV:
    return CV(
        metric, metric != "rmse", kept, 10, [0, 1, 2], [100] * 3, [5, 6, 7], Scores.of(best, 0), Scores.of(last, 0)
    )


def test_a_schedule_that_ends_past_its_best_is_named():
    stable = record([1.0, 1.0, 0.99], [0.99, 1.0, 0.99])  # within one validation row (0.01)
    assert not stable.unstable and len(stable.describe()) == 1
    unstable = record([0.99, 0.98, 0.99], [0.90, 0.92, 0.91])
    warning = unstable.describe()[-1]
    assert unstable.unstable and warning.startswith("warning:")
    assert all(word in warning for word in ("train.lr", "train.ema_decay", "train.epochs"))
    assert record([2.0, 2.1, 2.0], [2.6, 2.7, 2.6], metric="rmse").unstable  # lower is better
    one_fold = CV("dice", True, "last", 9, [0], [300], [8], Scores.of([0.80455], 0), Scores.of([0.80454], 0))
    assert not one_fold.unstable  # one fold has no spread: a gain of 0.00001 is not past the noise


def option(models: str, score: float) -> selection.Choice:
    return selection.Choice(models, [], score, 0.0, "", {})


def test_auto_takes_the_full_model_only_when_its_recipe_is_within_noise():
    cv = record([0.99, 0.98, 0.99], [0.90, 0.92, 0.91], kept="best")  # noise: one validation row, 0.01
    assert selection.auto_models(cv, None, option("folds", 0.98))[0].models == "folds"  # no full fit
    assert selection.auto_models(cv, option("full", 0.91), option("folds", 0.987))[0].models == "folds"
    assert selection.auto_models(cv, option("full", 0.98), option("folds", 0.987))[0].models == "full"
    rmse = record([0.61, 0.62, 0.60], [0.61, 0.62, 0.60], metric="rmse")  # noise: the folds' spread, 0.008
    assert selection.auto_models(rmse, option("full", 0.61), option("folds", 0.48))[0].models == "folds"
    assert selection.auto_models(rmse, option("full", 0.61), option("folds", 0.605))[0].models == "full"


def test_a_keypoint_ensemble_states_its_averaging_gain(faces_dir, tmp_path, monkeypatch, capsys):
    data = {"layout": "pixel_string", "dir": str(faces_dir), "sample_submission": None, "lookup_table": None}
    cfg = tiny(data, task="keypoints", epochs=2)
    run(cfg, tmp_path, monkeypatch)
    cv = CV.load(Paths.of(cfg).cv_json)
    cfg.predict.models = "folds"
    predict.run(cfg)
    stated = pd.read_csv("submissions/ledger.csv").iloc[-1]
    assert "spread on the test images" in stated["cv_method"]
    assert stated["cv_score"] < math.sqrt(np.mean(np.square(cv.last.folds)))  # each member's RMSE, pooled
    cfg.predict.models = "auto"
    predict.run(cfg)
    assert "predict.models=auto:" in capsys.readouterr().out


def test_the_ledger_states_the_cv_of_the_models_in_the_file(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = digits(digits_dir)
    run(cfg, tmp_path, monkeypatch)
    cv = CV.load(Paths.of(cfg).cv_json)
    predict.run(cfg)
    assert "predict.models=auto: full, its recipe is within the folds' noise" in capsys.readouterr().out
    cfg.predict.models = "folds"
    cfg.predict.tta = ["scale:1"]  # an identity view: the TTA path must reproduce the training OOF exactly
    predict.run(cfg)
    ledger = pd.read_csv("submissions/ledger.csv")
    assert ledger["models"].tolist() == ["full", "folds"]
    assert ledger["cv_score"].tolist() == pytest.approx([cv.last.oof, cv.last.oof])
    assert ledger["cv_std"].tolist() == pytest.approx([cv.last.std, cv.last.std])
    assert "the full fit's recipe" in ledger["cv_method"][0] and "TTA scale:1" in ledger["cv_method"][1]
    score.score(cfg)
    capsys.readouterr()
    submissions.show(cfg)
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[4:10] == ["cv_score", "cv_std", "local_score", "local_gap", "public_score", "public_gap"]


def test_full_with_tta_under_best_checkpoints_says_its_tta_is_unmeasured(digits_dir, tmp_path, monkeypatch):
    cfg = digits(digits_dir, checkpoint="best")
    run(cfg, tmp_path, monkeypatch)
    cv = CV.load(Paths.of(cfg).cv_json)
    cfg.predict.models, cfg.predict.tta = "full", ["hflip"]
    choice = selection.choose(cfg, Paths.of(cfg), cv, PredictionsOnTest(cfg, Paths.of(cfg)))
    assert (choice.score, choice.std) == (cv.recipe.oof, cv.recipe.std) and "TTA unmeasured" in choice.method


def test_an_older_cv_json_asks_for_training_again(tmp_path):
    path = tmp_path / "cv.json"
    path.write_text(json.dumps({"metric": "accuracy", "score": 0.9, "std": 0.0, "folds": [0.9]}))
    with pytest.raises(PipelineError, match="written by an older version: run `make train` again"):
        CV.load(path)
