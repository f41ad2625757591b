"""Multi-label: tags or 0/1 columns, F-beta and ranking metrics checked against scikit-learn,
thresholds fitted out of fold, and a competition from `make init` to a scored submission."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import fbeta_score, roc_auc_score

from pipeline import cli
from pipeline.errors import PipelineError
from pipeline.tasks import multilabel
from pipeline.tasks.multilabel import THRESHOLDS, Multilabel

TAGS = ("dot", "red", "stripes")


def tagged_image(tags: set[str], rng: np.random.Generator) -> np.ndarray:
    """32x32 RGB noise with a red square, horizontal stripes and a bright centre dot, as tagged."""
    pixels = rng.normal(80, 15, (32, 32, 3))
    if "red" in tags:
        corner = rng.integers(0, 16, 2)
        pixels[corner[0] : corner[0] + 12, corner[1] : corner[1] + 12, 0] = 230
    if "stripes" in tags:
        pixels[::4] += 90
    if "dot" in tags:
        pixels[13:19, 13:19] = 250
    return np.clip(pixels, 0, 255).astype(np.uint8)


def tags_competition(root: Path, rng: np.random.Generator, *, train: int = 64, test: int = 24) -> None:
    """image_name,tags (Planet's shape) with a `site` column in both CSVs; the answers beside."""
    for split, n in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            tags = {t for t in TAGS if rng.random() < 0.5}
            Image.fromarray(tagged_image(tags, rng)).save(root / split / f"{split}_{i}.png")
            rows.append({"image_name": f"{split}_{i}", "site": int(rng.integers(0, 3)), "tags": " ".join(sorted(tags))})
        table = pd.DataFrame(rows)
        if split == "train":
            table.to_csv(root / "train.csv", index=False)
        else:
            table[["image_name", "site"]].to_csv(root / "test.csv", index=False)
            table[["image_name"]].assign(tags="dot red").to_csv(root / "sample_submission.csv", index=False)
            table[["image_name", "tags"]].to_csv(root / "solution.csv", index=False)


# --- metrics and thresholds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "average", "beta"),
    [("f1_samples", "samples", 1), ("f2_samples", "samples", 2), ("f1_micro", "micro", 1), ("f1_macro", "macro", 1)],
)
def test_f_scores_are_scikit_learns(metric, average, beta):
    rng = np.random.default_rng(0)
    truth, decided = rng.random((50, 4)) < 0.4, rng.random((50, 4)) < 0.5
    expected = fbeta_score(truth, decided, beta=beta, average=average, zero_division=1.0)
    assert multilabel.f_beta_score(metric, decided, truth) == pytest.approx(expected)


def test_roc_auc_is_the_mean_over_labels_with_both_values():
    rng = np.random.default_rng(1)
    truth = (rng.random((40, 3)) < 0.5).astype(float)
    truth[:, 2] = 0  # no positives: not scored
    scores = rng.random((40, 3)) + truth * 0.3
    expected = np.mean([roc_auc_score(truth[:, j], scores[:, j]) for j in range(2)])
    assert multilabel.ranking_score("roc_auc", scores, truth) == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["samples", "micro", "macro"])
def test_one_labels_threshold_candidates_are_scored_as_a_full_recount_would(kind):
    rng = np.random.default_rng(2)
    truth, probabilities = rng.random((30, 4)) < 0.4, rng.random((30, 4))
    decided = probabilities >= 0.5
    metric = next(m for m, (k, _) in multilabel.F_METRICS.items() if k == kind)
    fast = multilabel._column_scores(kind, 1.0, decided, truth, probabilities[:, 1], 1)
    for t, score in zip(THRESHOLDS, fast, strict=True):
        recount = decided.copy()
        recount[:, 1] = probabilities[:, 1] >= t
        assert score == pytest.approx(multilabel.f_beta_score(metric, recount, truth))


