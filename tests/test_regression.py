"""Regression: continuous targets standardised by each fit's own rows and written back in their
units, metrics checked against scikit-learn, folds on quantile bins, and a competition from
`make init` to a scored submission."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from pipeline import cli
from pipeline import config as C
from pipeline.learn import stacking
from pipeline.stages import folds
from pipeline.tasks.regression import Regression, regression_metric


def pawpularity_competition(root: Path, rng: np.random.Generator, *, train: int = 64, test: int = 24) -> None:
    """Id,<12 tabular columns>,Pawpularity as PetFinder ships it, shrunk: the score (1-100) grows with
    the brightness of a 32x32 photo; one tabular column, `Blur`, carries part of it too."""
    for split, n in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            level = rng.uniform(0.1, 0.9)
            pixels = np.clip(rng.normal(255 * level, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"p{split}{i}.jpg")
            score = int(np.clip(round(100 * level + rng.normal(0, 5)), 1, 100))
            rows.append(
                {"Id": f"p{split}{i}", "Blur": int(score > 50), "Eyes": int(rng.integers(0, 2)), "Pawpularity": score}
            )
        table = pd.DataFrame(rows)
        if split == "train":
            table.to_csv(root / "train.csv", index=False)
        else:
            table.drop(columns="Pawpularity").to_csv(root / "test.csv", index=False)
            table[["Id"]].assign(Pawpularity=50.0).to_csv(root / "sample_submission.csv", index=False)
            table[["Id", "Pawpularity"]].to_csv(root / "solution.csv", index=False)


def test_metrics_are_scikit_learns_over_the_labelled_cells():
    rng = np.random.default_rng(0)
    truth, guess = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    assert regression_metric("rmse", guess, truth) == pytest.approx(np.sqrt(mean_squared_error(truth, guess)))
    assert regression_metric("mae", guess, truth) == pytest.approx(mean_absolute_error(truth, guess))
    assert regression_metric("r2", guess, truth) == pytest.approx(r2_score(truth, guess))
    truth[0, 0] = np.nan  # a missing cell is left out, not counted as an error
    assert regression_metric("rmse", guess, truth) == pytest.approx(
        np.sqrt(np.mean(np.concatenate([(guess[1:, 0] - truth[1:, 0]) ** 2, (guess[:, 1] - truth[:, 1]) ** 2])))
    )


def test_each_fit_standardises_by_its_own_rows_and_answers_in_units():
    targets = np.array([[10.0], [20.0], [30.0], [40.0]], dtype=np.float32)
    task = Regression(["y"], clip=True).fitted_to(targets[:2])  # a fold that trained on 10 and 20
    assert task.scale["mean"] == [15.0] and task.scale["std"] == [5.0]
    outputs = torch.tensor([[0.0], [1.0], [9.0]])
    assert task.activate(outputs).flatten().tolist() == [15.0, 20.0, 20.0]  # 9 sd out: clipped to its range
    assert task.loss(torch.tensor([[1.0]]), torch.tensor([[20.0]])).item() == 0.0  # (20 - 15) / 5 = 1
    again = Regression.from_meta(task.meta(), None)
    assert again.activate(outputs).flatten().tolist() == [15.0, 20.0, 20.0]


def test_init_takes_a_number_with_many_values_for_regression_but_not_a_class():
    table = pd.DataFrame({"score": np.arange(60) % 45, "label": np.arange(60) % 5, "height": np.linspace(0, 1, 60)})
    assert "45 distinct whole numbers" in Regression.detect("image_csv", ["score"], table)
    assert Regression.detect("image_csv", ["label"], table) is None
    assert "fractions" in Regression.detect("image_csv", ["height"], table)
    assert Regression.claim_columns(table, ["score", "height"]) == ["score", "height"]


def test_folds_stratify_on_quantile_bins_of_the_target():
    table = pd.DataFrame({"id": [str(i) for i in range(100)], "y": np.arange(100.0)})
    assigned = folds.assign_folds(table, ["y"], C.Folds(n_splits=4, n_bins=5), "regression")
    bins = np.arange(100) // 20
    for b in range(5):  # every fold holds its share of every fifth of the range
        assert np.bincount(assigned[bins == b], minlength=4).tolist() == [5, 5, 5, 5]


def test_a_pawpularity_competition_from_init_to_a_scored_submission(tmp_path, monkeypatch, capsys):
    pawpularity_competition(tmp_path / "data/paw", np.random.default_rng(0))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "data/paw", "-o", "paw.yaml"]) == 0
    written = yaml.safe_load(Path("paw.yaml").read_text())
    assert written["competition"]["task"] == "regression" and written["data"]["label_columns"] == ["Pawpularity"]
    assert written["data"]["feature_columns"] == ["Blur", "Eyes"]
    written["data"]["solution"] = "solution.csv"
    written["folds"] = {"n_splits": 2}
    written["model"] = {"name": "test_resnet", "image_size": 32, "pretrained": "none", "clip_to_targets": True}
    written["train"] = {"epochs": 4, "batch_size": 8, "workers": 0, "lr": 0.01, "device": "cpu"}
    Path("paw.yaml").write_text(yaml.safe_dump(written))
    for stage in ("data", "folds", "train", "predict", "score", "report"):
        assert cli.main([stage, "-c", "paw.yaml"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    submitted = pd.read_csv(next(Path("submissions/paw").glob("*.csv")))
    assert list(submitted.columns) == ["Id", "Pawpularity"] and len(submitted) == 24
    train = pd.read_csv("data/paw/train.csv")
    assert submitted["Pawpularity"].between(train["Pawpularity"].min(), train["Pawpularity"].max()).all()
    assert "rmse" in out and Path("runs/paw/report/predicted_vs_true.png").exists()


def test_the_stack_reads_the_tabular_columns_beside_the_members():
    rng = np.random.default_rng(0)
    site = rng.choice(["north", "south", None], 300)
    truth = (np.where(site == "north", 10.0, 0.0) + rng.normal(0, 1, 300))[:, None]
    members = np.stack([truth + rng.normal(0, 4, truth.shape) for _ in range(2)])  # noisy image models
    features = pd.DataFrame({"site": site, "age": rng.normal(50, 10, 300)})
    fold_of_row = np.arange(300) % 3
    task = Regression(["y"])
    held_out = stacking.nested_predictions(task, members, features, truth, fold_of_row)
    assert task.score(held_out, truth) < 0.6 * task.score(members.mean(axis=0), truth)
    unseen = features.assign(site=["east"] * 300)  # a category the trees never saw: missing
    assert np.isfinite(stacking.Stacker.fit(task, members, features, truth).predict(members, unseen)).all()


@pytest.mark.slow  # the stack's path to a submission is also the next test's, with one experiment
def test_a_stack_of_two_experiments_and_the_columns_is_submitted(tmp_path, monkeypatch, capsys):
    pawpularity_competition(tmp_path / "data/paw", np.random.default_rng(0), train=80)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "data/paw", "-o", "paw.yaml"]) == 0
    written = yaml.safe_load(Path("paw.yaml").read_text())
    written["data"]["solution"] = "solution.csv"
    written["folds"] = {"n_splits": 2}
    written["model"] = {"name": "test_resnet", "image_size": 32, "pretrained": "none"}
    written["train"] = {"epochs": 2, "batch_size": 8, "workers": 0, "lr": 0.01, "device": "cpu", "full_fit": False}
    Path("paw.yaml").write_text(yaml.safe_dump(written))
    for args in (
        ["data"],
        ["folds"],
        ["train", "train.experiment=a"],
        ["train", "train.experiment=b", "train.loss=l1"],
    ):
        assert cli.main([args[0], "-c", "paw.yaml", *args[1:]]) == 0
    assert cli.main(["blend", "-c", "paw.yaml", "blend.method=stack", "blend.name=stack"]) == 0
    out = capsys.readouterr().out
    assert (
        "blend stack: trees on the members' predictions and the columns Blur, Eyes" in out
        and Path("runs/paw/blends/stack.stack.pkl").exists()
    )
    assert cli.main(["predict", "-c", "paw.yaml", "predict.blend=stack"]) == 0
    ledger = pd.read_csv("submissions/ledger.csv")
    assert ledger["experiment"].iloc[-1] == "stack(a + b + Blur + Eyes)"
    Path("runs/paw/blends/stack.stack.pkl").write_bytes(b"other trees")
    assert cli.main(["predict", "-c", "paw.yaml", "predict.blend=stack"]) == 2
    assert "is not the second level blend stack fitted" in capsys.readouterr().err


def test_a_stack_takes_the_folds_its_member_trained_and_a_blend_the_same_folds_in_every_member(
    tmp_path, monkeypatch, capsys
):
    """A time budget may leave a fold out: the blend runs on the folds the members share."""
    pawpularity_competition(tmp_path / "data/paw", np.random.default_rng(1), train=48, test=8)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "data/paw", "-o", "paw.yaml"]) == 0
    settings = ["folds.n_splits=3", "model.name=test_resnet", "model.image_size=32", "model.pretrained=none"]
    settings += ["train.epochs=1", "train.batch_size=8", "train.workers=0", "train.full_fit=false"]
    for args in (
        ["data"],
        ["folds"],
        ["train", "train.experiment=a", "train.folds=[0,1]"],
        ["train", "train.experiment=b"],
    ):
        assert cli.main([args[0], "-c", "paw.yaml", *settings, *args[1:]]) == 0
    assert cli.main(["blend", "-c", "paw.yaml", *settings]) == 2
    assert "experiment b trained folds [0, 1, 2] and a folds [0, 1]" in capsys.readouterr().err
    stack = ["blend.method=stack", "blend.experiments=[a]", "blend.name=s"]
    assert cli.main(["blend", "-c", "paw.yaml", *settings, *stack]) == 0
    assert "32 out-of-fold rows" in capsys.readouterr().out
    assert cli.main(["predict", "-c", "paw.yaml", *settings, "predict.blend=s"]) == 0
