"""`make push`: every Kaggle command line the pipeline builds, checked against the installed
`kaggle` package's own argument parser, with no server contacted; and the push itself."""

import argparse
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_config

from pipeline.errors import PipelineError
from pipeline.files import tree_sha256
from pipeline.kaggle import kaggle_cli
from pipeline.paths import Paths
from pipeline.records import Bundle, StatedCV
from pipeline.stages import push


class Parsed(Exception):
    """Raised in place of the CLI's next step (credentials, then the server) once it has parsed."""


def kaggle_parses(argv: list[str], monkeypatch) -> argparse.Namespace:
    """The namespace the installed Kaggle CLI makes of `argv`; argparse exits on a bad one."""
    import kaggle.cli  # its import tries the credentials and carries on without them

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, argv, namespace))

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(Parsed) as parsed:
            kaggle.cli.main()
    return parsed.value.args[0]


def test_every_command_line_parses_with_the_installed_kaggle_cli(tmp_path, monkeypatch):
    folder = tmp_path / "dataset"
    downloaded = kaggle_parses(kaggle_cli.download_args("x", folder), monkeypatch)
    assert (downloaded.competition_opt, downloaded.path) == ("x", str(folder))
    file_submitted = kaggle_parses(kaggle_cli.submit_args("x", folder / "s.csv", "CV 0.9"), monkeypatch)
    assert (file_submitted.competition_opt, file_submitted.file_name) == ("x", str(folder / "s.csv"))
    assert kaggle_parses(kaggle_cli.submissions_args("x"), monkeypatch).csv_display
    assert kaggle_parses(kaggle_cli.dataset_status_args("me/x-models"), monkeypatch).dataset == "me/x-models"
    created = kaggle_parses(kaggle_cli.dataset_create_args(folder, public=True), monkeypatch)
    assert created.folder == str(folder) and created.dir_mode == "zip" and created.public
    version = kaggle_parses(kaggle_cli.dataset_version_args(folder, "CV 0.9"), monkeypatch)
    assert version.version_notes == "CV 0.9" and version.dir_mode == "zip"
    pushed = kaggle_parses(kaggle_cli.kernel_push_args(folder, "NvidiaTeslaT4"), monkeypatch)
    assert pushed.folder == str(folder) and pushed.acc == "NvidiaTeslaT4"
    assert kaggle_parses(kaggle_cli.kernel_status_args("me/x-inference"), monkeypatch).kernel == "me/x-inference"
    submitted = kaggle_parses(kaggle_cli.kernel_submit_args("x", "me/x-inference", 3, "CV 0.9"), monkeypatch)
    assert (submitted.competition, submitted.kernel, submitted.version) == ("x", "me/x-inference", "3")
    assert submitted.file_name == "submission.csv" and submitted.message == "CV 0.9"


FAKE_KAGGLE = """#!/bin/sh
# A fake `kaggle` executable for this test: it records its arguments and answers as the real
# CLI does, so no server is contacted.
echo "$@" >> "$CALLS"
case "$1 $2" in
  "datasets status") if [ -e "$CREATED" ]; then echo ready; else echo "404 Not Found" >&2; exit 1; fi ;;
  "datasets create") touch "$CREATED"; echo "Dataset is being created" ;;
  "kernels push") echo "Kernel version 3 successfully pushed.  Please check progress at https://www.kaggle.com/x" ;;
  "kernels status") echo 'me/tiny-inference has status "KernelWorkerStatus.COMPLETE"' ;;
  "competitions submit") echo "Successfully submitted to tiny" ;;
esac
"""


def test_push_uploads_a_rehearsed_package_and_records_the_kernel_version(tmp_path, monkeypatch):
    """With a fake `kaggle` executable on PATH (FAKE_KAGGLE): the flow and the ledger row; the
    command lines themselves are checked against the real CLI above."""
    monkeypatch.chdir(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kaggle").write_text(FAKE_KAGGLE)
    (bin_dir / "kaggle").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("CREATED", str(tmp_path / "created"))
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    cfg = make_config({"layout": "pixel_columns", "dir": str(tmp_path)}, package={"owner": "me"})
    files = Paths.of(cfg).package
    stated = StatedCV("accuracy", 0.9, 0.01, "OOF of the fold models", "folds", "tiny")
    Bundle([], stated, ["0", "1"]).save(files.dataset.bundle)
    files.kernel.mkdir(parents=True)
    with pytest.raises(PipelineError, match="run `make rehearse`"):
        push.run(cfg)
    rehearsed = tree_sha256(files.root)
    files.rehearsal.write_text(json.dumps({"summary": "passed", "files": rehearsed}))
    (files.kernel / "tiny-inference.ipynb").write_text("{}")  # edited after the rehearsal
    with pytest.raises(PipelineError, match=r"kernel/tiny-inference.ipynb added since its last passing rehearsal"):
        push.run(cfg)
    rehearsed = tree_sha256(files.root, leave_out=(files.rehearsal,))
    files.rehearsal.write_text(json.dumps({"summary": "passed", "files": rehearsed}))
    push.run(cfg)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [
        ["datasets", "status"],
        ["datasets", "create"],
        ["datasets", "status"],
        ["kernels", "push"],
        ["kernels", "status"],
        ["competitions", "submit"],
    ]
    assert "-k me/tiny-inference -v 3" in calls[-1]
    row = pd.read_csv(Path("submissions/ledger.csv")).iloc[-1]
    assert row["kernel"] == "me/tiny-inference" and row["kernel_version"] == 3 and row["cv_score"] == 0.9
