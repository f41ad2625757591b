"""Real-size competitions (issue 25): the data path for 1,000 px photos, and a first run that
spends a 20-minute budget well, each against what came before or a simple peer.

Two competitions with held-out answers, built once into --scratch (benchmarks/_competitions.py,
scenes: a handwritten digit painted on a crop of a photograph; the digit is the class):

  A  2,000 grayscale PNGs of 300 px (and 500 test), 4 classes, 5:1 imbalanced
  B  20,000 colour JPEGs of about 1,000 x 750 px: 16,000 train, 4,000 test, 10 classes

One figure a run (--figure), one table each:

  data    `make data` on B: wall clock, img/s, peak RSS and cache size, with the pipeline of
          the commit before issue 25 (--before, unpacked with `git archive`) and with this one
  decode  B's JPEGs at a 160 px working side, on two threads and in two processes: a full
          decode then a resize, PIL's draft (libjpeg's DCT scaling), simplejpeg when installed
  wait    fold 0 of B at 160 px for a few dozen steps, as fit() builds it: the share of the
          steps spent waiting for data, and the time to make the images resident first
  first   the first run: `make init`, then data, folds, train (the budget init wrote), predict
          and score; the plan it printed, minutes used, epochs after the backbone unfroze, the
          held-out accuracy beside an RBF SVC on the pixels on the same split

    python benchmarks/real_size.py --figure first [--only A B] [--scratch DIR] [--tiny]
"""

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import _competitions
import numpy as np
import pandas as pd
import yaml
from _peers import Peer, inside
from _stages import ROOT, machine, stage
from PIL import Image

from pipeline import config as C
from pipeline.data import sources
from pipeline.data.images import LazyImages, decode
from pipeline.learn import budget, engine, fit, plan
from pipeline.learn.fit_setup import Setup
from pipeline.learn.schedule import Schedule
from pipeline.paths import Paths

BEFORE = "cf846cf"  # the last commit before issue 25
COMPETITIONS = {"A": "scenes_a", "B": "scenes_b"}
TINY = {"A": {"n_train": 60, "n_test": 20, "height": 96}, "B": {"n_train": 80, "n_test": 20, "height": 150}}
TINY_RUN = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet", "model.pretrained=none"]
PEER_SIDE = {"A": 48, "B": 32}  # the SVC's input side
WAIT_SIDE, WAIT_STEPS = 160, 30


