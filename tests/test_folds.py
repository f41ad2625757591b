import numpy as np
import pandas as pd
import pytest
from conftest import KEYPOINTS

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.stages import folds as F


def classification_table(rng, n=103, classes=(0, 1, 2, 3)) -> pd.DataFrame:
    labels = rng.choice(classes, size=n, p=[0.5, 0.25, 0.15, 0.1])
    return pd.DataFrame({"id": np.arange(n), "label": labels, "person": rng.integers(0, 20, n)})


def keypoint_table(rng, n=120) -> pd.DataFrame:
    table = pd.DataFrame(rng.uniform(0, 96, (n, 4)), columns=KEYPOINTS)
    table.loc[rng.random(n) < 0.7, KEYPOINTS[2:]] = np.nan  # most rows partly labelled, like Facial Keypoints
    table.insert(0, "id", np.arange(n))
    return table


@pytest.mark.parametrize("n_splits", [3, 5])
def test_stratified_class_counts_differ_by_at_most_one(rng, n_splits):
    table = classification_table(rng)
    folds = F.assign_folds(table, ["label"], C.Folds(n_splits=n_splits, kind="stratified"), "classification")
    counts = pd.crosstab(folds, table["label"])
    assert (counts.max() - counts.min()).max() <= 1
    assert sorted(set(folds)) == list(range(n_splits))


def test_deterministic_for_a_seed(rng):
    table = classification_table(rng)
    cfg = C.Folds(kind="stratified", seed=7)
    first, again = (F.assign_folds(table, ["label"], cfg, "classification") for _ in range(2))
    other = F.assign_folds(table, ["label"], C.Folds(kind="stratified", seed=8), "classification")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_group_keeps_each_person_in_one_fold(rng):
    table = classification_table(rng)
    folds = F.assign_folds(table, ["label"], C.Folds(kind="group", group_column="person"), "classification")
    assert (pd.Series(folds).groupby(table["person"]).nunique() == 1).all()
    keypoints = keypoint_table(rng).assign(person=lambda t: t["id"] % 10)
    folds = F.assign_folds(keypoints, KEYPOINTS, C.Folds(kind="group", group_column="person"), "keypoints")
    assert (pd.Series(folds).groupby(keypoints["person"]).nunique() == 1).all()


def test_group_errors_name_the_column(rng):
    table = classification_table(rng)
    with pytest.raises(PipelineError, match="group_column"):
        F.assign_folds(table, ["label"], C.Folds(kind="group"), "classification")
    with pytest.raises(PipelineError, match="'face'"):
        F.assign_folds(table, ["label"], C.Folds(kind="group", group_column="face"), "classification")


def test_binned_on_missing_pattern_spreads_partly_labelled_rows(rng):
    table = keypoint_table(rng)
    folds = F.assign_folds(table, KEYPOINTS, C.Folds(kind="stratified_binned"), "keypoints")
    partly = table[KEYPOINTS[2]].isna()
    per_fold = pd.crosstab(folds, partly)
    assert (per_fold.max() - per_fold.min()).max() <= 1


def test_binned_on_target_mean(rng):
    table = keypoint_table(rng)
    cfg = C.Folds(kind="stratified_binned", stratify_on="target_mean", n_bins=4)
    bins = F.strata(table, KEYPOINTS, cfg, "keypoints")
    assert bins.nunique() == 4
    folds = F.assign_folds(table, KEYPOINTS, cfg, "keypoints")
    assert (pd.crosstab(folds, bins).max() - pd.crosstab(folds, bins).min()).max() <= 1


def test_multilabel(rng):
    labels = (rng.random((90, 3)) < [0.5, 0.2, 0.1]).astype(int)
    table = pd.DataFrame(labels, columns=["a", "b", "c"]).assign(id=range(90))
    folds = F.assign_folds(table, ["a", "b", "c"], C.Folds(kind="multilabel", n_splits=3), "classification")
    positives = pd.DataFrame(labels).groupby(folds).sum()
    assert (positives.max() - positives.min()).max() <= 1
    table.loc[4, "b"] = 2
    with pytest.raises(PipelineError, match="'b'"):
        F.assign_folds(table, ["a", "b", "c"], C.Folds(kind="multilabel"), "classification")


def test_kfold_and_too_few_rows(rng):
    table = keypoint_table(rng, n=10)
    folds = F.assign_folds(table, KEYPOINTS, C.Folds(kind="kfold"), "keypoints")
    assert np.bincount(folds).tolist() == [2, 2, 2, 2, 2]
    with pytest.raises(PipelineError, match="n_splits=5"):
        F.assign_folds(table.head(3), KEYPOINTS, C.Folds(kind="kfold"), "keypoints")


def test_stratified_refuses_keypoints(rng):
    with pytest.raises(PipelineError, match="stratified_binned"):
        F.assign_folds(keypoint_table(rng), KEYPOINTS, C.Folds(kind="stratified"), "keypoints")


def test_extra_rows_get_fold_minus_one(rng, tmp_path):
    table = classification_table(rng, n=20)
    manifest = tmp_path / "extra.csv"
    pd.DataFrame(
        {
            "url": ["u1", "u2", "u3"],
            "label": [1, 2, 1],
            "status": ["kept", "corrupt", "kept"],
            "path": ["extra/1/a.png", "", "extra/1/b.png"],
        }
    ).to_csv(manifest, index=False)
    folds = F.assign_folds(table, ["label"], C.Folds(n_splits=2), "classification")
    out = F.fold_table(table, ["label"], folds, F.read_extra(manifest, ["label"]))
    extra = out[out["fold"] == F.EXTRA_FOLD]
    assert extra["id"].tolist() == ["extra/1/a.png", "extra/1/b.png"]
    assert list(out.columns) == ["id", "label", "fold"]


def test_an_empty_scrape_manifest_is_no_extra_rows_for_any_task(faces_dir, tmp_path, monkeypatch):
    """`make scrape train` on a keypoint competition: scrape writes a manifest with no rows."""
    from conftest import tiny

    from pipeline.paths import Paths
    from pipeline.stages.scrape import COLUMNS

    cfg = tiny(
        {"layout": "pixel_string", "dir": str(faces_dir), "sample_submission": None, "lookup_table": None}, "keypoints"
    )
    monkeypatch.chdir(tmp_path)
    manifest = Paths.of(cfg).extra_csv
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns=COLUMNS).to_csv(manifest, index=False)
    F.run(cfg)
    assert (pd.read_csv(Paths.of(cfg).folds_csv)["fold"] >= 0).all()
    pd.DataFrame([{"label": "cat", "path": "extra/cat/a.png", "status": "kept"}], columns=COLUMNS).to_csv(
        manifest, index=False
    )
    with pytest.raises(
        PipelineError, match="scraped images come with a class; a keypoints competition cannot use them"
    ):
        F.run(cfg)


def test_more_splits_than_every_class_has_rows_is_one_error(rng):
    table = classification_table(rng, n=30, classes=(0, 1, 2, 3))
    with pytest.raises(PipelineError, match=r"folds.n_splits=25 \(folds.kind=stratified\): n_splits=25 cannot be"):
        F.assign_folds(table, ["label"], C.Folds(n_splits=25, kind="stratified"), "classification")
