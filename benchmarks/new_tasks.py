"""Multi-label, regression and tabular columns (issue 28): `make init`, then `make scrape train
predict` with the medium preset in a 20-minute budget, against simple peers on the same test
images.

For each competition (benchmarks/_task_competitions.py), in a scratch folder: build it, run
`python -m pipeline init` on the folder (the "found" column is what it printed) and, adding to the
config it wrote nothing but `train.preset=medium`, `train.time_budget=20m` and the held-out
answers' file name, run scrape, data, folds, train, predict and score. For `sites`, `make blend
METHOD=stack` then stacks the one experiment with the tabular columns, and `make predict BLEND=`
submits it. The peers, fitted on every training row and scored on the same test images:

  mosaic  a one-vs-rest logistic regression on the pixels, its probabilities over 0.5
  number  a ridge regression on the pixels (alpha by leave-one-out), and the training mean
  sites   the image model alone (the experiment's own submission), and gradient-boosted trees
          (scikit-learn's HistGradientBoosting) on the columns alone

    python benchmarks/new_tasks.py [--only mosaic number sites] [--tiny]
"""

import argparse
import tempfile
import time
from pathlib import Path

import _stages
import _task_competitions
import pandas as pd
from _peers import TASK_PEERS
from _stages import machine, stage

RUN = ["train.preset=medium", "train.time_budget=20m", "data.solution=solution.csv"]
TINY = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet", "model.pretrained=none"]
SMALL = {"n_train": 60, "n_test": 20}


def init(name: str, scratch: Path, tiny: bool) -> tuple[Path, str]:
    """The config `make init` writes for the built competition, and what it printed."""
    _task_competitions.BUILDERS[name](scratch / "data" / name, **(SMALL if tiny else {}))
    return _stages.init(name, scratch)


def held_out_score(scratch: Path) -> float:
    return float(pd.read_csv(scratch / "submissions" / "ledger.csv")["local_score"].iloc[-1])


def first_run(config: Path, scratch: Path, overrides: list[str]) -> tuple[float, float]:
    """Held-out score and wall clock (minutes) of scrape, data, folds, train, predict and score."""
    started = time.perf_counter()
    for step in ("scrape", "data", "folds", "train", "predict", "score"):
        stage(step, config, overrides, scratch, show=("train", "predict"))
    return held_out_score(scratch), (time.perf_counter() - started) / 60


def stacked(config: Path, scratch: Path, overrides: list[str]) -> tuple[float, float]:
    """`make blend METHOD=stack`, its submission, and its held-out score and minutes."""
    started = time.perf_counter()
    stage("blend", config, [*overrides, "blend.method=stack", "blend.name=stack"], scratch, show=("blend",))
    for step in ("predict", "score"):
        stage(step, config, [*overrides, "predict.blend=stack"], scratch, show=("predict",))
    return held_out_score(scratch), (time.perf_counter() - started) / 60


def competition_rows(name: str, tiny: bool) -> None:
    """Prints each row as soon as it is measured, so an interrupted run keeps what it had."""
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        config, found = init(name, scratch, tiny)
        overrides = RUN + (TINY if tiny else [])
        score, minutes = first_run(config, scratch, overrides)
        alone = "the image model alone: " if name == "sites" else ""
        print(f"| {machine()} | {name} | {found} | {alone}medium, budget 20m | {score:.4f} | {minutes:.1f} min |")
        if name == "sites":
            score, minutes = stacked(config, scratch, overrides)
            print(f"| {machine()} | {name} | | stack: the experiment + site, age | {score:.4f} | {minutes:.1f} min |")
        for peer, peer_score in TASK_PEERS[name](scratch / "data" / name):
            print(f"| {machine()} | {name} | | peer: {peer} | {peer_score:.4f} | |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    competitions = list(_task_competitions.BUILDERS)
    parser.add_argument("--only", nargs="*", default=competitions, choices=competitions)
    parser.add_argument("--tiny", action="store_true", help="tiny data, 2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    print("| machine | competition | what `make init` found | run | held-out score | wall clock |")
    print("|---|---|---|---|---|---|", flush=True)
    for name in args.only:
        competition_rows(name, args.tiny)


if __name__ == "__main__":
    main()
