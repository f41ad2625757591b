"""The Optuna adapter: the study's storage (a journal file, SQLite or PostgreSQL), the slot lock
that lets exactly tune.n_trials trials run however many workers share the study, and which
workers still live (pids with their start times and heartbeat files on a journal; Optuna's
heartbeat on an RDB storage), so that a dead worker's trial is failed and queued again.

The one Optuna name this project needs that Optuna does not make public is here alone
(`heartbeat`): ask-and-tell has no public heartbeat, which an RDB storage needs to see that a
worker lives. tests/test_tune.py checks it against the installed Optuna and names the version
when it goes."""

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pipeline import config as C
from pipeline import tasks
from pipeline.errors import PipelineError
from pipeline.paths import Paths
from pipeline.stage_table import training_sections

# --- storage, study and the slot lock ----------------------------------------------------------


def study_name(cfg: C.Config) -> str:
    """The same for every run of one config, whatever n_trials or timeout it asks for."""
    searched = cfg.to_yaml(training_sections()) + json.dumps(
        cfg.tune.model_dump(mode="json", include={"space", "folds", "epochs", "sampler", "pruner", "seed"}),
        sort_keys=True,
    )
    return f"{cfg.competition.name}-{hashlib.sha256(searched.encode()).hexdigest()[:10]}"


def storage_of(cfg: C.Config, paths: Paths):
    url = cfg.tune.storage
    if url is None:
        paths.tune_dir.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(paths.tune_file("journal")))
        return optuna.storages.JournalStorage(backend)
    if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://")):
        raise PipelineError(
            f"tune.storage={url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB (or leave it "
            "unset for a journal file)"
        )
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=cfg.tune.heartbeat_s,
            grace_period=cfg.tune.grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=cfg.tune.max_retry
            ),
        )
    except Exception as exc:  # SQLAlchemy raises many kinds for a database it cannot reach
        raise PipelineError(f"tune.storage={url!r} cannot be opened: {str(exc).splitlines()[0]}") from None


def create_study(cfg: C.Config, paths: Paths, storage=None) -> optuna.Study:
    direction = "maximize" if tasks.higher_is_better(tasks.metric_of(cfg)) else "minimize"
    # Pruning looks only at the last epoch of each fold: mid-way through a one-cycle schedule a
    # high learning rate or strong regularisation scores low and ends best, so comparing there
    # prunes exactly the trials worth finishing.
    epochs = cfg.tune.epochs or cfg.train.epochs
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs - 1, interval_steps=epochs),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=epochs),
        "none": optuna.pruners.NopPruner(),
    }[cfg.tune.pruner]
    study = optuna.create_study(
        study_name=study_name(cfg),
        storage=storage or storage_of(cfg, paths),
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    # each worker and each resumed run draws its own sequence, reproducibly from tune.seed
    seed = cfg.tune.seed + 1000 * int(os.environ.get("PIPELINE_TUNE_WORKER", 0)) + len(study.trials)
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed) if cfg.tune.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    )
    return study


def load_study(cfg: C.Config, paths: Paths) -> optuna.Study:
    """This config's study as `make tune` left it, for reading: never created here."""
    try:
        return optuna.load_study(study_name=study_name(cfg), storage=storage_of(cfg, paths))
    except KeyError:
        raise PipelineError(f"there is no study {study_name(cfg)} for this config: run `make tune` first") from None


@contextlib.contextmanager
def slot_lock(study: optuna.Study, storage, paths: Paths) -> Iterator[None]:
    """One worker at a time counts the trials and takes the next."""
    if isinstance(storage, optuna.storages.RDBStorage) and storage.engine.dialect.name == "postgresql":
        key = int(hashlib.sha256(study.study_name.encode()).hexdigest()[:15], 16)
        with storage.engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
        return
    lock = paths.tune_lock(study.study_name)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- which workers live (a journal storage; an RDB storage has Optuna's heartbeat) ---------------


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc), or "" where unknown: a
    pid with another start time is another process that reuses the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name


