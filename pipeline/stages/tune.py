"""The tune stage: an Optuna study over dotted config keys (freeze depth, augmentations, lr, ...)
that runs all night, in several worker processes, and resumes.

Each trial trains `tune.folds` with the sampled overrides and returns their mean CV metric;
every epoch is reported (step = fold position x epochs + epoch) so the pruner can stop a poor
trial at the end of a fold. The first trial of a study runs the config's own values. The best
trial's overrides go to runs/<name>/tune/best.yaml, which train merges.

Exactly `tune.n_trials` trials run, however many workers share the study: a worker takes a
trial only while holding a lock (a file lock beside a journal or SQLite storage, an advisory
lock on PostgreSQL) after counting the trials finished or running. A trial whose worker died
is failed and its parameters queued again: on a journal when its process is gone (a pid with
another start time is another process) or its heartbeat file has been silent for tune.grace_s,
on an RDB storage when Optuna's heartbeat stops.
"""

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from pipeline import config as C
from pipeline import tasks
from pipeline.augment import aug_ops
from pipeline.errors import STOPS, PipelineError, Terminated
from pipeline.files import write_csv, write_text
from pipeline.learn import distributed, engine, models, plan
from pipeline.learn.fit import Setup, check, fit
from pipeline.learn.validation import validation_rows
from pipeline.paths import Paths
from pipeline.study import optuna_private

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEARCHED_SECTIONS = ("competition", "data", "folds", "model", "train", "aug")


# --- the search space --------------------------------------------------------------------------


def default_space(cfg: C.Config, n_stages: int) -> dict[str, C.Param]:
    """Freeze depth over the backbone's stages (with pretrained weights: freezing random weights
    only hurts), every augmentation as a switch with its strength, and the optimisation knobs
    the bag-of-tricks paper names."""
    P = C.Param
    space = {
        "train.lr": P(type="float", low=cfg.train.lr / 10, high=cfg.train.lr * 10, log=True),
        "train.weight_decay": P(type="float", low=1e-5, high=0.1, log=True),
        "train.label_smoothing": P(type="float", low=0.0, high=0.2),
    }
    if cfg.model.pretrained != "none":
        space["model.freeze_depth"] = P(type="int", low=0, high=n_stages)
        # frozen for good (the ResNeXt write-up) or, fastai's way, only for the first epoch
        space["model.unfreeze_epoch"] = P(type="categorical", choices=[None, 2])
    task = tasks.get(cfg.competition.task)
    augmentations = aug_ops.search_space(plan.channels(cfg), crops=task.crops)
    return space | {key: P(**spec) for key, spec in (task.search_space(cfg) | augmentations).items()}


def baseline_params(cfg: C.Config, space: dict[str, C.Param]) -> dict:
    """The config's own values as the trial's parameters, so the first trial measures the
    default and the search can only improve on it; a value outside its range is left to the
    sampler."""
    params = {}
    for key, p in space.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if p.optional:
            params[f"{key}:on"] = bool(value)
            if not value:
                continue
        inside = value in p.choices if p.type == "categorical" else p.type == "bool" or p.low <= value <= p.high
        if inside:
            params[key] = value
    return params


def sample(trial: optuna.Trial, space: dict[str, C.Param]) -> dict:
    """Dotted key -> value for one trial."""
    values = {}
    for key, p in space.items():
        if p.optional and not trial.suggest_categorical(f"{key}:on", [False, True]):
            values[key] = 0
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
        elif p.type == "float":
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
        elif p.type == "bool":
            values[key] = trial.suggest_categorical(key, [False, True])
        else:
            values[key] = trial.suggest_categorical(key, p.choices)
    return values


# --- storage, study and the slot lock ----------------------------------------------------------