def build(name: str, scratch: Path, tiny: bool) -> Path:
    """The competition in scratch/data/<name>, built once, and the config `make init` wrote."""
    competition = COMPETITIONS[name] + ("_tiny" if tiny else "")
    folder = scratch / "data" / competition
    if not (folder / "solution.csv").exists():  # written last: a folder without it is half-built
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        _competitions.BUILDERS[COMPETITIONS[name]](folder, **(TINY[name] if tiny else {}))
        print(f"built {folder} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    config = scratch / "configs" / f"{competition}.yaml"
    if not config.exists():
        command = [sys.executable, "-m", "pipeline", "init", f"data/{competition}"]
        subprocess.run(command, cwd=scratch, check=True, stdout=sys.stderr)
    return config


HEADERS = {
    "data": "| machine | competition | pipeline | `make data` | img/s | peak RSS | image cache |",
    "decode": f"| machine | B's JPEGs to a {WAIT_SIDE} px working side | img/s, 2 threads | img/s, 2 processes |",
    "wait": f"| machine | B's images at {WAIT_SIDE} px | batches built in | waiting for data | img/s |",
    "first": (
        "| machine | competition | plan | what ran | train stage | epochs unfrozen | held-out accuracy | SVC held-out |"
    ),
}


def data_rows(scratch: Path, tiny: bool) -> Iterator[str]:
    config = build("B", scratch, tiny)
    cfg = C.load(config)
    folder = scratch / cfg.data.dir
    images = len(pd.read_csv(folder / "train.csv")) + len(pd.read_csv(folder / "test.csv"))
    before = scratch / "before"
    if not (before / "pipeline").is_dir():
        before.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BEFORE, "pipeline"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    caches = scratch / Paths.of(cfg).cache("train").parent
    runs = (
        (f"before ({BEFORE})", before, []),
        ("after, as `make init` wrote it", None, []),
        (f"after, model.image_size={WAIT_SIDE}", None, [f"model.image_size={WAIT_SIDE}"]),
    )
    for label, code, overrides in runs:
        shutil.rmtree(caches, ignore_errors=True)
        run = stage("data", config, overrides, scratch, code=code)
        cache = sum(f.stat().st_size for f in caches.rglob("*.npy")) / 2**30 if caches.exists() else 0
        held = "none: decoded lazily, every epoch" if cache == 0 else f"{cache:.2f} GB"
        yield (
            f"| {machine()} | B | {label} | {run.seconds:.0f} s | {images / run.seconds:.0f} | "
            f"{run.peak_rss_gb:.2f} GB | {held} |"
        )


# --- decode -------------------------------------------------------------------------------------


def _full(path: Path) -> tuple:
    with Image.open(path) as image:
        image.load()
        width, height = image.size
        side = WAIT_SIDE / min(width, height)
        return np.asarray(image.convert("RGB").resize((round(width * side), round(height * side)))).shape


def _draft(path: Path) -> tuple:
    return decode(path, 3, WAIT_SIDE).shape


def _simplejpeg(path: Path) -> tuple:
    import simplejpeg

    with Image.open(path) as image:
        width, height = image.size
    side = WAIT_SIDE / min(width, height)
    target = (round(width * side), round(height * side))
    pixels = simplejpeg.decode_jpeg(path.read_bytes(), min_height=target[1], min_width=target[0])
    return np.asarray(Image.fromarray(pixels).resize(target)).shape


def decode_rows(scratch: Path, tiny: bool) -> Iterator[str]:
    config = build("B", scratch, tiny)
    paths = sorted((scratch / C.load(config).data.dir / "train").glob("*.jpg"))[: 40 if tiny else 1000]
    decoders = {"full decode, then resize": _full, "PIL draft (DCT scaling), then resize": _draft}
    try:
        import simplejpeg  # noqa: F401 - measured only where installed: not a dependency

        decoders["simplejpeg (DCT scaling), then resize"] = _simplejpeg
    except ImportError:
        pass
    for name, function in decoders.items():
        rates = []
        for pool in (ThreadPoolExecutor(2), ProcessPoolExecutor(2)):
            with pool:
                list(pool.map(function, paths[:8]))  # the processes start, the files are in the page cache
                started = time.perf_counter()
                list(pool.map(function, paths, chunksize=8))
                rates.append(len(paths) / (time.perf_counter() - started))
        yield f"| {machine()} | {name} | {rates[0]:.0f} | {rates[1]:.0f} |"


# --- wait ---------------------------------------------------------------------------------------


def waiting(setup: Setup, folds: pd.DataFrame, steps: int) -> tuple[float, float, float]:
    """(seconds to build the batches, data wait share, img/s) of fold 0's first `steps` steps."""
    valid = np.flatnonzero(folds["fold"].to_numpy() == 0)
    started = time.perf_counter()
    parts = fit.assemble(setup, np.setdiff1d(np.arange(len(folds)), valid), valid)
    built = time.perf_counter() - started
    parts.frozen.unfreeze()
    state = fit.optimisation(setup, parts, epochs=1)
    watch = budget.Stopwatch(parts.train_batches(0), 2, steps, parts.device)
    row = engine.train_one_epoch(fit.wrap(parts.model, parts.device, False), watch, setup.task, state, parts.device)
    return built, row["data_wait"], row["images_per_s"]


def wait_rows(scratch: Path, tiny: bool) -> Iterator[str]:
    config = build("B", scratch, tiny)
    overrides = [f"model.image_size={WAIT_SIDE}", "train.time_budget=null", *(TINY_RUN if tiny else [])]
    for step in ("data", "folds"):
        stage(step, config, overrides, scratch)
    steps = 3 if tiny else WAIT_STEPS
    with inside(scratch):
        base = C.load(config, overrides)
        for label, device_aug, lazy in (
            ("decoded at full size every epoch (before: B was over cache_limit_gb), per image", "off", True),
            ("decoded at full size once, then resident (before, train.device_aug=auto)", "auto", True),
            ("the working-side cache, per image (train.device_aug=off)", "off", False),
            ("the working-side cache, then resident (train.device_aug=auto)", "auto", False),
        ):
            cfg = C.with_overrides(base, {"train.device_aug": device_aug}, "wait")
            setup, folds = plan.prepare(cfg, Paths.of(cfg))
            if lazy:
                setup = dataclasses.replace(setup, images=LazyImages(sources.read(cfg).train.images, None))
            built, share, rate = waiting(setup, folds, steps)
            yield f"| {machine()} | {label} | {built:.0f} s | {share:.1%} | {rate:.0f} |"


# --- first --------------------------------------------------------------------------------------


def peer_score(name: str, cfg: C.Config, scratch: Path) -> float:
    """The SVC's held-out accuracy, kept beside the built competition: it depends on nothing else
    (B's takes 10 minutes)."""
    kept = scratch / f"peer_{cfg.competition.name}.txt"
    if not kept.exists():
        kept.write_text(str(Peer(cfg, PEER_SIDE[name]).held_out()))
    return float(kept.read_text())


def first_rows(names: list[str], scratch: Path, tiny: bool) -> Iterator[str]:
    for name in names:
        config = build(name, scratch, tiny)
        overrides = ["data.solution=solution.csv", *(TINY_RUN + ["train.time_budget=1m"] if tiny else [])]
        shutil.rmtree(scratch / C.load(config).runs_dir, ignore_errors=True)  # a first run: nothing kept
        log = scratch / f"train_{name}.log"
        started = time.perf_counter()
        for step in ("data", "folds", "train", "predict", "score"):
            run = stage(step, config, overrides, scratch, log=log if step == "train" else None)
            if step == "train":
                train_minutes = run.seconds / 60
        total = (time.perf_counter() - started) / 60
        said = [line for line in log.read_text().splitlines() if line.startswith(("plan:", "  "))]
        print("\n".join(said), file=sys.stderr, flush=True)
        cfg = C.load(config, overrides)
        paths = Paths.of(cfg)
        with inside(scratch):
            schedule = json.loads(paths.budget_json.read_text())["schedule"]
            ran = what_ran(paths, log.read_text(), cfg.folds.n_splits)
            resolved = yaml.safe_load(paths.resolved("train").read_text())
            score = float(pd.read_csv("submissions/ledger.csv").iloc[-1]["local_score"])
            peer = peer_score(name, cfg, scratch)
        unfreeze = resolved["model"]["unfreeze_epoch"] or 1
        budget_min = C.seconds(cfg.train.time_budget) / 60
        planned = Schedule.from_json(schedule).describe(cfg.folds.n_splits)
        yield (
            f"| {machine()} | {name} | {planned} | {ran} | {train_minutes:.1f} of {budget_min:.0f} min "
            f"({train_minutes / budget_min:.0%}); whole run {total:.1f} min | {schedule['epochs'] - unfreeze + 1} | "
            f"{score:.4f} | {peer:.4f} |"
        )


def what_ran(paths: Paths, log: str, all_folds: int) -> str:
    """The folds the CV was stated on, the full fit, and a head start, as the train stage ran them
    (the pace may leave planned folds for later, and sizes the head start to the time left)."""
    trained = len(json.loads(paths.cv_json.read_text())["fold_ids"])
    ran = f"{trained} of {all_folds} folds" + (" and the full fit" if paths.full.result.exists() else "")
    head_start = re.search(r"^fold (\d+): (\d+) of \d+ epochs", log, flags=re.MULTILINE)
    if head_start is None:
        return ran
    return ran + f", {head_start[2]} epoch{'s' if int(head_start[2]) > 1 else ''} of fold {head_start[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure", choices=["data", "decode", "wait", "first"], default="first")
    parser.add_argument("--only", nargs="*", default=["A", "B"], choices=list(COMPETITIONS))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/real_size"), help="built competitions, kept")
    parser.add_argument("--tiny", action="store_true", help="small competitions, 1 epoch: for the test suite")
    args = parser.parse_args()
    scratch = (args.scratch / "tiny" if args.tiny else args.scratch).resolve()
    if args.tiny:
        shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True)
    header = HEADERS[args.figure]
    print(header, "|---" * header.count("| ") + "|", sep="\n", flush=True)
    if args.figure == "first":
        rows = first_rows(args.only, scratch, args.tiny)
    else:
        rows = {"data": data_rows, "decode": decode_rows, "wait": wait_rows}[args.figure](scratch, args.tiny)
    for row in rows:  # each as soon as it is measured: an interrupted run keeps what it had
        print(row, flush=True)


if __name__ == "__main__":
    main()
