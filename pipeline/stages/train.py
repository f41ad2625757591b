"""The train stage: one model per fold, then one on all the data, every fit on the same
schedule (train.epochs), so the folds measure the recipe the full fit repeats. An experiment
(train.experiment) trains into its own folder, runs/<name>/<experiment>/:

    fold<k>/  model.pt (the epoch train.checkpoint keeps), last.pt (resume), metrics.csv,
              oof.csv, valid_best.npz, valid_last.npz, result.json
    cv.json   every fold's score at its best epoch and at its last, their means and spreads,
              the pooled out-of-fold scores (records.CV)
    full/     model.pt (its last epoch), metrics.csv, result.json

A fold with result.json is finished and skipped; a fold with last.pt resumes from its last
completed epoch. Both belong to one config: when it changes, the fold is trained anew. The
earlier fit waits in fold<k>.previous/ until its successor's first checkpoint exists, and comes
back if the successor stops before that.

It runs in this process, or with `make train GPUS=0,1,2,3` on several GPUs of one machine,
in one of two ways.

    ddp    each fold in turn on every GPU: torchrun starts one process per GPU, DDP averages the
           gradients (train.batch_size is the global batch), rank 0 writes.
    folds  one fold per GPU at a time, each an ordinary single-GPU fit in its own process;
           then the summary and the full fit on the first GPU.

train.distributed=auto picks by the number of training rows: below distributed.DDP_MIN_ROWS an epoch is so
short that DDP's per-step gradient all-reduce and the smaller per-GPU batches cost more than
they gain, while independent folds scale perfectly; above it, DDP brings each fold (and the full
fit, which `folds` trains on one GPU) to the end sooner.
"""

import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.files import write_csv
from pipeline.learn import (
    budget,
    distillation,
    distributed,
    final_stage,
    inference,
    plan,
    pseudo_labels,
    soup,
    teacher,
    validation,
)
from pipeline.learn.distributed import worker_env
from pipeline.learn.fit import check
from pipeline.learn.fit_setup import Setup
from pipeline.learn.pace import Pace
from pipeline.learn.validation import read_folds, target_columns, validation_plan, validation_rows
from pipeline.paths import FitFiles, Paths
from pipeline.predictions import OutOfFold, Raw
from pipeline.records import CV, FitResult, Scores


def run(cfg: C.Config, gpus: str | None = None) -> None:
    """The train stage: in this process, or on the GPUs `gpus` names (several) as train.distributed says."""
    if not gpus:
        run_here(cfg)
        return
    ids = distributed.parse_gpus(gpus)
    if cfg.train.time_budget is not None and len(ids) > 1:
        raise PipelineError(
            f"train.time_budget={cfg.train.time_budget} plans the fits of one process on one device, and GPUS={gpus} "
            "trains on several: set train.epochs and model.image_size instead, or train on one GPU"
        )
    where = distributed.devices(cfg.train.device, ids)
    paths = Paths.of(cfg)
    mode = distributed.launch_mode(cfg.train.distributed, len(read_folds(paths.folds_csv)), len(ids))
    resolved = paths.resolved("launch")
    C.save_given(cfg, resolved)
    print(f"train on {where}: {mode}")
    if mode == "ddp":
        distributed.rank_batch(cfg.train.batch_size, len(ids))  # here, not as a traceback from every rank
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(ids)}"]
        _check(
            subprocess.run([*torchrun, "-m", "pipeline", "train", "-c", str(resolved)], env=worker_env(ids, len(ids)))
        )
        return
    train_folds_in_parallel(cfg, paths, ids)
    _check(subprocess.run([sys.executable, "-m", "pipeline", "train", "-c", str(resolved)], env=worker_env(ids[:1], 1)))


