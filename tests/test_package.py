"""Kaggle code competitions: the bundle `make package` builds, and its offline prediction."""

import json

import nbformat
import pandas as pd
from conftest import run, tiny

from pipeline import config as C
from pipeline import offline, package, predict
from pipeline.paths import Paths


def test_the_package_holds_the_submitted_models_and_its_offline_prediction_equals_make_predict(
    digits_dir, tmp_path, monkeypatch
):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir)}, full_fit=False)
    cfg = C.with_overrides(cfg, {"predict.models": "folds", "package.owner": "someone"}, "test")
    run(cfg, tmp_path, monkeypatch)
    package.run(cfg)
    files = Paths.of(cfg).package
    dataset = files.dataset
    assert sorted(p.relative_to(dataset.root).as_posix() for p in dataset.root.glob("models/*/*/model.pt")) == [
        "models/tiny/fold0/model.pt",
        "models/tiny/fold1/model.pt",
    ]
    assert [w.name.split("-")[0] for w in dataset.wheels.glob("*.whl")] == ["pipeline"]
    assert json.loads(dataset.metadata.read_text())["id"] == "someone/tiny-models"
    kernel = json.loads(files.kernel_metadata.read_text())
    assert kernel["enable_internet"] is False and kernel["competition_sources"] == ["tiny"]
    assert kernel["dataset_sources"] == ["someone/tiny-models"] and kernel["code_file"] == "tiny-inference.ipynb"
    nbformat.validate(nbformat.read(files.notebook("tiny-inference"), as_version=4))

    predict.run(cfg)
    submitted = pd.read_csv(sorted((tmp_path / "submissions/tiny").glob("*.csv"))[-1])
    expected = pd.read_csv(files.expected_submission)
    pd.testing.assert_frame_equal(expected, submitted)
    out = offline.submit(dataset.root, digits_dir, tmp_path / "working" / "submission.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out), submitted)
