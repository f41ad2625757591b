import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ctrl_c_as_at_a_terminal

from pipeline.cli import main
from pipeline.errors import interrupt_held

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, data_dir: Path, **extra) -> Path:
    raw = {
        "competition": {"name": "tiny", "task": "classification"},
        "data": {"layout": "pixel_columns", "dir": str(data_dir)},
        "folds": {"n_splits": 3},
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_help_lists_the_stages():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True)
    for stage in ("data", "scrape", "folds", "tune", "train", "predict", "submit", "report"):
        assert f"\n  {stage} " in out.stdout


def test_user_error_is_one_line_without_traceback(tmp_path, pixel_columns_dir):
    config = tiny_config(tmp_path, pixel_columns_dir)
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "folds", "-c", str(config), "folds.kind=stratifed"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and "'folds.kind'" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("workers", ["0", "-3", "two"])
def test_workers_that_are_not_a_count_of_processes_are_one_line(workers, capsys):
    assert main(["tune", "-c", str(ROOT / "configs/digits.yaml"), "--workers", workers]) == 2
    assert capsys.readouterr().err == (
        f"error: WORKERS={workers!r}: the number of tuning processes is a whole number from 1\n"
    )


# `python -m pipeline` whose stage Ctrl-C interrupts (INTERRUPT) while a thread still runs: at
# exit, the thread runs a string of code through the C API, as a download thread importing
# Pillow's plugins did. That resets the flag by which CPython itself would end by SIGINT.
INTERRUPTED_WITH_A_THREAD_AT_EXIT = """
import ctypes, runpy, signal, sys, threading, time
import pipeline.cli
def late():
    time.sleep(0.3)
    ctypes.pythonapi.PyRun_SimpleString(b"pass")
def stage():
    INTERRUPT
threading.Thread(target=late).start()
pipeline.cli.main = stage
sys.argv = ["pipeline"]
runpy.run_module("pipeline", run_name="__main__")
"""


@pytest.mark.parametrize(
    "interrupt",
    [
        "signal.raise_signal(signal.SIGINT)",
        # what Python 3.11 makes of Ctrl-C in a class's __set_name__, as in torch's imports
        'raise RuntimeError("Error calling __set_name__") from KeyboardInterrupt()',
    ],
)
def test_an_interrupted_stage_is_one_line_and_ends_by_sigint_whatever_runs_at_exit(interrupt):
    script = INTERRUPTED_WITH_A_THREAD_AT_EXIT.replace("INTERRUPT", interrupt)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=ctrl_c_as_at_a_terminal
    )
    assert run.returncode == -signal.SIGINT and run.stderr == "interrupted\n", run.stderr  # a shell: 130


def test_an_error_in_the_cleanup_after_ctrl_c_is_still_an_error():
    script = INTERRUPTED_WITH_A_THREAD_AT_EXIT.replace(
        "INTERRUPT", "try:\n        raise KeyboardInterrupt\n    finally:\n        raise OSError('disk full')"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=ctrl_c_as_at_a_terminal
    )
    assert run.returncode == 1 and run.stderr.splitlines()[-1] == "OSError: disk full", run.stderr


