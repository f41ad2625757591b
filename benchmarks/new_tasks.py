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
import numpy as np
import pandas as pd
from _stages import machine, stage
from PIL import Image

from pipeline.tasks.multilabel import Multilabel
from pipeline.tasks.regression import regression_metric

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


# --- the peers ------------------------------------------------------------------------------------


def _split(folder: Path, split: str, id_column: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The split's pixels (N, H*W) in [0, 1] and its table with the answers beside."""
    table = pd.read_csv(folder / ("train.csv" if split == "train" else "solution.csv"), keep_default_na=False)
    pixels = [np.asarray(Image.open(folder / split / f"{i}.png"), dtype=np.float32) / 255 for i in table[id_column]]
    return np.stack(pixels).reshape(len(table), -1), table


def mosaic_peer(folder: Path) -> list[tuple[str, float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x, train = _split(folder, "train", "image_name")
    test_x, test = _split(folder, "test", "image_name")
    labels = Multilabel.labels_of(train, ["tags"])
    task = Multilabel(labels, "f1_samples")
    model = OneVsRestClassifier(LogisticRegression(max_iter=300)).fit(x, task.encode(train, ["tags"]))
    score = task.score(model.predict_proba(test_x), task.encode(test, ["tags"]))
    return [("one-vs-rest logistic regression on the pixels", score)]


def number_peer(folder: Path) -> list[tuple[str, float]]:
    from sklearn.linear_model import RidgeCV

    x, train = _split(folder, "train", "Id")
    test_x, test = _split(folder, "test", "Id")
    truth = test[["number"]].to_numpy(float)
    ridge = RidgeCV(alphas=np.logspace(-1, 4, 12)).fit(x, train["number"]).predict(test_x)[:, None]
    mean = np.full_like(truth, train["number"].mean())
    return [
        ("ridge regression on the pixels", regression_metric("rmse", ridge, truth)),
        ("the training mean", regression_metric("rmse", mean, truth)),
    ]


def columns_peer(folder: Path) -> list[tuple[str, float]]:
    from sklearn.ensemble import HistGradientBoostingRegressor

    train, test = pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "solution.csv")
    test = test.merge(pd.read_csv(folder / "test.csv"), on="Id")
    columns = ["site", "age"]
    as_category = {"site": pd.CategoricalDtype(sorted(train["site"].unique()))}
    trees = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
    trees.fit(train[columns].astype(as_category), train["score"])
    guess = trees.predict(test[columns].astype(as_category))[:, None]
    return [
        ("gradient-boosted trees on the columns alone", regression_metric("rmse", guess, test[["score"]].to_numpy()))
    ]


PEERS = {"mosaic": mosaic_peer, "number": number_peer, "sites": columns_peer}


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
        for peer, peer_score in PEERS[name](scratch / "data" / name):
            print(f"| {machine()} | {name} | | peer: {peer} | {peer_score:.4f} | |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(PEERS))
    parser.add_argument("--tiny", action="store_true", help="tiny data, 2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    print("| machine | competition | what `make init` found | run | held-out score | wall clock |")
    print("|---|---|---|---|---|---|", flush=True)
    for name in args.only:
        competition_rows(name, args.tiny)


if __name__ == "__main__":
    main()