def this_worker() -> dict:
    """This process as its trials record it: host, pid, and when the pid started."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid)}


def heartbeat_name(worker: dict) -> str:
    """host-pid-start: the name of a worker's heartbeat file, from what its trials record."""
    return f"{worker.get('host')}-{worker.get('pid')}-{worker.get('process_start')}"


@contextlib.contextmanager
def beating(path: Path, every_s: float, progress: Callable[[], int]) -> Iterator[None]:
    """This worker's heartbeat while the block runs: `path` touched every `every_s` seconds in
    which `progress()` moved (the count of batches trained or evaluated), so that a hung training loop
    (a stuck data loader, a deadlocked collective) goes silent though this thread lives on. A
    caller touches `path` at a trial's start too."""
    stop = threading.Event()

    def beat() -> None:
        last = None
        while True:
            done = progress()
            if done != last:
                path.touch()
                last = done
            if stop.wait(every_s):
                return

    path.parent.mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)


def worker_gone(trial: optuna.trial.FrozenTrial, paths: Paths, grace_s: float) -> bool:
    """A trial's worker is gone when its heartbeat file has been silent for grace_s (a hung or
    frozen process, a lost machine), or, on this machine, when its process no longer runs; a
    trial that never recorded its worker (killed right after `ask`) once grace_s has passed."""
    attrs = trial.user_attrs
    if "pid" not in attrs:
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return time.time() - started > grace_s
    beat = paths.tune_heartbeat(heartbeat_name(attrs))
    if beat.exists() and time.time() - beat.stat().st_mtime > grace_s:
        return True
    if attrs.get("host") != socket.gethostname():
        return False
    pid = attrs.get("pid", -1)
    return not _alive(pid) or process_start(pid) != attrs.get("process_start", process_start(pid))


def retry_dead_trials(study: optuna.Study, paths: Paths, cfg: C.Tune) -> None:
    """Running trials whose worker is gone: failed, and their parameters queued again, at most
    tune.max_retry times (a trial that runs the host out of memory would kill worker after
    worker); then failed for good, with the reason, counted among the trials."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_gone(trial, paths, cfg.grace_s):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        retries = trial.user_attrs.get("retries", 0)
        if retries >= cfg.max_retry:
            print(f"trial {trial.number}: its worker died {retries + 1} times (tune.max_retry): not run again")
            continue
        again = {"retry_of": trial.number, "retries": retries + 1}
        study.enqueue_trial(trial.params, user_attrs=again, skip_if_exists=False)
        print(f"trial {trial.number}: its worker ({heartbeat_name(trial.user_attrs)}) is gone; queued again")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def taken(study: optuna.Study, max_retry: int) -> int:
    """Trials that count towards n_trials: finished, running, failed by their own error, or whose
    worker died once more than tune.max_retry allows (not those whose worker died before: those
    run again)."""
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)

    def failed_for_good(t: optuna.trial.FrozenTrial) -> bool:
        return "fail_reason" in t.user_attrs or t.user_attrs.get("retries", 0) >= max_retry

    return sum(
        t.state in counted or (t.state == TrialState.FAIL and failed_for_good(t))
        for t in study.get_trials(deepcopy=False)
    )


def next_trial(study: optuna.Study, storage, paths: Paths, cfg: C.Tune, baseline: dict) -> optuna.Trial | None:
    with slot_lock(study, storage, paths):
        if not study.trials:
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
        if isinstance(storage, optuna.storages.RDBStorage):
            optuna.storages.fail_stale_trials(study)  # silent heartbeats: failed, retried by the callback
        else:
            retry_dead_trials(study, paths, cfg)
        if taken(study, cfg.max_retry) >= cfg.n_trials:
            return None
        trial = study.ask()
        for key, value in this_worker().items():
            trial.set_user_attr(key, value)
        return trial


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> contextlib.AbstractContextManager:
    """While the block runs, the trial's heartbeat on an RDB storage (nothing on a journal)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)
