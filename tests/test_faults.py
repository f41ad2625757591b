"""Fault injection (slow, run in CI): `kill -9` at three seeded moments in make scrape, train and
tune (each a seeded delay after the run shows progress), then a re-run, must end where an
uninterrupted run ends; Ctrl-C must end each stage in one
line, without a traceback. RELIABILITY.md records the outcomes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ctrl_c_as_at_a_terminal, tiny
from optuna.trial import TrialState
from test_scrape import competition, config, site  # noqa: F401 (fixtures)

from pipeline import config as C
from pipeline import study as studies
from pipeline.paths import Paths

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
MOMENTS_SEED = 19


def stage(name: str, config_file: Path, cwd: Path, output=subprocess.PIPE) -> subprocess.Popen:
    """`python -m pipeline NAME` in its own process group, as a shell would start it; NAME may
    carry options ("tune --workers 2")."""
    name, *options = name.split()
    command = [sys.executable, "-m", "pipeline", name, "-c", str(config_file), *options]
    return subprocess.Popen(
        command, cwd=cwd, stdout=output, stderr=output, start_new_session=True, preexec_fn=ctrl_c_as_at_a_terminal
    )


def killed_mid_run(start, under_way, kill, delays: list[float]) -> int:
    """For each delay: start a run, wait until `under_way()` says it has done some work, wait
    the delay, and kill it there. A moment is a point in the work, not a wall-clock time: a
    re-run resumes, so a clock would find less and less left to interrupt. Returns the kills
    that landed before the run ended."""
    landed = 0
    for delay in delays:
        process, before = start(), under_way()
        while under_way() == before and process.poll() is None:
            time.sleep(0.02)
        time.sleep(delay)
        if process.poll() is None:
            kill(process)
            landed += 1
        process.wait()
    return landed


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)


def finished(name: str, config_file: Path, cwd: Path) -> None:
    process = stage(name, config_file, cwd)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()


def seeded_delays(low: float, high: float) -> list[float]:
    return np.random.default_rng(MOMENTS_SEED).uniform(low, high, 3).tolist()


def write_config(cfg, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(cfg.to_yaml())
    return path


def test_train_killed_three_times_ends_with_the_uninterrupted_cv(digits_dir, tmp_path):
    # An epoch of 36 rows takes about 50 ms: ten per fit leave work past three kills, each at most
    # 0.2 s after an epoch; with four, a fast machine finished before the third.
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, epochs=10)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for folder in (clean, killed):
        finished("folds", write_config(cfg, folder), folder)
    finished("train", clean / "tiny.yaml", clean)

    def epochs_done() -> int:  # metrics.csv gains a row per finished epoch
        return sum(len(p.read_text().splitlines()) for p in killed.glob("runs/**/metrics.csv"))

    start = lambda: stage("train", killed / "tiny.yaml", killed, subprocess.DEVNULL)  # noqa: E731
    landed = killed_mid_run(start, epochs_done, kill_group, seeded_delays(0.0, 0.2))
    print(f"train: {landed} of 3 kills landed mid-run, each after an epoch and a seeded delay")
    assert landed == 3
    finished("train", killed / "tiny.yaml", killed)
    cv = Paths.of(cfg).cv_json
    assert json.loads((killed / cv).read_text()) == json.loads((clean / cv).read_text())


def test_tune_killed_three_times_ends_with_exactly_n_trials(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    searched = {"n_trials": 4, "epochs": 2, "pruner": "none", "space": space}
    cfg = C.validate({**cfg.model_dump(mode="json"), "tune": searched})
    config_file = write_config(cfg, tmp_path)
    finished("folds", config_file, tmp_path)
    monkeypatch.chdir(tmp_path)

    def journal_written() -> int:  # a worker writes the journal as it takes a trial
        journal = Paths.of(cfg).tune_file("journal")
        return journal.stat().st_size if journal.exists() else 0

    start = lambda: stage("tune", config_file, tmp_path, subprocess.DEVNULL)  # noqa: E731
    landed = killed_mid_run(start, journal_written, kill_group, seeded_delays(0.2, 1.0))
    print(f"tune: {landed} of 3 kills landed mid-run, each a seeded delay into a trial")
    assert landed == 3
    finished("tune", config_file, tmp_path)
    study = studies.create_study(cfg, Paths.of(cfg))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    print(f"tune: {len(done)} finished trials, {len(study.trials) - len(done)} failed by a kill and run again")
    assert len(done) == 4 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def kept(competition_dir: Path) -> list[str]:
    manifest = pd.read_csv(competition_dir / "extra.csv", dtype=str, keep_default_na=False)
    return sorted(manifest.loc[manifest["status"] == "kept", "sha256"])


def test_make_scrape_killed_three_times_keeps_the_clean_scrapes_set(competition, site, tmp_path):  # noqa: F811
    site.delay = 0.3
    cfg = config(competition, site, workers=4)
    config_file = write_config(cfg, tmp_path / "config")
    make = ["make", "-f", str(ROOT / "Makefile"), "scrape", f"CONFIG={config_file}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
    subprocess.run(make, cwd=tmp_path, env=env, check=True, capture_output=True)
    clean = kept(competition)
    for path in [competition / "extra.csv", competition / "extra.progress.csv", competition / "extra"]:
        subprocess.run(["rm", "-rf", str(path)], check=True)
    logs = []

    def start() -> subprocess.Popen:
        logs.append(tmp_path / f"make-{len(logs)}.log")
        return subprocess.Popen(make, cwd=tmp_path, env=env, stdout=logs[-1].open("w"), stderr=subprocess.STDOUT)

    def links_collected() -> int:  # each run saves the progress manifest once its links are in
        progress = competition / "extra.progress.csv"
        return progress.stat().st_mtime_ns if progress.exists() else 0

    def kill_the_scraper(make_run: subprocess.Popen) -> None:  # make stays: it must not delete a thing
        for pid in _descendants(make_run.pid):
            os.kill(pid, signal.SIGKILL)

    landed = killed_mid_run(start, links_collected, kill_the_scraper, seeded_delays(0.0, 0.3))
    assert not any("Deleting file" in log.read_text() for log in logs)
    assert landed == 3
    subprocess.run(make, cwd=tmp_path, env=env, check=True, capture_output=True)
    print(f"scrape: {landed} of 3 kills landed mid-run; {len(kept(competition))} kept, clean scrape {len(clean)}")
    assert kept(competition) == clean


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`: its children, theirs, and so on."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_of[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parent_of.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.mark.parametrize(
    "name, moment",
    [
        ("train", "loading"),
        ("train", "working"),
        ("tune", "working"),
        ("tune --workers 2", "working"),
        ("scrape", "working"),
    ],
)
def test_ctrl_c_ends_a_stage_in_one_line(name, moment, digits_dir, competition, site, tmp_path):  # noqa: F811
    """The interrupt comes while the libraries load (a second in), or once the stage shows its
    work: a clock alone raced a scrape that ended first."""
    if name == "scrape":
        site.delay = 0.3
        cfg = config(competition, site)
    else:
        cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, epochs=20)
    config_file = write_config(cfg, tmp_path)
    if name != "scrape":
        finished("folds", config_file, tmp_path)
    process = stage(name, config_file, tmp_path)
    if moment == "loading":
        time.sleep(1.0)
    else:
        while not working(name, site, Paths.of(cfg), tmp_path) and process.poll() is None:
            time.sleep(0.02)
    assert process.poll() is None, f"{name} ended before the interrupt"
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C at a terminal sends: to the whole group
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert process.returncode == -signal.SIGINT and lines[-1] == "interrupted", err.decode()  # a shell: 130
    assert lines.count("interrupted") == 1 and "Traceback" not in err.decode()  # one line, however many processes


def working(name: str, site, paths: Paths, cwd: Path) -> bool:  # noqa: F811
    """Whether the stage has begun its work: a request to the site, a fit, a trial's fit."""
    if name == "scrape":
        return sum(site.requests.values()) > 0
    if name == "train":
        return (cwd / paths.fold(0).metrics).exists()
    return any((cwd / paths.tune_dir).glob(f"**/{paths.fold(0).metrics.name}"))