def study_name(cfg: C.Config) -> str:
    """The same for every run of one config, whatever n_trials or timeout it asks for."""
    searched = cfg.to_yaml(SEARCHED_SECTIONS) + json.dumps(
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
def beating(path: Path, every_s: float) -> Iterator[None]:
    """This worker's heartbeat while the block runs: `path` touched every `every_s` seconds in
    which a batch was trained or evaluated (engine.BatchCounter), so that a hung training loop
    (a stuck data loader, a deadlocked collective) goes silent though this thread lives on. A
    trial's start beats too (`beat_now`)."""
    stop = threading.Event()

    def beat() -> None:
        last = None
        while True:
            if engine.BatchCounter.done != last:
                path.touch()
                last = engine.BatchCounter.done
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


# --- the objective -----------------------------------------------------------------------------


def objective(trial: optuna.Trial, base: Setup, folds, space: dict, paths: Paths) -> float:
    """Mean CV metric of the trial's folds; every epoch reported to the pruner."""
    cfg = base.cfg
    values = sample(trial, space)
    trial_cfg = C.with_overrides(cfg, values, f"trial {trial.number}")
    trial.set_user_attr("overrides", values)
    C.save_resolved(trial_cfg, paths.trial_config(trial.number))
    setup = dataclasses.replace(base, cfg=trial_cfg, task=type(base.task).of_labels(trial_cfg, base.task.labels))
    fold_ids = cfg.tune.folds if cfg.tune.folds is not None else sorted(k for k in set(folds["fold"]) if k >= 0)
    epochs = cfg.tune.epochs or cfg.train.epochs
    scores = []
    for position, fold in enumerate(fold_ids):
        valid = validation_rows(folds, fold)
        report = functools.partial(_report, trial, setup.task.metric, position * epochs, len(fold_ids) * epochs, fold)
        result = fit(
            setup,
            np.setdiff1d(np.arange(len(folds)), valid),
            valid,
            paths.trial_fold(trial.number, fold),
            epochs,
            study_name(cfg),
            f"trial {trial.number} fold {fold}",
            on_epoch=report,
        )
        scores.append(result.score)
    return float(np.mean(scores))


def _report(trial: optuna.Trial, metric: str, first_step: int, steps: int, fold: int, row: dict) -> None:
    """Each epoch's metric to Optuna, steps running on across folds, so pruners compare trials;
    a trial at its last step is finished, not pruned."""
    step = first_step + row["epoch"] - 1
    trial.report(row[metric], step)
    if step < steps - 1 and trial.should_prune():
        raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {row['epoch']}")


def run_trial(study: optuna.Study, trial: optuna.Trial, base: Setup, folds, space: dict, paths: Paths) -> None:
    out = paths.trial(trial.number)
    try:
        with optuna_private.heartbeat(study, trial):  # RDB storage: tells others we live
            value = objective(trial, base, folds, space, paths)
        study.tell(trial, value)
        print(f"trial {trial.number}: {base.task.metric} {value:.5f}")
    except optuna.TrialPruned as exc:
        study.tell(trial, state=TrialState.PRUNED)
        print(f"trial {trial.number}: {exc}")
    except (PipelineError, RuntimeError, FloatingPointError, ValueError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number}: failed: {reason}")
    except STOPS:  # Ctrl-C or SIGTERM: the trial is not its parameters' fault; the next run runs it
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        raise
    finally:
        for checkpoint in out.rglob("*.pt"):  # keep configs and metrics, not the weights
            checkpoint.unlink()


# --- the stage ---------------------------------------------------------------------------------


def run(cfg: C.Config, workers: int = 1) -> None:
    paths = Paths.of(cfg)
    if workers > 1:
        create_study(cfg, paths)  # tables and study exist before the workers race to open them
        spawn_workers(cfg, paths, workers)
    else:
        work(cfg, paths)
    write_best(cfg, paths, create_study(cfg, paths))


def work(cfg: C.Config, paths: Paths) -> None:
    """One worker: trials until the study has n_trials or this run's timeout passes."""
    storage = storage_of(cfg, paths)
    study = create_study(cfg, paths, storage)
    base, folds = plan.prepare(cfg, paths, tuned=False)
    model = check(base)
    cfg = base.cfg
    space = unpinned(cfg.tune.space or default_space(cfg, len(models.stages(model)) - 1), cfg.train.pinned)
    for key in space:
        C.with_overrides(cfg, {key: _probe_value(space[key])}, f"tune.space key {key!r}")
    baseline = baseline_params(cfg, space)
    deadline = time.monotonic() + C.seconds(cfg.tune.timeout) if cfg.tune.timeout else float("inf")
    heartbeat = paths.tune_heartbeat(heartbeat_name(this_worker()))
    with beating(heartbeat, cfg.tune.heartbeat_s):
        while time.monotonic() < deadline:
            trial = next_trial(study, storage, paths, cfg.tune, baseline)
            if trial is not None:
                heartbeat.touch()  # a new trial's first batch may be further off than a beat
                run_trial(study, trial, base, folds, space, paths)
            elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                # full only if those finish: when their worker is gone, this one runs them again
                time.sleep(min(cfg.tune.heartbeat_s, 5))
            else:
                break


def unpinned(space: dict[str, C.Param], pinned: list[str]) -> dict[str, C.Param]:
    """The space without the keys train.pinned (or the command line) sets: train would not merge them."""
    if kept := [key for key in space if key in pinned]:
        print(f"tune: not searched, as train.pinned (or the command line) sets them: {', '.join(kept)}")
    return {key: p for key, p in space.items() if key not in pinned}


def _probe_value(p: C.Param):
    return p.choices[0] if p.type == "categorical" else (False if p.type == "bool" else p.low)


def spawn_workers(cfg: C.Config, paths: Paths, workers: int) -> None:
    """`workers` processes on one study, the cores shared out and one GPU each where there are GPUs."""
    resolved = paths.tune_file("config")
    C.save_given(cfg, resolved)
    gpus = _gpu_count()
    processes = []
    for i in range(workers):
        env = {**distributed.worker_env([str(i % gpus)] if gpus else [], workers), "PIPELINE_TUNE_WORKER": str(i)}
        processes.append(subprocess.Popen([sys.executable, "-m", "pipeline", "tune", "-c", str(resolved)], env=env))
    try:
        codes = [p.wait() for p in processes]
    except STOPS as stop:  # Ctrl-C reached the workers too; SIGTERM is passed on: they end quietly, this says it
        for process in processes:
            if isinstance(stop, Terminated):
                process.terminate()
            process.wait()
        raise
    if any(codes):
        raise PipelineError(f"tune workers exited with {codes}")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def write_best(cfg: C.Config, paths: Paths, study: optuna.Study) -> None:
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:
        raise PipelineError(f"study {study.study_name} has no complete trial yet")
    best = study.best_trial
    overrides = best.user_attrs["overrides"]
    baseline = [f"the config's own values {t.value:.5f}" for t in finished if t.user_attrs.get("baseline")]
    header = (
        f"# best of {len(finished)} complete trials in study {study.study_name}: trial {best.number}, "
        f"{tasks.metric_of(cfg)} {', '.join([f'{best.value:.5f}', *baseline])}\n"
    )
    write_text(paths.best_yaml, header + yaml.safe_dump(overrides, sort_keys=True))
    C.save_resolved(cfg, paths.resolved("tune"))
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    print(
        f"tune: best {tasks.metric_of(cfg)} {best.value:.5f} (trial {best.number}) of "
        f"{', '.join(f'{v} {k}' for k, v in counts.items() if v)} -> {paths.best_yaml}"
    )


def report(cfg: C.Config) -> None:
    """`make tune-report`: the trials table, parameter importances and the history plot."""
    from optuna.visualization.matplotlib import plot_optimization_history

    paths = Paths.of(cfg)
    study = load_study(cfg, paths)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    write_csv(paths.tune_file("trials"), frame)
    print(frame.drop(columns=[c for c in frame.columns if c.startswith("user_attrs_")]).to_string(index=False))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2:
        importances = optuna.importance.get_param_importances(study)
        write_text(paths.tune_file("importances"), json.dumps(importances, indent=2))
        print("parameter importances: " + ", ".join(f"{k} {v:.3f}" for k, v in importances.items()))
    axes = plot_optimization_history(study)
    axes.figure.savefig(paths.tune_file("history"), dpi=100)
    print(f"tune report: {paths.tune_file('trials')}, {paths.tune_file('history').name}")
