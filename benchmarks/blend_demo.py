"""Three experiments on the demo competition, blended by their out-of-fold predictions.

In a scratch folder: build the demo (configs/digits.yaml: 3,000 training digits, 1,000 held
out), make its 5 folds, then train three experiments on them (each its fold models only,
`train.full_fit=false`, since a blend of fold ensembles is what the OOF describes), submit each
(`predict.models=folds`) and score it against the held-out answers; then `make blend` over the
three and `make predict BLEND=blend`, scored the same way. The peer: an RBF SVC on the pixels,
fitted on all training digits.

    python benchmarks/blend_demo.py [--tiny]
"""

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
from _stages import ROOT, machine, stage
from demo import svc

from pipeline.records import Blend

EXPERIMENTS = {
    "resnet-28": [],
    "effnet-32": ["model.name=test_efficientnet", "model.image_size=32"],
    "convnext-32": ["model.name=test_convnext", "model.image_size=32"],
}
COMMON = ["train.full_fit=false", "predict.models=folds"]
TINY = ["folds.n_splits=2", "train.epochs=1"]


def submit(config: Path, overrides: list[str], cwd: Path) -> float:
    """predict and score; the held-out accuracy of the new submission."""
    for name in ("predict", "score"):
        stage(name, config, overrides, cwd, show=("predict",))
    return float(pd.read_csv(cwd / "submissions" / "ledger.csv")["local_score"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    config, common = ROOT / "configs" / "digits.yaml", COMMON + (TINY if args.tiny else [])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        for name in ("data", "folds"):
            stage(name, config, common, cwd)
        for experiment, overrides in EXPERIMENTS.items():
            given = [*common, *overrides, f"train.experiment={experiment}"]
            minutes = stage("train", config, given, cwd).seconds / 60
            cv = json.loads((cwd / "runs" / "digits" / experiment / "cv.json").read_text())
            held_out = submit(config, given, cwd)
            rows.append((experiment, f"{cv['oof_score']:.4f} (OOF of its fold models)", held_out, f"{minutes:.1f}"))
        stage("blend", config, common, cwd, show=("blend",))
        blend = Blend.load(cwd / "runs" / "digits" / "blends" / "blend.yaml")
        held_out = submit(config, [*common, "predict.blend=blend"], cwd)
        weights = ", ".join(f"{k} {v:.2f}" for k, v in blend.weights.items())
        nested = f"{blend.nested.oof:.4f} nested ({blend.method}; in-sample {blend.in_sample:.4f})"
        rows.append((f"blend: {weights}", nested, held_out, ""))
        folds = pd.read_csv(cwd / "runs" / "digits" / "folds.csv")
        _, svc_held_out, _ = svc(cwd / "data" / "digits", folds, 1)
        rows.append(("peer: SVC on the pixels", "", svc_held_out, ""))
    print("| machine | model | CV accuracy | held-out accuracy | train min |")
    print("|---|---|---|---|---|")
    for model, cv, held_out, minutes in rows:
        print(f"| {machine()} | {model} | {cv} | {held_out:.4f} | {minutes} |")


if __name__ == "__main__":
    main()
