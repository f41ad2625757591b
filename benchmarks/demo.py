"""The demo competition end to end against scikit-learn's SVC on raw pixels.

Twice, each in a scratch folder: builds the demo, [scrapes its gallery,] makes the folds, times
`train` (all folds and the full fit) with the default config, runs `predict` and `score`
(accuracy on the 1,000 held-out digits) -- first on the competition data alone, then with the
scraped images. SVC (RBF kernel, pixels / 255) is fitted on the same folds for its CV score,
and on all 3,000 training digits for its held-out score.
Targets: train <= 8 minutes on 2 CPU cores, CV and held-out accuracy >= 0.985; `make scrape
train predict` <= 10 minutes.

    python benchmarks/demo.py [--config configs/digits.yaml] [--tiny] [key=value ...]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _stages import ROOT, machine, stage
from sklearn.svm import SVC

TINY = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet"]


SHOW = ("scrape", "train", "score")  # stages whose output the benchmark prints


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


def pipeline_run(config: Path, overrides: list[str], scrape: bool) -> dict:
    """data, [scrape,] folds, train, predict, score in a scratch folder; the figures of the run."""
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        stage("data", config, overrides, cwd, show=SHOW)
        stages = {
            name: stage(name, config, overrides, cwd, show=SHOW)
            for name in (["scrape"] if scrape else []) + ["folds", "train", "predict", "score"]
        }
        cv = json.loads((cwd / "runs" / "digits" / "digits" / "cv.json").read_text())
        manifest = cwd / "data" / "digits" / "extra.csv"
        statuses = pd.read_csv(manifest)["status"].value_counts() if manifest.exists() else pd.Series(dtype=int)
        return {
            "end_to_end_min": sum(run.seconds for run in stages.values()) / 60,
            "train_min": stages["train"].seconds / 60,
            "train_rss_gb": stages["train"].peak_rss_gb,
            "cv": cv,
            "held_out": float(pd.read_csv(cwd / "submissions" / "ledger.csv")["local_score"].iloc[-1]),
            "kept": int(statuses.get("kept", 0)),
            "leaks": int(statuses.get("test_leak", 0)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digits.yaml")
    parser.add_argument("--tiny", action="store_true", help="1 epoch, 2 folds, for the test suite")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides, config = (TINY if args.tiny else []) + args.overrides, args.config.resolve()
    runs = {
        "competition data": pipeline_run(config, overrides, scrape=False),
        "+ scraped gallery": pipeline_run(config, overrides, scrape=True),
    }
    with tempfile.TemporaryDirectory() as scratch:
        stage("data", config, overrides, Path(scratch))
        stage("folds", config, overrides, Path(scratch))
        folds = pd.read_csv(Path(scratch) / "runs" / "digits" / "folds.csv")
        svc_cv, svc_held_out, svc_seconds = svc(Path(scratch) / "data" / "digits", folds, 2 if args.tiny else None)
    print(
        "| machine | training data | wall clock (scrape), folds, train, predict, score (target <= 10 min) "
        "| of which train (target <= 8 min) | peak RSS of train (target <= 3 GB) | CV accuracy | held-out accuracy "
        "| images scraped / test leaks caught |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        cv = run["cv"]
        print(
            f"| {machine()} | pipeline, {name} | {run['end_to_end_min']:.1f} min | {run['train_min']:.1f} min "
            f"| {run['train_rss_gb']:.2f} GB | {cv['score']:.4f} ± {cv['std']:.4f} | {run['held_out']:.4f} "
            f"| {run['kept']} / {run['leaks']} |"
        )
    print(
        f"| {machine()} | SVC on raw pixels, competition data | {svc_seconds / 60:.1f} min (CV) | | | {svc_cv:.4f} "
        f"| {svc_held_out:.4f} | |"
    )


if __name__ == "__main__":
    main()
