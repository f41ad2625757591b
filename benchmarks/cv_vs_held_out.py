"""Does the CV a submission states predict its score? Three competitions with held-out answers.

For each, in a scratch folder: data, folds and train once with the config a competitor would
write, then `predict` with predict.models full, folds and auto, each scored against the
held-out answers (`make score`). A row per submission: the CV the ledger states (± the folds'
spread), the held-out score, and whether the held-out score lies within two fold standard
deviations of the stated CV (at least one test image's worth for a counting metric). Beside
them, a simple peer on the same folds and test images: an RBF SVC on the pixels for
classification, the training rows' mean shape for keypoints.

  digits    the demo (configs/digits.yaml): 3,000 MNIST digits, 1,000 held out
  textures  200 grayscale texture patches, a pretrained EfficientNet-Lite0 (benchmarks/_competitions.py)
  cards     1,000 card photos, 4 corner keypoints, some missing in training; the defaults that
            fit the data train it (benchmarks/_competitions.py)

    python benchmarks/cv_vs_held_out.py [--only digits textures cards] [--tiny]
"""

import argparse
import tempfile
from pathlib import Path

import _competitions
import pandas as pd
from _peers import Peer, inside
from _stages import ROOT, machine, stage

from pipeline import config as C
from pipeline import tasks
from pipeline.data import sources

TINY = ["folds.n_splits=2", "train.epochs=1"]
MODELS = ("full", "folds", "auto")


def config_of(name: str, scratch: Path, tiny: bool) -> Path:
    if name == "digits":
        return ROOT / "configs" / "digits.yaml"
    small = {"cards": {"n_train": 200, "n_test": 50}, "textures": {"train_per_class": 10, "test_per_class": 5}}
    built = _competitions.BUILDERS[name](scratch / "competition", **(small[name] if tiny else {}))
    if tiny:
        built["model"] = {"name": "test_resnet", "image_size": 32}
    return _competitions.write_config(scratch, built)


def run_competition(name: str, tiny: bool) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        config, overrides = config_of(name, scratch, tiny), TINY if tiny else []
        for step in ("data", "folds", "train"):
            stage(step, config, overrides, scratch, show=("train",))
        with inside(scratch):
            cfg = C.load(config, overrides)
            n_test = len(sources.read_csv(Path(cfg.data.dir) / cfg.data.solution))
            peer = Peer(cfg)
            peer_cv, peer_std, peer_held_out = peer.scores()
        rows = []
        for models in MODELS:
            stage("predict", config, [*overrides, f"predict.models={models}"], scratch, show=("predict",))
            stage("score", config, overrides, scratch)
            ledger = pd.read_csv(scratch / "submissions" / "ledger.csv").iloc[-1]
            rows.append(submission_row(name, models, ledger, n_test))
        peer_row = f"| {machine()} | {name} | peer: {peer.name} | {peer_cv:.4f} ± {peer_std:.4f} | {peer_held_out:.4f}"
        return [*rows, peer_row + f" | {peer_held_out - peer_cv:+.4f} | | |"]


def submission_row(name: str, asked: str, ledger: pd.Series, n_test: int) -> str:
    cv, std, held_out = float(ledger["cv_score"]), float(ledger["cv_std"]), float(ledger["local_score"])
    floor = 1 / n_test if tasks.counts_rows(ledger["cv_metric"]) else 0.0
    tolerance = max(2 * std, floor)
    within = "yes" if abs(held_out - cv) <= tolerance else "**no**"
    models = ledger["models"] if asked != "auto" else f"auto: {ledger['models']}"
    return (
        f"| {machine()} | {name} | {models} | {cv:.4f} ± {std:.4f} | {held_out:.4f} | {held_out - cv:+.4f} "
        f"| {tolerance:.4f} | {within} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["digits", "textures", "cards"])
    parser.add_argument("--tiny", action="store_true", help="2 folds, 1 epoch, small data: for the test suite")
    args = parser.parse_args()
    rows = [row for name in args.only for row in run_competition(name, args.tiny)]
    print(
        "| machine | competition | predict.models | stated CV ± fold std | held-out score | held-out − CV "
        "| tolerance: 2 std (≥ 1 test image) | within |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
