"""Segmentation (issue 29) on a held-out competition, `stencils` (benchmarks/_segmentation_competition.py:
MNIST digits painted on crops of scikit-image's pictures, a quarter of the images with none).

In a scratch folder: build it, run `python -m pipeline init` on the folder (the "found" column is
what it printed) and, adding to the config it wrote nothing but `train.preset=medium`,
`train.time_budget=20m` and the held-out answers' file name, run scrape, data, folds, train,
predict and score. Rows, each a held-out mean Dice over the test images:

  Otsu's threshold (peer)  per image, on its grey levels; mask the bright side or the dark one,
                           whichever scores better on the training images
  the pipeline             its submission: the post-processing fitted out of fold
  the same, at 0.5         the same models' test probabilities, thresholded at 0.5 and nothing else

Then the executors on masks, train.device_aug=on (batched: images and masks resident, warped
together) against =off (albumentations per image in a DataLoader, the masks decoded from their
codes per item), at the settings the run chose: the training images per second of the second
epoch of `make train` on one fold, and the data path alone (an epoch of augmented batches with
their masks, no model), which is what a GPU's model would wait on.

    python benchmarks/segmentation.py [--tiny]
"""

import argparse
import re
import tempfile
import time
from pathlib import Path

import _stages
import numpy as np
import pandas as pd
from _peers import otsu_peer
from _segmentation_competition import stencils
from _stages import machine, stage

RUN = ["train.preset=medium", "train.time_budget=20m", "data.solution=solution.csv"]
TINY = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet", "model.pretrained=none"]
SMALL = {"n_train": 40, "n_test": 12}


def pipeline_rows(config: Path, scratch: Path, overrides: list[str]) -> list[tuple[str, float, str]]:
    started = time.perf_counter()
    for step in ("scrape", "data", "folds", "train", "predict", "score"):
        stage(step, config, overrides, scratch, show=("train", "predict"))
    minutes = f"{(time.perf_counter() - started) / 60:.1f} min"
    fitted = float(pd.read_csv(scratch / "submissions" / "ledger.csv")["local_score"].iloc[-1])
    return [
        ("`make init`, then scrape train predict (medium, 20 min): post-processing fitted", fitted, minutes),
        ("the same models' probabilities at a fixed 0.5", at_half(config, scratch, overrides), ""),
    ]


def at_half(config: Path, scratch: Path, overrides: list[str]) -> float:
    """The submitted models' test probabilities decided by a threshold of 0.5 alone, scored."""
    import os

    from pipeline import config as C
    from pipeline.kaggle.submission import read_submission
    from pipeline.learn.selection import combine, plan_submission
    from pipeline.paths import Paths
    from pipeline.tasks.mask_rules import Rule

    here = Path.cwd()
    os.chdir(scratch)
    try:
        cfg = C.load(config, overrides)
        plan, test = plan_submission(cfg, Paths.of(cfg))
        predictions, task = combine(test, plan)
        plain = task.with_decision({"rules": [Rule().as_dict()] * len(task.labels)})
        submitted = plain.submission("rle", test.table["id"].to_numpy(), predictions, None, sizes=test.sizes)
        solution = read_submission(scratch / "data" / "stencils" / "solution.csv")
        submitted = submitted.set_index("id").loc[solution["id"]].reset_index()
        return plain.score_file("dice", submitted.set_axis(solution.columns, axis=1), solution)
    finally:
        os.chdir(here)


def executor_rows(config: Path, scratch: Path, overrides: list[str]) -> list[tuple[str, float]]:
    """Training images per second of fold 0's second epoch, batched and per-image executors."""
    rows = []
    for setting, name in (("on", "batched (device_aug=on)"), ("off", "per image (device_aug=off)")):
        log = scratch / f"executor_{setting}.log"
        runs = ["train.folds=[0]", "train.full_fit=false", "train.epochs=2", "train.time_budget=null"]
        stage(
            "train",
            config,
            [*overrides, *runs, f"train.device_aug={setting}", f"train.experiment=speed_{setting}"],
            scratch,
            log=log,
        )
        speeds = re.findall(r"epoch 2 .* ([\d.]+) img/s", log.read_text())
        rows.append((name, float(speeds[-1])))
    return rows


def data_path_rows(config: Path, scratch: Path, overrides: list[str]) -> list[tuple[str, float]]:
    """Augmented training batches with their masks per second, fold 0's rows, no model."""
    import os

    from pipeline import config as C
    from pipeline.learn import fit, plan
    from pipeline.paths import Paths

    here, rows = Path.cwd(), []
    os.chdir(scratch)
    try:
        for setting, name in (("on", "batched (device_aug=on)"), ("off", "per image (device_aug=off)")):
            cfg = C.load(config, [*overrides, f"train.device_aug={setting}"])
            setup, folds = plan.prepare(cfg, Paths.of(cfg))
            parts = fit.assemble(setup, np.flatnonzero(folds["fold"].to_numpy() != 0), None)
            started, seen = time.perf_counter(), 0
            for images, _masks, _sizes in parts.train_batches(0):
                seen += len(images)
            rows.append((name, seen / (time.perf_counter() - started)))
    finally:
        os.chdir(here)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny data, 2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        stencils(scratch / "data" / "stencils", **(SMALL if args.tiny else {}))
        config, found = _stages.init("stencils", scratch)
        overrides = RUN + (TINY if args.tiny else [])
        print("| machine | what `make init` found | row | held-out Dice | training images/s | wall clock |")
        print("|---|---|---|---|---|---|")
        otsu = otsu_peer(scratch / "data" / "stencils")
        print(f"| {machine()} | {found} | peer: Otsu's threshold | {otsu:.4f} | | |", flush=True)
        for row, score, minutes in pipeline_rows(config, scratch, overrides):
            print(f"| {machine()} | | {row} | {score:.4f} | | {minutes} |", flush=True)
        for name, speed in executor_rows(config, scratch, overrides):
            print(f"| {machine()} | | executor on masks: {name}, one fold, epoch 2 | | {speed:.0f} | |", flush=True)
        for name, speed in data_path_rows(config, scratch, overrides):
            print(f"| {machine()} | | data path alone: {name}, batches with masks | | {speed:.0f} | |", flush=True)


if __name__ == "__main__":
    main()