def train_folds_in_parallel(cfg: C.Config, paths: Paths, ids: list[str]) -> None:
    """Fold k on GPU ids[k % len(ids)], one process per GPU working through its folds."""
    fold_ids = plan.fold_ids_of(cfg, read_folds(paths.folds_csv))
    context = multiprocessing.get_context("spawn")  # a fresh process: CUDA_VISIBLE_DEVICES set before CUDA starts
    workers = [
        context.Process(target=_fold_worker, args=(cfg, fold_ids[i :: len(ids)], ids[i], len(ids)))
        for i in range(min(len(ids), len(fold_ids)))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [f"GPU {ids[i]} (exit {w.exitcode})" for i, w in enumerate(workers) if w.exitcode]
    if failed:
        raise PipelineError(f"fold workers failed on {', '.join(failed)}; their errors are above")


def _fold_worker(cfg: C.Config, fold_ids: list[int], gpu: str, processes: int) -> None:
    os.environ.update(worker_env([gpu], processes))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    paths = Paths.of(cfg)
    try:
        setup, folds, fingerprint, planned, _ = train_folds(cfg, paths)
        for k in (k for k in fold_ids if k in planned):  # a time budget may train fewer
            train_fold(setup, folds, k, paths.fold(k), fingerprint)
    except PipelineError as exc:
        print(f"error: GPU {gpu}: {exc}", file=sys.stderr)
        sys.exit(2)


def _check(process: subprocess.CompletedProcess) -> None:
    if process.returncode:
        raise PipelineError(f"{' '.join(map(str, process.args[:6]))} ... exited with {process.returncode}")


def run_here(cfg: C.Config) -> None:
    """Every fold, the CV summary and the full fit, in this process."""
    paths = Paths.of(cfg)
    setup, folds, fingerprint, fold_ids, pace = train_folds(cfg, paths)
    cfg = setup.cfg
    results, trained = [], []
    for k in fold_ids:
        if not budget_allows(pace, f"fold {k}", paths.fold(k), fingerprint, trained):
            break
        with timed(pace, f"fold {k}", paths.fold(k), fingerprint):
            results.append(train_fold(setup, folds, k, paths.fold(k), fingerprint))
        trained.append(k)
    kitchen = soup_kitchen(setup, folds, paths, fingerprint)
    if kitchen is not None:
        soup.serve_folds(
            kitchen, trained, after=lambda k: write_oof(setup, folds, validation.fit_rows(folds, k)[1], paths.fold(k))
        )
    cv = summarize(results, setup, folds, trained, paths, fingerprint)
    for line in cv.describe():
        print(line)
    if cfg.train.full_fit and budget_allows(pace, "full", paths.full, fingerprint, trained):
        epochs = cfg.train.epochs
        with timed(pace, "full", paths.full, fingerprint):
            result = fit_once(setup, np.arange(len(folds)), None, paths.full, epochs, fingerprint, "full", fold=None)
        print(f"full fit: {epochs} epochs, the folds' schedule, on {len(folds)} rows -> {result.model_path}")
        if kitchen is not None:
            soup.serve_full(kitchen, trained)
    else:
        drop_other_full_model(paths.full, fingerprint)
    if pace is not None:
        train_head_start(setup, folds, pace, paths, fingerprint, trained)
    C.save_resolved(cfg, paths.resolved("train"))
    cv.save(paths.cv_json)  # last: its presence means the stage finished


def soup_kitchen(setup: Setup, folds: pd.DataFrame, paths: Paths, fingerprint: str) -> soup.Kitchen | None:
    """With train.average=greedy_soup: what makes each fit's soup from its ingredients, every fit's
    setup and rows as it trained them; None otherwise."""
    average = setup.cfg.train.average
    if average is None or not average.across_folds:
        return None

    def rows(fold: int | None) -> soup.Rows:
        train_rows, valid_rows = validation.fit_rows(folds, fold)
        return *joined(setup, train_rows, fold, "full" if fold is None else f"fold {fold}"), valid_rows

    return soup.Kitchen(setup, rows, lambda fold: paths.full if fold is None else paths.fold(fold), fingerprint)


def joined(setup: Setup, train_rows: np.ndarray, fold: int | None, name: str) -> tuple[Setup, np.ndarray]:
    """The fit's setup and training rows with the teachers' targets joined (train.distill's) and
    their images (train.pseudo_labels')."""
    return pseudo_labels.join(distillation.join(setup, train_rows, fold, name), train_rows, fold, name)


def teachers(setup: Setup) -> list[teacher.Teacher]:
    """The teachers whose training the fits depend on."""
    return [part.teacher for part in (setup.pool, setup.distiller) if part is not None]


def drop_other_full_model(out: FitFiles, fingerprint: str) -> None:
    """No full fit in this run: a full model left by another config must not reach predict, which
    weighs a full model whenever one exists. Its checkpoint stays: resuming checks its config."""
    finished = FitResult.read(out.result)
    if out.model.exists() and (finished is None or finished.fingerprint != fingerprint):
        out.model.unlink()
        out.result.unlink(missing_ok=True)
        print(f"full fit: {out.model} was not trained with this config, removed: the fold models are submitted")


def train_folds(cfg: C.Config, paths: Paths) -> tuple[Setup, pd.DataFrame, str, list[int], Pace | None]:
    """What training the folds needs, defaults decided, tuned settings merged and the time
    budget planned: (setup, folds, fingerprint, fold ids, the budget's pace keeper)."""
    setup, folds = plan.prepare(cfg, paths, record=False)  # recorded once every check below passes
    check(setup)
    setup = distillation.prepare(pseudo_labels.prepare(setup, folds, paths), folds, paths)
    named = setup.cfg.train.folds is not None
    asked = teacher.taught_folds(teachers(setup), paths, plan.fold_ids_of(setup.cfg, folds), named=named)
    setup, fold_ids, pace = budget.fit_into(setup, folds, asked, paths)
    final_stage.check(setup)  # against the side the budget chose, which may be smaller than the config's
    plan.record_sources(paths, setup)
    fingerprint = teacher.fingerprint(validation.fingerprint(setup.cfg, paths.folds_csv), teachers(setup))
    return setup, folds, fingerprint, fold_ids, pace


def train_head_start(
    setup: Setup, folds: pd.DataFrame, pace: Pace, paths: Paths, fingerprint: str, trained: list[int]
) -> None:
    """The first epochs of the next fold the budget left, in the time left, kept to resume."""
    head_start = pace.head_start(trained)
    if head_start is None:
        return
    k, out = head_start.fold, paths.fold(head_start.fold)
    with timed(pace, f"fold {k}", out, fingerprint):
        train_fold(setup, folds, k, out, fingerprint, stop_after=head_start.epochs)
    print(f"fold {k}: {head_start.epochs} of {setup.cfg.train.epochs} epochs, kept in {out.root} for a later run")


def budget_allows(pace: Pace | None, name: str, out: FitFiles, fingerprint: str, trained: list[int]) -> bool:
    """Whether the fit `name` runs: always without a budget, or when it is finished or begun; else
    when the budget's pace says it still ends in time."""
    return pace is None or not fresh(out, fingerprint) or pace.starts(name, trained)


@contextlib.contextmanager
def timed(pace: Pace | None, name: str, out: FitFiles, fingerprint: str) -> Iterator[None]:
    """The fit's wall clock, told to the budget's pace keeper when the fit starts afresh here."""
    afresh, started = fresh(out, fingerprint), time.monotonic()
    yield
    if pace is not None:
        pace.done(name, time.monotonic() - started if afresh else None)


def fresh(out: FitFiles, fingerprint: str) -> bool:
    """Whether the fit in `out` would start from its first epoch: neither finished for this config nor begun."""
    return not out.checkpoint.exists() and not finished(FitResult.read(out.result), out, fingerprint)


def finished(before: FitResult | None, out: FitFiles, fingerprint: str) -> bool:
    """Whether `before` is a finished fit of this config whose weights are still there and load."""
    return before is not None and before.fingerprint == fingerprint and inference.weights_readable(out.model)


def train_fold(
    setup: Setup, folds: pd.DataFrame, fold: int, out: FitFiles, fingerprint: str, stop_after: int | None = None
) -> FitResult | None:
    """The fold's fit; with `stop_after`, its first epochs only, left to resume (None returned)."""
    train, valid = validation.fit_rows(folds, fold)
    return fit_once(
        setup,
        train,
        valid,
        out,
        setup.cfg.train.epochs,
        fingerprint,
        f"fold {fold}",
        fold=fold,
        after=lambda: write_oof(setup, folds, valid, out),
        stop_after=stop_after,
    )


def fit_once(
    setup: Setup,
    train_rows: np.ndarray,
    valid_rows: np.ndarray | None,
    out: FitFiles,
    epochs: int,
    fingerprint: str,
    name: str,
    *,
    fold: int | None,
    after=None,
    stop_after: int | None = None,
) -> FitResult | None:
    """fit(), unless `out` already holds a finished fit of this config; None after a head start
    (`stop_after`), which leaves its checkpoint and writes no result. `fold`: the fold it is
    (None: the full fit), whose teacher's models label train.pseudo_labels' images."""
    previous = out.previous
    if distributed.is_main():
        restore_unreplaced(out, previous)
    distributed.barrier()
    before = FitResult.read(out.result)
    distributed.barrier()  # under torchrun: every rank has read it before rank 0 may move it
    if finished(before, out, fingerprint):
        print(f"{name}: finished before ({setup.task.metric} {before.score:.5f}), skipped")
        return before
    if before is not None and before.fingerprint == fingerprint:
        print(f"{name}: finished before, but {out.model} is missing or does not load; training it again")
        if distributed.is_main():
            shutil.rmtree(out.root)
        distributed.barrier()
    elif before is not None:
        print(f"{name}: the config changed since it was trained; training it again ({previous.root.name} until then)")
        if distributed.is_main():
            out.root.rename(previous.root)
        distributed.barrier()  # moved before any rank looks for a checkpoint to resume

    def replaced() -> None:
        if distributed.is_main() and previous.root.exists():
            shutil.rmtree(previous.root)

    try:
        taught, rows = joined(setup, train_rows, fold, name)
        result = final_stage.fit_in_stages(
            taught, rows, valid_rows, out, epochs, fingerprint, name, on_checkpoint=replaced, stop_after=stop_after
        )
    except BaseException:
        if distributed.is_main():
            restore_unreplaced(out, previous)
        raise
    distributed.barrier()  # rank 0's files are written before any rank reads them
    if stop_after is not None:
        return None
    if after is not None:
        after()
    result.save(out.result)  # the fold counts as finished only now
    if distributed.is_main():
        out.checkpoint.unlink(missing_ok=True)
        shutil.rmtree(out.main_stage.root, ignore_errors=True)  # train.final_size's first stage
    return result


def restore_unreplaced(out: FitFiles, previous: FitFiles) -> None:
    """An earlier fit whose successor stopped before its first checkpoint takes its place again."""
    if not previous.root.exists():
        return
    if out.checkpoint.exists() or out.result.exists():
        shutil.rmtree(previous.root)
        return
    if out.root.exists():
        shutil.rmtree(out.root)
    previous.root.rename(out.root)


def write_oof(setup: Setup, folds: pd.DataFrame, valid: np.ndarray, out: FitFiles) -> None:
    """The kept epoch's out-of-fold predictions, in the competition's units."""
    kept = "best" if setup.cfg.train.checkpoint == "best" else "last"
    oof = setup.task.out_of_fold(folds, valid, Raw.load(out.valid_predictions(kept)))
    write_csv(out.oof, setup.task.oof_table(oof))


def summarize(
    results: list[FitResult], setup: Setup, folds: pd.DataFrame, fold_ids: list[int], paths: Paths, fingerprint: str
) -> CV:
    """Every fold at its best and its last epoch; the pooled out-of-fold scores are computed
    from the same rows and targets as oof.csv."""
    task, targets = setup.task, target_columns(folds)
    valid = [validation_rows(folds, k) for k in fold_ids]

    def scores(epoch: str) -> Scores:
        raw = [Raw.load(paths.fold(k).valid_predictions(epoch)) for k in fold_ids]
        oof = OutOfFold.concat([task.out_of_fold(folds, rows, r) for rows, r in zip(valid, raw, strict=True)])
        return Scores.of(*task.oof_scores(oof, targets))

    return CV(
        metric=task.metric,
        higher_is_better=task.higher_is_better,
        kept=setup.cfg.train.checkpoint,
        epochs=final_stage.total_epochs(setup.cfg),
        fold_ids=[int(k) for k in fold_ids],
        fold_sizes=[len(rows) for rows in valid],
        best_epochs=[r.best_epoch for r in results],
        best=scores("best"),
        last=scores("last"),
        fingerprint=fingerprint,
        validation_plan=validation_plan(folds),
        averaged=setup.cfg.train.average.describe(folds=len(fold_ids)) if setup.cfg.train.average is not None else "",
    )