def test_thresholds_are_fitted_per_label_and_the_cv_never_scores_them_on_their_own_rows():
    rng = np.random.default_rng(3)
    truth = (rng.random((400, 2)) < 0.5).astype(float)
    # label 0 is present where its probability passes 0.3, label 1 where it passes 0.7
    probabilities = np.column_stack([truth[:, 0] * 0.5 + 0.1, truth[:, 1] * 0.25 + 0.6]) + rng.normal(0, 0.02, (400, 2))
    task = Multilabel(["a", "b"], "f1_micro")
    fitted = task.fit_decision(probabilities, truth)
    assert 0.12 < fitted.thresholds[0] < 0.58 and 0.64 < fitted.thresholds[1] < 0.83
    assert fitted.score(probabilities, truth) == 1.0 and task.score(probabilities, truth) < 0.9  # 0.5 for both
    decided = fitted.decide(probabilities)
    assert fitted.decide(decided).tolist() == decided.tolist() and task.score(decided, truth) == 1.0  # idempotent
    folds = np.arange(400) % 4
    per_fold, pooled = task.held_out_scores(probabilities, truth, folds)
    assert len(per_fold) == 4 and pooled == pytest.approx(1.0)
    # labels whose pattern flips between folds: thresholds fitted on the other folds fail the held-out one
    flipped = probabilities.copy()
    flipped[folds == 0, 1] = 1.3 - flipped[folds == 0, 1]
    assert task.held_out_scores(flipped, truth, folds)[0][0] < 0.8


def test_tags_and_columns_encode_to_the_same_matrix():
    table = pd.DataFrame({"tags": ["a b", "", "b c", None], "a": [1, 0, 0, 0], "b": [1, 0, 1, 0], "c": [0, 0, 1, 0]})
    assert Multilabel.labels_of(table, ["tags"]) == ["a", "b", "c"]
    tags = Multilabel(["a", "b", "c"]).encode(table, ["tags"])
    assert tags.tolist() == Multilabel(["a", "b", "c"]).encode(table, ["a", "b", "c"]).tolist()
    assert Multilabel.label_matrix(table, ["tags"]).sum() == 4
    with pytest.raises(PipelineError, match=r"line 3, column 'c': 2 is not 0 or 1"):
        Multilabel.check_targets(table.assign(c=[0, 2, 1, 0]), ["a", "c"], "train.csv")


def test_init_tells_tags_and_0_1_columns_from_classes_and_numbers():
    words = pd.DataFrame({"tags": ["haze primary", "clear", "clear primary water"]})
    columns = pd.DataFrame({"Atelectasis": [0, 1, 0], "Effusion": [1, 1, 0], "age": [40, 52, 67]})
    assert "space-separated tags" in Multilabel.detect("image_csv", ["tags"], words)
    assert Multilabel.detect("image_csv", ["tags"], pd.DataFrame({"tags": ["cat", "dog"]})) is None
    assert Multilabel.claim_columns(columns, list(columns.columns)) == ["Atelectasis", "Effusion"]
    assert "2 columns of 0/1" in Multilabel.detect("image_csv", ["Atelectasis", "Effusion"], columns)


def test_submissions_as_tags_probabilities_or_0_1_columns():
    task = Multilabel(["a", "b"], "f1_samples").with_decision({"thresholds": [0.3, 0.6]})
    p = np.array([[0.4, 0.5], [0.1, 0.9], [0.2, 0.1]])
    ids = np.array(["x", "y", "z"])
    assert task.submission("tags", ids, p, None)["tags"].tolist() == ["a", "b", ""]
    sample = pd.DataFrame({"image": ids, "b": 0.0, "a": 0.0})
    assert task.submission("probabilities", ids, p, sample)["b"].tolist() == [0.5, 0.9, 0.1]
    assert task.submission("binary", ids, p, sample)[["a", "b"]].to_numpy().tolist() == [[1, 0], [0, 1], [0, 0]]


# --- a competition ----------------------------------------------------------------------------------


