"""`make blend` over many experiments: the whole stage, as `make` runs it, timed.

In a scratch folder: a pixel-columns competition of ROWS training images (8x8, 10 classes),
its data and folds stages run; then EXPERIMENTS experiments written as training leaves them
(cv.json and each fold's raw validation predictions): noisy copies of the one-hot truth, each
with its own noise level, so the best blend is a weighting of them all. Then `python -m
pipeline blend`, timed from process start to exit (interpreter, imports, reading the data and
every member's OOF, fitting the weights and the nested CV), for accuracy (greedy ensemble
selection) and log loss (the optimiser); and, apart, the interpreter with the stage's imports
(torch, timm), which every stage pays whatever it blends.

    python benchmarks/blend_speed.py [--experiments 10] [--rows 5000] [--tiny]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _stages import machine, stage

from pipeline import config as C
from pipeline.learn.validation import validation_plan
from pipeline.paths import Paths
from pipeline.predictions import Raw
from pipeline.records import CV, Blend, Scores

CLASSES = 10


def competition(folder: Path, rows: int, rng: np.random.Generator) -> Path:
    """train.csv and test.csv of 8x8 pixel columns, and the config a competitor would write."""
    folder.mkdir(parents=True)
    pixels = [f"pixel{i}" for i in range(64)]
    train = pd.DataFrame(rng.integers(0, 256, size=(rows, 64)), columns=pixels)
    train.insert(0, "label", np.arange(rows) % CLASSES)
    train.to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rng.integers(0, 256, size=(20, 64)), columns=pixels).to_csv(folder / "test.csv", index=False)
    config = {
        "competition": {"name": "speed", "task": "classification"},
        "data": {"layout": "pixel_columns", "dir": str(folder), "sample_submission": None},
        "model": {"name": "test_resnet", "image_size": 16, "pretrained": "none"},
    }
    path = folder.parent / "speed.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def experiment(paths: Paths, folds: pd.DataFrame, noise: float, rng: np.random.Generator) -> None:
    """What training leaves for a blend: each fold's raw validation predictions, and cv.json."""
    fold_ids = sorted(int(k) for k in folds["fold"].unique())
    for k in fold_ids:
        truth = folds.loc[folds["fold"] == k, "label"].to_numpy()
        logits = 3.0 * np.eye(CLASSES)[truth] + rng.normal(scale=noise, size=(len(truth), CLASSES))
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        paths.fold(k).root.mkdir(parents=True)
        Raw(probabilities, np.full((len(truth), 2), 8.0)).save(paths.fold(k).valid_predictions("last"))
    scores = Scores.of([0.0] * len(fold_ids), 0.0)  # the blend scores the members itself
    CV(
        metric="accuracy",
        higher_is_better=True,
        kept="last",
        epochs=1,
        fold_ids=fold_ids,
        fold_sizes=[int((folds["fold"] == k).sum()) for k in fold_ids],
        best_epochs=[1] * len(fold_ids),
        best=scores,
        last=scores,
        validation_plan=validation_plan(folds),
    ).save(paths.cv_json)


def timed_blend(config: Path, scratch: Path, metric: str) -> tuple[float, Blend]:
    started = time.perf_counter()
    stage("blend", config, [f"train.metric={metric}", f"blend.name={metric}"], scratch)
    seconds = time.perf_counter() - started
    relative = Paths.of(C.load(config))
    return seconds, Blend.load(scratch / relative.blend(metric))


def import_seconds(cwd: Path) -> float:
    """The interpreter's start and the blend stage's imports, the cost before any work."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pipeline.stages.blend"], cwd=cwd, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--tiny", action="store_true", help="3 experiments of 200 rows: for the test suite")
    args = parser.parse_args()
    members, rows = (3, 200) if args.tiny else (args.experiments, args.rows)
    rng = np.random.default_rng(0)
    print(
        "| machine | experiments | OOF rows | metric, method | `make blend` wall clock, s "
        "| of which interpreter and imports, s | the rest, s (target < 5) | best member OOF | nested CV | in-sample |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        config = competition(scratch / "data" / "speed", rows, rng)
        for step in ("data", "folds"):
            stage(step, config, [], scratch)
        relative = Paths.of(C.load(config))
        paths = Paths(relative.data, scratch / relative.runs, "e0", "e0")
        folds = pd.read_csv(paths.folds_csv, dtype={"id": str})
        for i, noise in enumerate(np.linspace(2.0, 3.0, members)):
            experiment(paths.of_experiment(f"e{i}"), folds, noise, rng)
        for metric in ("accuracy", "log_loss"):
            seconds, blend = timed_blend(config, scratch, metric)
            imports = import_seconds(scratch)
            best = (max if metric == "accuracy" else min)(blend.member_scores.values())
            print(
                f"| {machine()} | {members} | {rows} | {metric}, {blend.method} | {seconds:.1f} | {imports:.1f} "
                f"| {seconds - imports:.1f} | {best:.5f} "
                f"| {blend.nested.oof:.5f} | {blend.in_sample:.5f} |"
            )


if __name__ == "__main__":
    main()
