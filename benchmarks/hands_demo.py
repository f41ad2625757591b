"""The keypoint demo (configs/hands.yaml) end to end, against the mean shape; and its training
images per second on the batched path against the per-image path.

In a scratch folder: `data`, `scrape`, `folds`, `train`, `predict` as `make scrape train
predict` runs them (timed, each stage's whole process), then the submission against the
held-out points: RMSE in pixels and the share of coordinates within 0.1 and 0.01 of the [-1, 1]
range (the write-up's two accuracies). The peer: the training rows' mean shape, on the same
test images. Then fold 0 alone, a few epochs, once per `train.device_aug` (on: batched; off:
per image), same model and seed, as separate experiments: the images per second of its
training epochs after the first (metrics.csv).

    python benchmarks/hands_demo.py [--tiny]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _peers import Peer, inside
from _stages import ROOT, machine, stage

from pipeline import config as C
from pipeline.data.hands import SIDE
from pipeline.paths import Paths

CONFIG = ROOT / "configs" / "hands.yaml"
TINY = ["folds.n_splits=2", "train.epochs=1", "train.time_budget=null", "model.name=test_resnet"]
MAKE_STAGES = ("data", "scrape", "folds", "train", "predict")


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """RMSE in pixels over the labelled coordinates, and the shares of them within 0.1 and
    0.01 of the [-1, 1] range."""
    error = (predicted - truth)[~np.isnan(truth)]
    unit = np.abs(error) / (SIDE / 2)
    return float(np.sqrt(np.mean(error**2))), float((unit < 0.1).mean()), float((unit < 0.01).mean())


def held_out(cfg: C.Config, cwd: Path) -> tuple[tuple, tuple]:
    """accuracy() of the last submission and of the training rows' mean shape, on the test rows."""
    with inside(cwd):
        peer = Peer(cfg)
        submitted = pd.read_csv(pd.read_csv("submissions/ledger.csv").iloc[-1]["file"])
    columns, truth = peer.data.targets, peer.truth[peer.data.targets].to_numpy(float)
    predicted = submitted.set_index("id").loc[peer.truth.index, columns].to_numpy(float)
    mean_shape = np.broadcast_to(np.nanmean(peer.data.train.table[columns].to_numpy(float), axis=0), truth.shape)
    return accuracy(predicted, truth), accuracy(mean_shape, truth)


def images_per_second(overrides: list[str], cwd: Path, device_aug: str, epochs: int) -> float:
    experiment = f"path-{device_aug}"
    extra = [
        f"train.experiment={experiment}",
        f"train.device_aug={device_aug}",
        "train.folds=[0]",
        "train.full_fit=false",
        "train.time_budget=null",
        f"train.epochs={epochs}",
    ]
    stage("train", CONFIG, overrides + extra, cwd)
    cfg = C.load(CONFIG, overrides + extra)
    metrics = pd.read_csv(cwd / Paths.of(cfg).fold(0).metrics)
    return float(metrics["images_per_s"].iloc[1:].mean() if len(metrics) > 1 else metrics["images_per_s"].iloc[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    overrides = TINY if args.tiny else []
    cfg = C.load(CONFIG, overrides)
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        seconds = sum(stage(name, CONFIG, overrides, cwd, show=("train",)).seconds for name in MAKE_STAGES)
        ours, mean_shape = held_out(cfg, cwd)
        epochs = 1 if args.tiny else 4
        batched, per_image = (images_per_second(overrides, cwd, path, epochs) for path in ("on", "off"))
    print(
        "| machine | run | held-out RMSE, px | within 0.1 | within 0.01 | `make scrape train predict` "
        "(target <= 10 min) | training img/s, batched | per image | ratio (target >= 2) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {machine()} | hands.yaml | {ours[0]:.3f} | {ours[1]:.3f} | {ours[2]:.3f} "
        f"| {seconds / 60:.1f} min | {batched:.0f} | {per_image:.0f} | {batched / per_image:.2f} |"
    )
    print(
        f"| {machine()} | peer: mean shape | {mean_shape[0]:.3f} | {mean_shape[1]:.3f} | {mean_shape[2]:.3f} | | | | |"
    )


if __name__ == "__main__":
    main()