def test_a_tags_competition_from_init_to_a_scored_submission(tmp_path, monkeypatch, capsys):
    tags_competition(tmp_path / "data/planet", np.random.default_rng(0))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "data/planet", "-o", "planet.yaml"]) == 0
    written = yaml.safe_load(Path("planet.yaml").read_text())
    assert written["competition"]["task"] == "multilabel" and written["data"]["label_columns"] == ["tags"]
    assert written["data"]["feature_columns"] == ["site"] and written["predict"]["format"] == "tags"
    written["data"]["solution"] = "solution.csv"
    written["folds"] = {"n_splits": 2}
    written["model"] = {"name": "test_resnet", "image_size": 32, "pretrained": "none"}
    written["train"] = {"epochs": 4, "batch_size": 8, "workers": 0, "lr": 0.02, "device": "cpu", "metric": "f2_samples"}
    Path("planet.yaml").write_text(yaml.safe_dump(written))
    for stage in ("data", "folds", "train", "predict", "score", "report"):
        assert cli.main([stage, "-c", "planet.yaml"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert ["dot", "red", "stripes", "total"] in [row.split() for row in out.splitlines()]  # positives per fold
    assert Path("runs/planet/report/auc_per_label.png").exists()
    assert "decision fitted on every out-of-fold row: thresholds" in out and "the CV is nested" in out
    cv = yaml.safe_load(next(Path("runs/planet").rglob("cv.json")).read_text())
    assert cv["metric"] == "f2_samples" and len(cv["best"]["decision"]["thresholds"]) == 3
    submitted = pd.read_csv(next(Path("submissions/planet").glob("*.csv")), keep_default_na=False)
    assert list(submitted.columns) == ["image_name", "tags"] and len(submitted) == 24
    assert set(" ".join(submitted["tags"]).split()) <= set(TAGS)
    ledger = pd.read_csv("submissions/ledger.csv")
    assert ledger["cv_metric"].iloc[-1] == "f2_samples" and 0 <= ledger["local_score"].iloc[-1] <= 1


def findings_competition(root: Path, rng: np.random.Generator) -> None:
    """id plus a 0/1 column per finding, as the chest X-ray competitions ship them."""
    tags_competition(root, rng, train=48, test=16)
    for name in ("train.csv", "solution.csv"):
        table = pd.read_csv(root / name, keep_default_na=False)
        for tag in TAGS:
            table[tag] = table["tags"].str.split().map(lambda tags, tag=tag: int(tag in tags))
        table.drop(columns=["tags", "site"], errors="ignore").to_csv(root / name, index=False)
    sample = pd.read_csv(root / "sample_submission.csv")[["image_name"]]
    sample.assign(**dict.fromkeys(TAGS, 0)).to_csv(root / "sample_submission.csv", index=False)


def test_0_1_columns_blend_two_experiments_and_refit_the_thresholds_on_the_blend(tmp_path, monkeypatch, capsys):
    findings_competition(tmp_path / "data/xray", np.random.default_rng(1))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "data/xray", "-o", "xray.yaml"]) == 0
    written = yaml.safe_load(Path("xray.yaml").read_text())
    assert written["competition"]["task"] == "multilabel" and written["data"]["label_columns"] == list(TAGS)
    assert written["predict"]["format"] == "probabilities"
    written["data"] |= {"solution": "solution.csv"}
    written["predict"]["format"] = "binary"
    written["folds"] = {"n_splits": 2}
    written["model"] = {"name": "test_resnet", "image_size": 32, "pretrained": "none"}
    written["train"] = {"epochs": 2, "batch_size": 8, "workers": 0, "lr": 0.02, "device": "cpu", "full_fit": False}
    written["train"] |= {"metric": "f1_micro"}
    Path("xray.yaml").write_text(yaml.safe_dump(written))
    for stage in ("data", "folds"):
        assert cli.main([stage, "-c", "xray.yaml"]) == 0
    for experiment, loss in (("bce", "bce"), ("asl", "asymmetric")):
        assert cli.main(["train", "-c", "xray.yaml", f"train.experiment={experiment}", f"train.loss={loss}"]) == 0
    assert cli.main(["blend", "-c", "xray.yaml"]) == 0
    out = capsys.readouterr().out
    assert "optimise weights" in out and "nested CV" in out
    record = yaml.safe_load(Path("runs/xray/blends/blend.yaml").read_text())
    assert len(record["nested"]["decision"]["thresholds"]) == 3
    assert cli.main(["predict", "-c", "xray.yaml", "predict.blend=blend"]) == 0
    submitted = pd.read_csv(next(Path("submissions/xray").glob("*blend*.csv")))
    assert list(submitted.columns) == ["image_name", *TAGS] and set(submitted[list(TAGS)].stack()) <= {0, 1}
    assert cli.main(["score", "-c", "xray.yaml"]) == 0


def test_init_takes_no_answers_file_for_the_test_table(tmp_path, monkeypatch, capsys):
    """Planet shipped no test.csv: the test ids are the sample's; a file of answers beside
    (solution.csv, with every column of train.csv) is not a test table."""
    tags_competition(tmp_path / "planet", np.random.default_rng(0), train=12, test=4)
    (tmp_path / "planet" / "test.csv").unlink()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "planet", "-o", "planet.yaml"]) == 2  # site: a feature or a target? no test.csv says
    assert "2 candidates for data.label_columns: ['site', 'tags']" in capsys.readouterr().err
    assert cli.main(["init", "planet", "data.label_columns=[tags]", "-o", "planet.yaml"]) == 0
    written = yaml.safe_load(Path("planet.yaml").read_text())
    assert written["competition"]["task"] == "multilabel" and written["data"]["test_csv"] is None
