"""`make train` on the demo competition against scikit-learn's SVC on raw pixels, same folds.

Builds the demo and its folds in a scratch folder, times the train stage (all folds and the
full fit) with the default config, then fits SVC (RBF kernel, pixels / 255) on the same folds.
Targets: train stage <= 8 minutes on 2 CPU cores, CV accuracy >= 0.985.

    python benchmarks/demo_train.py [--config configs/digits.yaml] [--tiny] [key=value ...]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.svm import SVC

ROOT = Path(__file__).resolve().parents[1]
TINY = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet"]


def stage(name: str, config: Path, overrides: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", name, "-c", str(config), *overrides],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL if name != "train" else None,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def svc_cv(data: Path, folds: pd.DataFrame, limit: int | None) -> tuple[float, float]:
    train = pd.read_csv(data / "train.csv")
    pixels, labels = train.drop(columns="label").to_numpy() / 255.0, train["label"].to_numpy()
    fold = folds.set_index("id").loc[np.arange(1, len(train) + 1), "fold"].to_numpy()
    start, scores = time.perf_counter(), []
    for k in sorted(set(fold))[:limit]:
        model = SVC().fit(pixels[fold != k], labels[fold != k])
        scores.append(float((model.predict(pixels[fold == k]) == labels[fold == k]).mean()))
    return float(np.mean(scores)), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digits.yaml")
    parser.add_argument("--tiny", action="store_true", help="1 epoch, 2 folds, for the test suite")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = (TINY if args.tiny else []) + args.overrides
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        stage("data", args.config.resolve(), overrides, cwd)
        stage("folds", args.config.resolve(), overrides, cwd)
        seconds = stage("train", args.config.resolve(), overrides, cwd)
        cv = json.loads(next((cwd / "runs").glob("*/cv.json")).read_text())
        folds = pd.read_csv(next((cwd / "runs").glob("*/folds.csv")))
        svc_score, svc_seconds = svc_cv(next((cwd / "data").iterdir()), folds, 2 if args.tiny else None)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print("| machine | pipeline (`make train`) | CV accuracy | SVC on raw pixels | SVC CV accuracy |")
    print("|---|---|---|---|---|")
    print(
        f"| {machine} | {seconds / 60:.1f} min | {cv['score']:.4f} ± {cv['std']:.4f} "
        f"| {svc_seconds / 60:.1f} min | {svc_score:.4f} |"
    )


if __name__ == "__main__":
    main()
