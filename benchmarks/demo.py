"""The demo competition end to end against scikit-learn's SVC on raw pixels.

In a scratch folder: builds the demo and its folds, times `train` (all folds and the full fit)
with the default config, runs `predict` and `score` (accuracy on the 1,000 held-out digits).
SVC (RBF kernel, pixels / 255) is fitted on the same folds for its CV score, and on all 3,000
training digits for its held-out score.
Targets: train <= 8 minutes on 2 CPU cores, CV accuracy >= 0.985, held-out accuracy >= 0.985.

    python benchmarks/demo.py [--config configs/digits.yaml] [--tiny] [key=value ...]
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


def svc(data: Path, folds: pd.DataFrame, limit: int | None) -> tuple[float, float, float]:
    """SVC's CV accuracy over the same folds, its held-out accuracy, and the seconds of its CV."""
    train = pd.read_csv(data / "train.csv")
    pixels, labels = train.drop(columns="label").to_numpy() / 255.0, train["label"].to_numpy()
    fold = folds.set_index("id").loc[np.arange(1, len(train) + 1), "fold"].to_numpy()
    start, scores = time.perf_counter(), []
    for k in sorted(set(fold))[:limit]:
        model = SVC().fit(pixels[fold != k], labels[fold != k])
        scores.append(float((model.predict(pixels[fold == k]) == labels[fold == k]).mean()))
    seconds = time.perf_counter() - start
    test, solution = pd.read_csv(data / "test.csv").to_numpy() / 255.0, pd.read_csv(data / "solution.csv")
    held_out = float((SVC().fit(pixels, labels).predict(test) == solution["Label"].to_numpy()).mean())
    return float(np.mean(scores)), held_out, seconds


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
        stage("predict", args.config.resolve(), overrides, cwd)
        stage("score", args.config.resolve(), overrides, cwd)
        cv = json.loads(next((cwd / "runs").glob("*/cv.json")).read_text())
        held_out = float(pd.read_csv(cwd / "submissions" / "ledger.csv")["local_score"].iloc[-1])
        folds = pd.read_csv(next((cwd / "runs").glob("*/folds.csv")))
        svc_cv, svc_held_out, svc_seconds = svc(next((cwd / "data").iterdir()), folds, 2 if args.tiny else None)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(
        "| machine | pipeline `make train` | CV accuracy | held-out accuracy (`make score`) "
        "| SVC CV time | SVC CV accuracy | SVC held-out accuracy |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {machine} | {seconds / 60:.1f} min | {cv['score']:.4f} ± {cv['std']:.4f} | {held_out:.4f} "
        f"| {svc_seconds / 60:.1f} min | {svc_cv:.4f} | {svc_held_out:.4f} |"
    )


if __name__ == "__main__":
    main()
