"""`make gpu-check`: the GPU path checked for real, on the CUDA GPUs of this machine.

  1. the engine, fit, batch-augmentation and predict tests with CUDA as the training device
     (tests/test_cuda.py adds bf16 and fp16 AMP, channels_last, torch.compile, resident batches
     on the GPU against the CPU's, and DDP over NCCL when there are two GPUs);
  2. each demo competition end to end (data, scrape, folds, train, predict, score), timed by
     stage, with its CV and held-out score;
  3. benchmarks/device_path.py with its GPU defaults (resnet18, 20,000 images, batch 256);
  4. the executors on masks (issue 29's target: the batched one trains at least 2x the images
     per second of the per-image one): the cells demo's fold 0 for two epochs each way,
     benchmarks/segmentation.py's executor_rows.

Every check runs even when an earlier one fails. It prints a table to paste into BENCHMARKS.md
and exits non-zero when any check failed.

    python benchmarks/gpu_check.py [--demos digits hands] [--skip-tests]
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from _stages import ROOT, machine, stage

TESTS = ["test_cuda.py", "test_engine.py", "test_batch_aug.py", "test_train.py", "test_predict.py", "test_keypoints.py"]
STAGES = ("data", "scrape", "folds", "train", "predict", "score")


def run_tests() -> tuple[bool, str, float]:
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(f"tests/{t}" for t in TESTS)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(done.stdout[-6000:], done.stderr[-2000:], sep="\n", flush=True)
    summary = next((line for line in reversed(done.stdout.splitlines()) if re.search(r"\d+ (passed|failed)", line)), "")
    return done.returncode == 0, summary.strip("= ") or f"pytest exited {done.returncode}", time.perf_counter() - start


def run_demo(name: str) -> tuple[bool, str, float]:
    """Every stage of configs/<name>.yaml in a scratch folder: seconds per stage, CV, held-out."""
    config = ROOT / "configs" / f"{name}.yaml"
    if not config.exists():
        return False, f"{config.relative_to(ROOT)} does not exist", 0.0
    seconds = {}
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        try:
            for step in STAGES:
                seconds[step] = stage(step, config, [], cwd, show=("train", "predict", "score")).seconds
        except subprocess.CalledProcessError as exc:
            return False, f"`{exc.cmd[3]}` exited with {exc.returncode}", sum(seconds.values())
        cv = json.loads(next((cwd / "runs").glob("*/*/cv.json")).read_text())
        held_out = pd.read_csv(cwd / "submissions" / "ledger.csv")["local_score"].iloc[-1]
    times = ", ".join(f"{step} {s:.0f} s" for step, s in seconds.items())
    figures = f"{times}; CV {cv['metric']} {cv['score']:.4f} ± {cv['std']:.4f}, held-out {held_out:.4f}"
    return True, figures, sum(seconds.values())


def run_device_path() -> tuple[bool, str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_path.py")], cwd=ROOT, capture_output=True, text=True
    )
    print(done.stdout, done.stderr[-3000:], sep="\n", flush=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("|")]
    if done.returncode or len(rows) < 3:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"exited {done.returncode}: {last}", time.perf_counter() - start
    header, row = [c.strip() for c in rows[0].strip("|").split("|")], [c.strip() for c in rows[2].strip("|").split("|")]
    return True, "; ".join(f"{h}: {v}" for h, v in list(zip(header, row, strict=True))[1:]), time.perf_counter() - start


def run_executors(name: str) -> tuple[bool, str, float]:
    """Training images/s of the second epoch with train.device_aug on and off, on configs/<name>.yaml."""
    from segmentation import executor_rows

    start, config = time.perf_counter(), ROOT / "configs" / f"{name}.yaml"
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for step in ("data", "folds"):
                stage(step, config, [], Path(scratch))
            rows = executor_rows(config, Path(scratch), [])
        except subprocess.CalledProcessError as exc:
            return False, f"`{exc.cmd[3]}` exited with {exc.returncode}", time.perf_counter() - start
    (_, batched), (_, per_image) = rows
    figures = f"batched {batched:.0f} img/s, per image {per_image:.0f} img/s: {batched / per_image:.2f}x"
    return True, figures, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", nargs="*", default=["digits", "hands", "cells"], help="configs/<name>.yaml to run")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA GPU, and torch sees none here")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)", flush=True)
    checks = {} if args.skip_tests else {"tests on CUDA": run_tests()}
    for name in args.demos:
        checks[f"demo {name}, make scrape train predict score"] = run_demo(name)
    checks["device_path.py (resnet18, 20k 32x32 images, batch 256)"] = run_device_path()
    checks["executors on masks (cells, fold 0, epoch 2)"] = run_executors("cells")
    if torch.cuda.device_count() < 2:
        checks["DDP over NCCL"] = (True, "skipped: one GPU (test_cuda.py runs it on two or more)", 0.0)
    print("| machine | check | result | wall clock | figures |")
    print("|---|---|---|---|---|")
    for check, (ok, figures, seconds) in checks.items():
        print(f"| {machine()} | {check} | {'ok' if ok else 'FAILED'} | {seconds:.0f} s | {figures} |")
    if not all(ok for ok, _, _ in checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
