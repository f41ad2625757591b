"""Tuning: a tiny space, test_resnet, one epoch per fold, two folds."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import tiny
from optuna.trial import TrialState

from pipeline import config as C
from pipeline import study as studies
from pipeline.learn import engine
from pipeline.paths import Paths
from pipeline.stages import folds, train, tune

SPACE = {
    "train.lr": {"type": "float", "low": 0.001, "high": 0.02, "log": True},
    "aug.rotate": {"type": "float", "low": 2, "high": 15, "optional": True},
}


def tune_config(digits_dir, n_trials=3, storage=None, epochs=1, **tune_keys):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)
    raw = cfg.model_dump(mode="json")
    raw["tune"] = {"n_trials": n_trials, "space": SPACE, "epochs": epochs, "storage": storage, "pruner": "none"}
    return type(cfg).model_validate({**raw, "tune": {**raw["tune"], **tune_keys}})


def load(cfg) -> optuna.Study:
    return studies.create_study(cfg, Paths.of(cfg))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_best_yaml_is_written_and_used_by_train(digits_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tune_config(digits_dir)
    folds.run(cfg)
    tune.run(cfg)
    best = yaml.safe_load((tmp_path / "runs/tiny/tiny/tune/best.yaml").read_text())
    assert set(best) == {"train.lr", "aug.rotate"}
    study = load(cfg)
    assert states(study) == ["COMPLETE"] * 3
    first = study.trials[0]  # the config's own values come first, so the search can only improve on them
    assert first.user_attrs["baseline"] and first.user_attrs["overrides"] == {"train.lr": 0.01, "aug.rotate": 10}
    assert "the config's own values" in (tmp_path / "runs/tiny/tiny/tune/best.yaml").read_text().splitlines()[0]
    assert (tmp_path / "runs/tiny/tiny/tune/trial-0/config.yaml").exists()
    assert (tmp_path / "runs/tiny/tiny/tune/trial-2/fold1/metrics.csv").exists()
    assert not list((tmp_path / "runs/tiny/tiny/tune").rglob("*.pt"))  # weights are not kept
    train.run(cfg)
    resolved = yaml.safe_load((tmp_path / "runs/tiny/tiny/train.config.yaml").read_text())
    assert resolved["train"]["lr"] == pytest.approx(best["train.lr"]) and "using the tuned settings" in (
        capsys.readouterr().out
    )
    tune.run(cfg)  # a second run finds the study full and adds nothing
    assert len(load(cfg).trials) == 3
    tune.report(cfg)
    assert (tmp_path / "runs/tiny/tiny/tune/history.png").stat().st_size > 1000


def test_absurd_learning_rate_fails_its_trial_not_the_study(digits_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tune_config(digits_dir)
    folds.run(cfg)
    load(cfg).enqueue_trial({"train.lr": 1e9, "aug.rotate:on": False}, skip_if_exists=False)
    with pytest.warns(UserWarning, match="out of range"):  # Optuna's word on the enqueued value
        tune.run(cfg)
    study = load(cfg)
    first = study.trials[0]
    assert first.state in (TrialState.FAIL, TrialState.PRUNED)
    assert first.state == TrialState.PRUNED or "diverged" in first.user_attrs["fail_reason"]
    assert states(study).count("COMPLETE") == 2


def test_killed_study_restarts_to_the_requested_trials(digits_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tune_config(digits_dir, n_trials=3, epochs=6)
    folds.run(cfg)
    config = tmp_path / "tune.yaml"
    config.write_text(cfg.to_yaml())
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "tune", "-c", str(config)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while TrialState.RUNNING not in [t.state for t in load(cfg).trials]:
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    tune.run(cfg)
    study = load(cfg)
    killed = study.trials[0]
    assert killed.state == TrialState.FAIL
    assert states(study).count("COMPLETE") == 3
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params  # the same parameters, run again


@pytest.mark.parametrize("gone", ["a reused pid", "a silent heartbeat"])
def test_a_trial_whose_worker_is_gone_is_retried(tmp_path, monkeypatch, gone):
    """A live process that took over the dead worker's pid is not that worker; nor is one whose
    heartbeat file has been silent for tune.grace_s."""
    monkeypatch.chdir(tmp_path)
    paths = Paths(Path("data/x"), Path("runs/x"), "x", "x")
    study = optuna.create_study()
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    attrs = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": studies.process_start(0)}
    if gone == "a silent heartbeat":
        attrs["process_start"] = studies.process_start(os.getpid())  # the process itself still runs
        beat = paths.tune_heartbeat(studies.heartbeat_name(attrs))
        beat.parent.mkdir(parents=True)
        beat.touch()
        os.utime(beat, (time.time() - 100, time.time() - 100))
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    studies.retry_dead_trials(study, paths, C.Tune(heartbeat_s=10, grace_s=60))
    assert study.trials[0].state == TrialState.FAIL
    assert study.get_trials(states=(TrialState.WAITING,))[0].user_attrs["retry_of"] == 0


def test_a_trial_that_kills_its_worker_runs_at_most_max_retry_times_more(tmp_path, monkeypatch):
    """A trial whose worker was killed before it recorded itself (right after `ask`), or by the
    host running out of memory again and again, is not queued forever."""
    monkeypatch.chdir(tmp_path)
    paths = Paths(Path("data/x"), Path("runs/x"), "x", "x")
    study = optuna.create_study()
    cfg = C.Tune(max_retry=1, heartbeat_s=1, grace_s=2)
    study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})  # killed before it recorded itself
    studies.retry_dead_trials(study, paths, cfg)
    assert study.trials[0].state == TrialState.RUNNING  # within grace_s of its start
    monkeypatch.setattr(time, "time", lambda: study.trials[0].datetime_start.timestamp() + 3)
    studies.retry_dead_trials(study, paths, cfg)
    assert study.trials[0].state == TrialState.FAIL and studies.taken(study, cfg.max_retry) == 0
    retry = study.ask()
    assert retry.user_attrs == {"retry_of": 0, "retries": 1}
    studies.retry_dead_trials(study, paths, cfg)  # its worker died too: max_retry reached
    assert not study.get_trials(states=(TrialState.WAITING,)) and studies.taken(study, cfg.max_retry) == 1


def test_the_heartbeat_stops_when_the_batches_do(tmp_path, monkeypatch):
    beat = tmp_path / "worker.alive"
    with studies.beating(beat, every_s=0.05, progress=lambda: engine.BatchCounter.done):
        time.sleep(0.1)
        os.utime(beat, (0, 0))
        time.sleep(0.2)  # no batch: a hung training loop
        assert beat.stat().st_mtime == 0
        engine.BatchCounter.done += 1
        time.sleep(0.2)
        assert beat.stat().st_mtime > 0


def test_grace_must_outlast_a_heartbeat():
    with pytest.raises(ValueError, match="tune.grace_s=60 must exceed tune.heartbeat_s=60"):
        C.Tune(heartbeat_s=60, grace_s=60)


def test_a_live_worker_keeps_its_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = Paths(Path("data/x"), Path("runs/x"), "x", "x")
    study = optuna.create_study()
    trial = study.ask()
    for key, value in studies.this_worker().items():
        trial.set_user_attr(key, value)
    with studies.beating(
        paths.tune_heartbeat(studies.heartbeat_name(studies.this_worker())), every_s=1, progress=lambda: 0
    ):
        studies.retry_dead_trials(study, paths, C.Tune(heartbeat_s=10, grace_s=60))
    assert study.trials[0].state == TrialState.RUNNING


def test_the_private_optuna_names_we_use_still_exist():
    from optuna.storages import _heartbeat

    study = optuna.create_study()
    trial = study.ask()
    missing = [n for n in ("get_heartbeat_thread",) if not hasattr(_heartbeat, n)]
    missing += [n for n, owner in (("_trial_id", trial), ("_storage", study)) if not hasattr(owner, n)]
    assert not missing, f"optuna {optuna.__version__} no longer has {missing}: see pipeline/study.py"
    with studies.heartbeat(study, trial):  # an in-memory storage has no heartbeat: a no-op
        pass


def count_finished(cfg) -> tuple[int, list[int]]:
    study = load(cfg)
    finished = [t.number for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return len(study.trials), finished


@pytest.mark.slow
def test_two_workers_on_the_journal_finish_exactly_n(digits_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # trials of a few seconds: one-second trials could all finish before the second worker has started
    cfg = tune_config(digits_dir, n_trials=5, epochs=4)
    folds.run(cfg)
    tune.run(cfg, workers=2)
    total, finished = count_finished(cfg)
    assert total == 5 and sorted(finished) == [0, 1, 2, 3, 4]
    assert len({t.user_attrs["pid"] for t in load(cfg).trials}) == 2  # both workers took trials


def _postgres_binary(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server on loopback in a temporary folder, for the length of a test."""
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust")
    run(
        pg_ctl,
        "-D",
        str(data),
        "-l",
        str(folder / "log"),
        "-w",
        "start",
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
    )
    try:
        run(
            str(Path(pg_ctl).resolve().with_name("createdb")),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "optuna",
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgresql_finish_exactly_n(digits_dir, tmp_path, monkeypatch, postgres_url):
    monkeypatch.chdir(tmp_path)
    cfg = tune_config(digits_dir, n_trials=5, storage=postgres_url)
    folds.run(cfg)
    tune.run(cfg, workers=2)
    total, finished = count_finished(cfg)
    assert total == 5 and sorted(finished) == [0, 1, 2, 3, 4]
    assert (tmp_path / "runs/tiny/tiny/tune/best.yaml").exists()


@pytest.mark.slow
def test_three_workers_on_postgresql_retry_the_trial_of_one_killed(digits_dir, tmp_path, monkeypatch, postgres_url):
    """Three workers (as on three machines) share a study; one is killed mid-trial. Its heartbeat
    stops, another worker fails the trial and runs its parameters again, and the study still
    ends with exactly n complete trials."""
    monkeypatch.chdir(tmp_path)
    cfg = tune_config(digits_dir, n_trials=6, storage=postgres_url, epochs=4, heartbeat_s=1, grace_s=3)
    folds.run(cfg)
    config = tmp_path / "tune.yaml"
    config.write_text(cfg.to_yaml())
    command = [sys.executable, "-m", "pipeline", "tune", "-c", str(config)]
    workers = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL) for _ in range(3)]
    deadline = time.monotonic() + 180
    while not (running := [t for t in load(cfg).trials if t.state == TrialState.RUNNING and "pid" in t.user_attrs]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victim = next(w for w in workers if w.pid == running[0].user_attrs["pid"])
    time.sleep(1.5)  # its heartbeat has been recorded
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # the trial it died in: the one it began may have ended in those 1.5 s, and the next begun
    died_in = [
        t.number for t in load(cfg).trials if t.state == TrialState.RUNNING and t.user_attrs.get("pid") == victim.pid
    ]
    assert len(died_in) == 1, "the victim died between two trials"
    assert [w.wait(timeout=300) for w in workers if w is not victim] == [0, 0]
    study = load(cfg)
    killed = study.trials[died_in[0]]
    assert killed.state == TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    assert states(study).count("COMPLETE") == 6


def test_a_pinned_key_is_not_searched(capsys):
    space = {key: C.Param(**spec) for key, spec in SPACE.items()}
    assert list(tune.unpinned(space, ["train.lr", "train.epochs"])) == [k for k in SPACE if k != "train.lr"]
    assert "not searched, as train.pinned (or the command line) sets them: train.lr" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sigterm_fails_the_trials_in_flight_queues_them_again_and_ends_by_sigterm(
    digits_dir, tmp_path, monkeypatch, workers
):
    """`nohup make tune &` then `kill`: make passes SIGTERM on to the stage (and the stage to its
    workers); each trial in flight is failed and its parameters queued for the next run, and
    the stage says `terminated` and ends by SIGTERM (a shell's 143)."""
    monkeypatch.chdir(tmp_path)
    cfg = tune_config(digits_dir, n_trials=4, epochs=300)  # long trials: none may end before the signal lands
    folds.run(cfg)
    config = tmp_path / "tune.yaml"
    config.write_text(cfg.to_yaml())
    command = [sys.executable, "-m", "pipeline", "tune", "-c", str(config), "--workers", str(workers)]
    stage = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(glob.glob(str(tmp_path / "runs/tiny/tiny/tune/trial-*/fold*/metrics.csv"))) < workers:
        assert time.monotonic() < deadline and stage.poll() is None
        time.sleep(0.2)
    stage.send_signal(signal.SIGTERM)
    _, err = stage.communicate(timeout=60)
    assert stage.returncode == -signal.SIGTERM and err == "terminated\n", err
    study = load(cfg)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert len(failed) == workers and not study.get_trials(states=(TrialState.RUNNING,))
    assert sorted(t.user_attrs["retry_of"] for t in queued) == sorted(t.number for t in failed)
