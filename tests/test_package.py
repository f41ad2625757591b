"""Kaggle code competitions: the bundle `make package` builds, and its offline prediction."""

import contextlib
import json
import os
import re
import socket
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import run, tiny

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.kaggle import offline
from pipeline.paths import Paths
from pipeline.records import Bundle
from pipeline.stages import package, predict, rehearse


def test_the_package_holds_the_submitted_models_and_its_offline_prediction_equals_make_predict(
    digits_dir, tmp_path, monkeypatch, capsys
):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir)}, full_fit=False)
    cfg = C.with_overrides(cfg, {"predict.models": "folds", "package.owner": "someone"}, "test")
    run(cfg, tmp_path, monkeypatch)
    package.run(cfg)
    said = capsys.readouterr().out  # each candidate's inference time, as predicting the test images took
    assert re.search(r"  tiny \(CV [0-9.]+\): folds 2 model\(s\) [0-9.]+ s\n", said), said
    assert re.search(r"  this package: 2 model\(s\) [0-9.]+ s, about \d+ s on 5 hidden test images, of", said)
    files = Paths.of(cfg).package
    dataset = files.dataset
    assert sorted(p.relative_to(dataset.root).as_posix() for p in dataset.root.glob("models/*/*/model.pt")) == [
        "models/tiny/fold0/model.pt",
        "models/tiny/fold1/model.pt",
    ]
    assert [w.name.split("-")[0] for w in dataset.wheels.glob("*.whl")] == ["pipeline"]
    assert Bundle.load(dataset.bundle).labels == ["0", "1", "2"]
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


@contextlib.contextmanager
def listening():
    """A TCP server on loopback that accepts connections, for the block; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def try_to_connect(notebook: Path, port: int, record: Path) -> None:
    """A cell, after the install cell, that tries the port and writes what happened to `record`."""
    book = nbformat.read(notebook, as_version=4)
    code = (
        "import socket, pathlib\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
        "    tried = 'reached'\n"
        "except OSError as error:\n"
        "    tried = f'unreachable: {error}'\n"
        f"pathlib.Path({str(record)!r}).write_text(tried)"
    )
    first = next(i for i, cell in enumerate(book.cells) if cell.cell_type == "code")
    book.cells.insert(first + 1, nbformat.v4.new_code_cell(code))
    nbformat.write(book, notebook)


def test_the_rehearsal_runs_the_notebook_offline_and_names_what_is_missing(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir)}, full_fit=False)
    cfg = C.with_overrides(cfg, {"predict.models": "folds"}, "test")
    run(cfg, tmp_path, monkeypatch)
    package.run(cfg)
    with listening() as port:  # a server here that the notebook, network cut, must not reach
        tried = tmp_path / "network.txt"
        try_to_connect(Paths.of(cfg).package.notebook("tiny-inference"), port, tried)
        rehearse.run(cfg)
    assert tried.read_text().startswith("unreachable: ")
    assert "submission.csv equals make predict's (5 rows)" in capsys.readouterr().out
    package.run(cfg)  # the notebook as packaged again
    image = [name for name in cfg.package.kaggle_image if name != "albumentations"]
    with pytest.raises(PipelineError, match="No module named 'albumentations'.*add its distribution to package.wheels"):
        rehearse.run(C.with_overrides(cfg, {"package.kaggle_image": image}, "test"))
    wheel = next(Paths.of(cfg).package.dataset.wheels.glob("pipeline-*.whl"))
    wheel.unlink()
    with pytest.raises(PipelineError, match=f"wheel {wheel.name} is not in"):
        rehearse.run(cfg)


def checked(cfg: C.Config, timing: rehearse.Timing) -> str:
    return rehearse.check_time(cfg, rehearse.project(cfg, timing), timing)


def test_the_projected_time_is_held_to_the_stated_limit(digits_dir):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir)})
    timing = rehearse.Timing(install=10.0, predict=50.0, wall=100.0)  # on the 5 public test images
    hidden = C.with_overrides(cfg, {"package.hidden_scale": 100, "package.time_limit": "2h"}, "test")
    assert "projected to 500 hidden test images: 1.40 h" in checked(hidden, timing)
    rows = C.with_overrides(cfg, {"package.hidden_test_rows": 10}, "test")
    assert "projected to 10 hidden test images: 150 s" in checked(rows, timing)
    with pytest.raises(PipelineError, match="over package.time_limit=1h"):
        checked(C.with_overrides(hidden, {"package.time_limit": "1h"}, "test"), timing)


def test_a_machine_without_user_namespaces_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    """Unprivileged Docker or Ubuntu 24.04's AppArmor refuse `unshare -rn`: the rehearsal says
    so, and what would make it work, and never runs the notebook with the network on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "unshare").write_text(
        "#!/bin/sh\necho 'unshare: write failed /proc/self/uid_map: Operation not permitted' >&2\nexit 1\n"
    )
    (bin_dir / "unshare").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(PipelineError, match=r"which this machine refuses \(unshare: write failed .*Operation not per"):
        rehearse.check_network_cut()
    (bin_dir / "unshare").unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(PipelineError, match="`unshare -rn`, which is not on PATH"):
        rehearse.check_network_cut()


@pytest.mark.slow  # a second wheel build
def test_a_stacked_multilabel_blend_packs_its_trees_and_thresholds_and_predicts_offline_as_make_predict(
    tmp_path, monkeypatch
):
    from test_multilabel import tags_competition

    from pipeline import cli

    tags_competition(tmp_path / "data/planet", np.random.default_rng(0), train=40, test=8)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "data/planet", "-o", "planet.yaml"]) == 0
    settings = ["folds.n_splits=2", "model.name=test_resnet", "model.image_size=32", "model.pretrained=none"]
    settings += ["train.epochs=1", "train.batch_size=8", "train.workers=0", "train.full_fit=false"]
    settings += ["package.owner=someone", "blend.method=stack", "blend.name=stack", "predict.blend=stack"]
    for stage in ("data", "folds", "train", "blend", "package", "predict"):
        assert cli.main([stage, "-c", "planet.yaml", *settings]) == 0
    dataset = Path("package/planet/dataset")
    bundle = Bundle.load(dataset / "bundle.yaml")
    assert bundle.second_level == "second_level.pkl" and bundle.features == ["site"]
    assert len(bundle.decision["thresholds"]) == 3
    submitted = pd.read_csv(next(Path("submissions/planet").glob("*.csv")), keep_default_na=False)
    out = offline.submit(dataset, tmp_path / "data/planet", tmp_path / "working" / "submission.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out, keep_default_na=False), submitted)


@pytest.mark.slow  # a wheel build, a download of the decoders' wheel and an offline notebook run
def test_a_segmentation_package_bundles_its_decoders_and_rehearses_offline(cells_config, capsys):
    from pipeline import cli

    settings = ["train.full_fit=false", "predict.models=folds", "package.owner=someone"]
    for stage in ("data", "folds", "train", "package", "rehearse"):
        assert cli.main([stage, "-c", str(cells_config), *settings]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    wheels = sorted(w.name.split("-")[0] for w in Path("package/cells/dataset/wheels").glob("*.whl"))
    assert wheels == ["pipeline", "segmentation_models_pytorch"]
    assert "submission.csv equals make predict's (6 rows)" in out
    bundle = Bundle.load(Path("package/cells/dataset/bundle.yaml"))
    assert [rule["threshold"] for rule in bundle.decision["rules"]] and bundle.labels == ["rle_mask"]
