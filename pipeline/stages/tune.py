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

import dataclasses
import functools
import json
import subprocess
import sys
import time

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from pipeline import config as C
from pipeline import tasks
from pipeline.augment import aug_ops
from pipeline.errors import STOPS, PipelineError, Terminated
from pipeline.files import write_csv, write_text
from pipeline.learn import backbones, distributed, engine, plan
from pipeline.learn.fit import check, fit
from pipeline.learn.fit_setup import Setup
from pipeline.learn.validation import validation_rows
from pipeline.paths import Paths
from pipeline.study import (
    beating,
    create_study,
    heartbeat,
    heartbeat_name,
    load_study,
    next_trial,
    storage_of,
    study_name,
    this_worker,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- the search space --------------------------------------------------------------------------


def default_space(cfg: C.Config, n_stages: int) -> dict[str, C.Param]:
    """Freeze depth over the backbone's stages (with pretrained weights: freezing random weights
    only hurts), every augmentation as a switch with its strength, and the optimisation knobs
    the bag-of-tricks paper names."""
    P = C.Param
    space = {
        "train.lr": P(type="float", low=cfg.train.lr / 10, high=cfg.train.lr * 10, log=True),
        "train.weight_decay": P(type="float", low=1e-5, high=0.1, log=True),
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
        with heartbeat(study, trial):  # RDB storage: tells others we live
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
    space = unpinned(cfg.tune.space or default_space(cfg, len(backbones.stages(model)) - 1), cfg.train.pinned)
    for key in space:
        C.with_overrides(cfg, {key: _probe_value(space[key])}, f"tune.space key {key!r}")
    baseline = baseline_params(cfg, space)
    deadline = time.monotonic() + C.seconds(cfg.tune.timeout) if cfg.tune.timeout else float("inf")
    beat_file = paths.tune_heartbeat(heartbeat_name(this_worker()))
    with beating(beat_file, cfg.tune.heartbeat_s, progress=lambda: engine.BatchCounter.done):
        while time.monotonic() < deadline:
            trial = next_trial(study, storage, paths, cfg.tune, baseline)
            if trial is not None:
                beat_file.touch()  # a new trial's first batch may be further off than a beat
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
