"""How the train stage runs: in this process, or with `make train GPUS=0,1,2,3` on several GPUs
of one machine, in one of two ways.

    ddp    each fold in turn on every GPU: torchrun starts one process per GPU, DDP averages the
           gradients (train.batch_size is the global batch), rank 0 writes.
    folds  one fold per GPU at a time, each an ordinary single-GPU fit in its own process;
           then the summary and the full fit on the first GPU.

train.distributed=auto picks by the number of training rows: below DDP_MIN_ROWS an epoch is so
short that DDP's per-step gradient all-reduce and the smaller per-GPU batches cost more than
they gain, while independent folds scale perfectly; above it, DDP brings each fold (and the full
fit, which `folds` trains on one GPU) to the end sooner.
"""

import multiprocessing
import os
import subprocess
import sys

import torch

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.learn import distributed, plan
from pipeline.learn import training as train
from pipeline.learn.distributed import worker_env
from pipeline.learn.validation import read_folds
from pipeline.paths import Paths

DDP_MIN_ROWS = 20_000


def run(cfg: C.Config, gpus: str | None = None) -> None:
    """The train stage: in this process, or on the GPUs `gpus` names (several) as train.distributed says."""
    if not gpus:
        train.run(cfg)
        return
    ids = parse_gpus(gpus)
    if cfg.train.time_budget is not None and len(ids) > 1:
        raise PipelineError(
            f"train.time_budget={cfg.train.time_budget} plans the fits of one process on one device, and GPUS={gpus} "
            "trains on several: set train.epochs and model.image_size instead, or train on one GPU"
        )
    where = devices(cfg.train.device, ids)
    paths = Paths.of(cfg)
    mode = choose(cfg.train.distributed, len(read_folds(paths)), len(ids))
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


def parse_gpus(gpus: str) -> list[str]:
    ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
        raise PipelineError(f"GPUS={gpus!r}: give distinct GPU numbers separated by commas, e.g. GPUS=0,1,2,3")
    return ids


def devices(device: str, ids: list[str]) -> str:
    """What GPUS trains on, in words: its GPUs, or with train.device=cpu as many CPU processes;
    a GPU this machine lacks is refused."""
    if device == "cpu":
        return f"{len(ids)} CPU processes (GPUS={','.join(ids)}, train.device=cpu)"
    count = torch.cuda.device_count()
    missing = [g for g in ids if int(g) >= count]
    if missing:
        has = f"has {count} (GPUS=0 to {count - 1})" if count else "has no CUDA GPU"
        raise PipelineError(
            f"GPUS={','.join(ids)}: GPU {missing[0]} does not exist, this machine {has}; leave GPUS unset to train"
            f" in one process, or set train.device=cpu for {len(ids)} processes on the CPU"
        )
    return f"GPUs {','.join(ids)}"


def choose(policy: str, rows: int, n_gpus: int) -> str:
    if n_gpus == 1:
        return "folds"  # one process on one GPU: nothing to distribute
    if policy != "auto":
        return policy
    return "ddp" if rows >= DDP_MIN_ROWS else "folds"


def train_folds_in_parallel(cfg: C.Config, paths: Paths, ids: list[str]) -> None:
    """Fold k on GPU ids[k % len(ids)], one process per GPU working through its folds."""
    fold_ids = plan.fold_ids_of(cfg, read_folds(paths))
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
        setup, folds, fingerprint, planned, _ = train.train_folds(cfg, paths)
        for k in (k for k in fold_ids if k in planned):  # a time budget may train fewer
            train.train_fold(setup, folds, k, paths.fold(k), fingerprint)
    except PipelineError as exc:
        print(f"error: GPU {gpu}: {exc}", file=sys.stderr)
        sys.exit(2)


def _check(process: subprocess.CompletedProcess) -> None:
    if process.returncode:
        raise PipelineError(f"{' '.join(map(str, process.args[:6]))} ... exited with {process.returncode}")
