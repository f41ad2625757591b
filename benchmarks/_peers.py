"""The simple peers the pipeline is measured against, on the same folds and test images."""

import contextlib
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.svm import SVC

from pipeline import config as C
from pipeline.data import sources
from pipeline.data.images import open_images
from pipeline.paths import Paths
from pipeline.tasks.multilabel import Multilabel
from pipeline.tasks.regression import regression_metric


@contextlib.contextmanager
def inside(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


class Peer:
    """The simple peer of a competition, on the same folds and test images as the pipeline."""

    def __init__(self, cfg: C.Config, side: int | None = None):
        """`side`: the SVC sees each image resized to side x side (None: as it is)."""
        self.cfg, self.data, self.side = cfg, sources.read(cfg), side
        folds = pd.read_csv(Paths.of(cfg).folds_csv, dtype={"id": str}).set_index("id")
        self.fold = folds.loc[self.data.train.table["id"].astype(str), "fold"].to_numpy()
        solution = sources.read_csv(Path(cfg.data.dir) / cfg.data.solution)
        self.truth = solution.set_index(solution.columns[0]).loc[self.data.test.table["id"]]

    @property
    def name(self) -> str:
        return "SVC on the pixels" if self.cfg.competition.task == "classification" else "mean shape"

    def scores(self) -> tuple[float, float, float]:
        """CV (mean and std over the folds) and the held-out score."""
        if self.cfg.competition.task == "keypoints":
            return self._mean_shape()
        return self._svc()

    def held_out(self) -> float:
        """The held-out score alone: an SVC fitted once on every training row."""
        x, y, test_x, test_y = self._svc_data()
        return float((SVC().fit(x, y).predict(test_x) == test_y).mean())

    def _pixels(self, split: str) -> np.ndarray:
        store = open_images(getattr(self.data, split).images, Paths.of(self.cfg).cache(split), "auto", 4.0, self.side)

        def flat(i: int) -> np.ndarray:
            image = np.asarray(store[i])
            if self.side is not None:
                image = cv2.resize(image, (self.side, self.side), interpolation=cv2.INTER_AREA)
            return image.astype(np.float32).reshape(-1) / 255

        return np.stack([flat(i) for i in range(len(store))])

    def _svc_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        y = self.data.train.table[self.data.targets[0]].astype(str).to_numpy()
        return self._pixels("train"), y, self._pixels("test"), self.truth.iloc[:, 0].astype(str).to_numpy()

    def _svc(self) -> tuple[float, float, float]:
        x, y, test_x, test_y = self._svc_data()
        scores = []
        for k in sorted(set(self.fold)):
            train, valid = self.fold != k, self.fold == k
            scores.append(float((SVC().fit(x[train], y[train]).predict(x[valid]) == y[valid]).mean()))
        held_out = float((SVC().fit(x, y).predict(test_x) == test_y).mean())
        return float(np.mean(scores)), float(np.std(scores)), held_out

    def _mean_shape(self) -> tuple[float, float, float]:
        y = self.data.train.table[self.data.targets].to_numpy(float)
        test_y = self.truth[self.data.targets].to_numpy(float)

        def rmse(train: np.ndarray, actual: np.ndarray) -> float:
            return float(np.sqrt(np.nanmean((np.nanmean(y[train], axis=0) - actual) ** 2)))

        scores = [rmse(self.fold != k, y[self.fold == k]) for k in sorted(set(self.fold))]
        return float(np.mean(scores)), float(np.std(scores)), rmse(np.ones(len(y), bool), test_y)


# --- the multi-label and regression competitions' peers (_task_competitions) --------------------


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


def otsu_peer(folder: Path) -> float:
    """Otsu's threshold on each test image's grey levels, masking its bright side or its dark side,
    whichever scored better on the training images: mean Dice against the held-out masks."""
    from skimage.filters import threshold_otsu

    from pipeline.data import rle
    from pipeline.kaggle.submission import read_submission
    from pipeline.tasks.segmentation import code_score

    def guesses(split: str, table: pd.DataFrame, bright: bool) -> list[float]:
        scores = []
        for image_id, truth in zip(table["id"], table["rle_mask"], strict=True):
            grey = np.asarray(Image.open(folder / split / f"{image_id}.png").convert("L"), dtype=np.float64)
            mask = grey > threshold_otsu(grey) if bright else grey <= threshold_otsu(grey)
            scores.append(code_score("dice", rle.encode(mask, "column"), truth, image_id))
        return scores

    train = read_submission(folder / "train.csv")
    bright = np.mean(guesses("train", train, True)) >= np.mean(guesses("train", train, False))
    return float(np.mean(guesses("test", read_submission(folder / "solution.csv"), bright)))


def stencils_peer(folder: Path) -> list[tuple[str, float]]:
    return [("Otsu's threshold", otsu_peer(folder))]


TASK_PEERS = {"mosaic": mosaic_peer, "number": number_peer, "sites": columns_peer, "stencils": stencils_peer}
