"""Training on several processes: DDP for one fold under torchrun, or one fold per GPU.

Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment) every rank runs the same
stage code in lockstep; train.batch_size stays the global batch (each rank takes its share), so
a config means the same optimisation on any number of GPUs. Only rank 0 writes files and
prints: the other ranks' writes go to /dev/null (files.atomic_path) and their stdout and
progress bars are silenced (`quiet_other_ranks`), so no stage needs a second code path.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import PipelineError

DDP_MIN_ROWS = 20_000  # train.distributed=auto: DDP from this many training rows, one fold per GPU below


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def worker_env(gpus: list[str], processes: int) -> dict[str, str]:
    """The environment of a worker process given `gpus`, sharing the CPU cores with `processes`
    workers in all."""
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": ",".join(gpus),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


def quiet_other_ranks() -> None:
    """Ranks other than 0 print nothing but their errors (stderr stays)."""
    if not is_main():
        os.environ["TQDM_DISABLE"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def init(device: torch.device) -> None:
    """Join the process group once: NCCL between GPUs, gloo between CPU processes."""
    if world_size() > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean(value: float, weight: float = 1.0) -> float:
    """The weighted mean of a per-rank figure over the ranks (weight: the rank's item count)."""
    if not dist.is_initialized():
        return value
    pairs = [None] * world_size()
    dist.all_gather_object(pairs, (value, weight))
    values, weights = np.array(pairs, dtype=np.float64).T
    return float((values * weights).sum() / weights.sum())


def rank_batch(batch_size: int, ranks: int | None = None) -> int:
    """Each rank's share of the global batch, among `ranks` (default: this run's world size)."""
    ranks = ranks or world_size()
    if batch_size % ranks:
        raise PipelineError(
            f"train.batch_size={batch_size} is the global batch and must divide evenly among {ranks} processes"
        )
    return batch_size // ranks


def shard(rows: np.ndarray) -> np.ndarray:
    """This rank's share of `rows`: every world_size-th, starting at its rank."""
    return rows[rank() :: world_size()]


def unshard(arrays: np.ndarray) -> np.ndarray:
    """Every rank's rows of `shard`, gathered back into the original order."""
    if not dist.is_initialized():
        return arrays
    parts = [None] * world_size()
    dist.all_gather_object(parts, arrays)
    total = sum(len(p) for p in parts)
    merged = np.empty((total, *parts[0].shape[1:]), dtype=parts[0].dtype)
    for r, part in enumerate(parts):
        merged[r :: world_size()] = part
    return merged


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


def launch_mode(policy: str, rows: int, n_gpus: int) -> str:
    if n_gpus == 1:
        return "folds"  # one process on one GPU: nothing to distribute
    if policy != "auto":
        return policy
    return "ddp" if rows >= DDP_MIN_ROWS else "folds"
