"""The demo's Kaggle bundle: `make package`, then `make rehearse`, against `make predict`.

In a scratch folder: the demo's data, folds and train (configs/digits.yaml), then `predict`
(timed: the stage's process, interpreter and imports included, its models predicting the 1,000
test digits afresh), `package` (the same models) and `rehearse` with package.hidden_scale=10.
Recorded: the dataset's size, the rehearsal's wall clock (environment, kernel start, wheel
install, prediction), the notebook's images per second against `make predict`'s (each the
prediction's whole cell or stage: imports, loading, decoding and inference), and the run time
projected to a hidden test 10 times the public one.

    python benchmarks/package_demo.py [--tiny]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from _stages import ROOT, machine, stage

from pipeline import config as C
from pipeline.paths import Paths

TINY = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    config = ROOT / "configs" / "digits.yaml"
    overrides = [*(TINY if args.tiny else []), "package.hidden_scale=10"]
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        for name in ("data", "folds", "train"):
            stage(name, config, overrides, cwd)
        predict_s = stage("predict", config, overrides, cwd).seconds
        stage("package", config, overrides, cwd, show=("package",))
        started = time.perf_counter()
        stage("rehearse", config, overrides, cwd, show=("rehearse",))
        rehearsal_s = time.perf_counter() - started
        files = Paths.of(C.load(config, overrides)).package
        record = json.loads((cwd / files.rehearsal).read_text())
        size = sum(f.stat().st_size for f in (cwd / files.dataset.root).rglob("*") if f.is_file())
    images = record["public_rows"]
    notebook_rate, predict_rate = images / record["predict"], images / predict_s
    print(
        "| machine | bundle size | `make rehearse` wall clock | notebook: prediction cell, img/s | "
        "`make predict`, img/s | ratio (target >= 0.9) | projected, hidden test 10x |"
    )
    print("|---|---|---|---|---|---|---|")
    notebook, predicted = f"{record['predict']:.1f} s, {notebook_rate:.0f}", f"{predict_s:.1f} s, {predict_rate:.0f}"
    print(
        f"| {machine()} | {size / 2**20:.1f} MiB | {rehearsal_s:.0f} s | {notebook} | {predicted} "
        f"| {notebook_rate / predict_rate:.2f} | {record['seconds']:.0f} s for {record['hidden_rows']} images |"
    )


if __name__ == "__main__":
    main()
