"""A new competition's first run: `make init`, then the fast and medium presets, against a peer.

For each competition, in a scratch folder: build it (benchmarks/_competitions.py), run
`python -m pipeline init` on the folder and keep what it detected, then with nothing added to
the config it wrote but the preset, its time budget and the held-out answers' file name, run
data, folds, train, predict (predict.models=auto) and score. A row per preset: the held-out
score and the wall clock of the whole run. Beside them the classical peer on the same folds
and test images: an RBF SVC on the pixels, or the training rows' mean shape for keypoints.

  tiny      1,400 MNIST digits shrunk to 8x8, grayscale, Digit Recognizer's pixel columns
  photos    150 colour photo patches of 64 px, 3 classes
  textures  200 grayscale texture patches of 48 px, 4 classes
  cards     1,000 grayscale card photos of 48 px, 4 corner keypoints, some missing

    python benchmarks/first_run.py [--only tiny photos textures cards] [--presets fast medium] [--tiny]
"""

import argparse
import tempfile
import time
from pathlib import Path

import _competitions
import _stages
import pandas as pd
from _peers import Peer, inside
from _stages import machine, stage

from pipeline import config as C

BUDGETS = {"fast": "5m", "medium": "15m"}
TINY = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet", "model.pretrained=none"]
SMALL = {"tiny": {"n_train": 60, "n_test": 20}, "photos": {"train_per_class": 6, "test_per_class": 3}}


def init(name: str, scratch: Path, tiny: bool) -> tuple[Path, str]:
    """The config `make init` writes for the built competition, and what it printed."""
    _competitions.BUILDERS[name](scratch / "data" / name, **(SMALL.get(name, {}) if tiny else {}))
    return _stages.init(name, scratch)


def first_run(config: Path, preset: str, scratch: Path, tiny: bool) -> tuple[float, float]:
    """Held-out score and wall clock (minutes) of data, folds, train, predict and score."""
    overrides = [f"train.preset={preset}", f"train.time_budget={BUDGETS[preset]}", "data.solution=solution.csv"]
    overrides += TINY if tiny else []
    started = time.perf_counter()
    for step in ("data", "folds", "train", "predict", "score"):
        stage(step, config, overrides, scratch, show=("train", "predict"))
    minutes = (time.perf_counter() - started) / 60
    ledger = pd.read_csv(scratch / "submissions" / "ledger.csv").iloc[-1]
    return float(ledger["local_score"]), minutes


def competition_rows(name: str, presets: list[str], tiny: bool) -> None:
    """Prints each row as soon as it is measured, so an interrupted run keeps what it had."""
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        config, found = init(name, scratch, tiny)
        for preset in presets:
            score, minutes = first_run(config, preset, scratch, tiny)
            run = f"{preset}, budget {BUDGETS[preset]}"
            print(f"| {machine()} | {name} | {found} | {run} | {score:.4f} | {minutes:.1f} min |", flush=True)
        with inside(scratch):
            peer = Peer(C.load(config, ["data.solution=solution.csv"]))
            _, _, held_out = peer.scores()
        print(f"| {machine()} | {name} | | peer: {peer.name} | {held_out:.4f} | |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["tiny", "photos", "textures", "cards"])
    parser.add_argument("--presets", nargs="*", default=["fast", "medium"])
    parser.add_argument("--tiny", action="store_true", help="tiny data, 2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    print("| machine | competition | what `make init` found | run | held-out score | wall clock |")
    print("|---|---|---|---|---|---|", flush=True)
    for name in ["tiny", "photos"] if args.tiny else args.only:
        competition_rows(name, args.presets[:1] if args.tiny else args.presets, args.tiny)


if __name__ == "__main__":
    main()
