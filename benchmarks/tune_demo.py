"""The demo's 20-trial search against the default config, both trained in full.

In a scratch folder: builds the demo and its folds, trains the default config (CV over all
five folds), runs `tune` as configs/digits.yaml sets it (20 trials, each training folds 0 and 1
with the config's epochs, median pruning), then trains again with the tuned best.yaml merged.
The search selects on tune.folds, so the CV over the folds it never saw is printed too.
Target: the search within 30 minutes on 2 CPU cores, and a tuned CV above the default's.

    python benchmarks/tune_demo.py [--config configs/digits.yaml] [--tiny] [key=value ...]
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _stages import ROOT, machine, stage

from pipeline.config import load

SEARCH = ["tune.timeout=30m"]
TINY = [
    "folds.n_splits=2",
    "train.epochs=1",
    "train.full_fit=false",
    "tune.n_trials=2",
    "tune.epochs=1",
    "tune.folds=[0]",
]


SHOW = ("tune",)  # stages whose output the benchmark prints


def unseen(cv: dict, searched: list[int]) -> float:
    """The mean score of the folds the search did not select on."""
    return float(np.mean([s for k, s in zip(cv["fold_ids"], cv["folds"], strict=True) if k not in searched]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digits.yaml")
    parser.add_argument("--tiny", action="store_true", help="2 trials of 1 epoch, for the test suite")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = args.config.resolve()
    overrides = (TINY if args.tiny else SEARCH) + args.overrides
    searched = load(config, overrides).tune.folds or []
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        runs = cwd / "runs" / "digits" / "digits"
        for name in ("data", "folds", "train"):
            stage(name, config, overrides, cwd, show=SHOW)
        default = json.loads((runs / "cv.json").read_text())
        seconds = stage("tune", config, overrides, cwd, show=SHOW).seconds
        best = yaml.safe_load((runs / "tune" / "best.yaml").read_text())
        header = (runs / "tune" / "best.yaml").read_text().splitlines()[0]
        stage("tune-report", config, overrides, cwd)
        trials = pd.read_csv(runs / "tune" / "trials.csv")
        stage("train", config, overrides, cwd, show=SHOW)
        tuned = json.loads((runs / "cv.json").read_text())
    print(f"{header}\ntuned overrides: {best}")
    states = trials["state"].value_counts()
    baseline = trials.loc[trials["user_attrs_baseline"].eq(True), "value"]
    print(
        "| machine | search | search wall clock (target <= 30 min) | trials complete / pruned "
        "| on the search's folds: best trial, the config's own values | default config CV accuracy "
        "| tuned config CV accuracy (target > default) | default, folds the search never saw "
        "| tuned, folds the search never saw |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {machine()} | {' '.join(o for o in overrides if o.startswith('tune.'))} | {seconds / 60:.1f} min "
        f"| {states.get('COMPLETE', 0)} / {states.get('PRUNED', 0)} "
        f"| {trials['value'].max():.4f}, {baseline.iloc[0]:.4f} "
        f"| {default['score']:.4f} ± {default['std']:.4f} | {tuned['score']:.4f} ± {tuned['std']:.4f} "
        f"| {unseen(default, searched):.4f} | {unseen(tuned, searched):.4f} |"
    )


if __name__ == "__main__":
    main()