def test_ctrl_c_while_libraries_load_takes_effect_once_they_have():
    loaded = []
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, even under nohup
    try:
        with pytest.raises(KeyboardInterrupt), interrupt_held():
            signal.raise_signal(signal.SIGINT)
            loaded.append("the rest of the imports")
        assert loaded == ["the rest of the imports"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outside)


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, pixel_columns_dir, capsys):
    config = tiny_config(tmp_path, pixel_columns_dir)
    (tmp_path / "runs").write_text("")  # a file where the folder belongs: unwritable even for root
    os.chdir(tmp_path)
    try:
        assert main(["folds", "-c", str(config)]) == 2
    finally:
        os.chdir(ROOT)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: [Errno") and "runs" in err


def test_data_and_folds_stages_write_outputs_and_resolved_config(tmp_path, pixel_columns_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, pixel_columns_dir)
    assert main(["data", "-c", str(config)]) == 0
    assert main(["folds", "-c", str(config), "folds.seed=3"]) == 0
    out = capsys.readouterr().out
    assert "30 train rows (8x8x1, cached)" in out and "folds: 3 folds (stratified, seed 3) of 30 rows" in out
    folds = pd.read_csv(tmp_path / "runs/tiny/folds.csv")
    assert list(folds.columns) == ["id", "label", "fold"] and len(folds) == 30
    resolved = yaml.safe_load((tmp_path / "runs/tiny/folds.config.yaml").read_text())
    assert resolved["folds"]["seed"] == 3 and resolved["folds"]["kind"] == "stratified"


def make(cwd: Path, *args: str) -> str:
    """Runs make as a user at a shell would, also when the tests themselves run under `make test`."""
    outer_make = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}
    env = {key: value for key, value in os.environ.items() if key not in outer_make}
    run = subprocess.run(
        ["make", "-f", str(ROOT / "Makefile"), *args], capture_output=True, text=True, cwd=cwd, env=env
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.skipif(not (ROOT / ".venv/bin/python").exists(), reason="Make targets run in the project's .venv")
def test_make_file_targets_rerun_only_what_changed(tmp_path, pixel_columns_dir):
    config = f"CONFIG={tiny_config(tmp_path, pixel_columns_dir)}"
    first = make(tmp_path, "data", "folds", config)
    assert "pipeline data" in first and "pipeline folds" in first
    assert "Nothing to be done" in make(tmp_path, "folds", config)
    assert "Nothing to be done" in make(tmp_path, "folds", config, "ARGS=train.epochs=3")  # not a folds setting
    assert "pipeline folds" in make(tmp_path, "folds", config, "ARGS=folds.seed=1")
    assert "pipeline data" not in make(tmp_path, "folds", config, "ARGS=folds.seed=2")
    assert len(pd.read_csv(tmp_path / "runs/tiny/folds.csv")) == 30


@pytest.mark.skipif(not (ROOT / ".venv/bin/python").exists(), reason="Make targets run in the project's .venv")
def test_make_takes_a_config_path_with_a_space_and_an_apostrophe(tmp_path, pixel_columns_dir):
    folder = tmp_path / "my comp" / "it's"
    folder.mkdir(parents=True)
    config = tiny_config(tmp_path, pixel_columns_dir).rename(folder / "tiny v2.yaml")
    assert "pipeline folds" in make(tmp_path, "folds", f"CONFIG={config}", "EXP=v2")
    assert "Nothing to be done" in make(tmp_path, "folds", f"CONFIG={config}", "EXP=v2")
    assert (tmp_path / "runs/tiny/folds.csv").exists()


@pytest.mark.skipif(not (ROOT / ".venv/bin/python").exists(), reason="Make targets run in the project's .venv")
def test_make_runs_data_again_when_the_competitions_files_change(tmp_path, class_folders_dir):
    competition = class_folders_dir  # the runs are made inside it too, and left out of its files
    config = f"CONFIG={tiny_config(tmp_path, competition, data={'layout': 'class_folders', 'dir': str(competition)})}"
    make(tmp_path, "data", "folds", config)
    assert "Nothing to be done" in make(tmp_path, "folds", config)
    os.utime(competition / "sample_submission.csv")  # a table touched but unchanged: its content decides
    assert "Nothing to be done" in make(tmp_path, "folds", config)
    (competition / "train/maize/m0.png").rename(competition / "train/wheat/m0.png")  # a label changed
    assert "pipeline data" in make(tmp_path, "folds", config)
    assert (pd.read_csv(tmp_path / "runs/tiny/folds.csv").set_index("id").loc["m0", "label"]) == "wheat"
    shutil.copy(competition / "train/wheat/w1.png", competition / "train/wheat/w9.png")  # an image added
    assert "pipeline folds" in make(tmp_path, "folds", config)
    assert len(pd.read_csv(tmp_path / "runs/tiny/folds.csv")) == 11
    pd.DataFrame({"file": ["a.png", "b.png"], "species": "wheat"}).to_csv(
        competition / "sample_submission.csv", index=False
    )
    assert "pipeline data" in make(tmp_path, "data", config)


@pytest.mark.skipif(not (ROOT / ".venv/bin/python").exists(), reason="Make targets run in the project's .venv")
def test_make_train_merges_best_yaml_and_never_starts_a_search(tmp_path, pixel_columns_dir):
    config, changed = f"CONFIG={tiny_config(tmp_path, pixel_columns_dir)}", "ARGS=train.epochs=3"
    make(tmp_path, "data", "folds", config)
    best = tmp_path / "runs/tiny/tiny/tune/best.yaml"
    best.parent.mkdir(parents=True)
    best.write_text("train.lr: 0.002\n")
    planned = make(tmp_path, "-n", "train", config, changed)  # a train and tune setting changed
    assert "pipeline train" in planned and "pipeline tune" not in planned
    (tmp_path / "runs/tiny/tiny/cv.json").write_text("{}")
    assert "pipeline train" not in make(tmp_path, "-n", "train", config, changed)
    best.write_text("train.lr: 0.003\n")  # a new search's result retrains
    assert "pipeline train" in make(tmp_path, "-n", "train", config, changed)


@pytest.mark.skipif(not (ROOT / ".venv/bin/python").exists(), reason="Make targets run in the project's .venv")
def test_make_trains_experiments_side_by_side_and_submits_their_blend(tmp_path, digits_dir):
    config = tiny_config(
        tmp_path,
        digits_dir,
        folds={"n_splits": 2},
        model={"name": "test_resnet", "image_size": 32, "pretrained": "none"},
        train={"epochs": 1, "batch_size": 8, "workers": 0, "full_fit": False},
    )
    given = f"CONFIG={config}"
    make(tmp_path, "train", given, "EXP=a")
    make(tmp_path, "train", given, "EXP=b", "ARGS=train.lr=0.02")
    assert "Nothing to be done" in make(tmp_path, "train", given, "EXP=a")
    listed = make(tmp_path, "experiments", given).split("experiment ", 1)[1].splitlines()[1:]
    assert sorted(line.split()[0] for line in listed) == ["a", "b"]
    assert "nested CV" in make(tmp_path, "blend", given, "BLEND=a b")
    make(tmp_path, "predict", given, "BLEND=a+b")
    assert len(list((tmp_path / "submissions/tiny").glob("*_blend-a+b_*.csv"))) == 1
