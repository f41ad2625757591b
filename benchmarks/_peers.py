"""The simple peers the pipeline is measured against, on the same folds and test images."""

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.svm import SVC

from pipeline import config as C
from pipeline import sources
from pipeline.images import open_images
from pipeline.paths import Paths


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

    def __init__(self, cfg: C.Config):
        self.cfg, self.data = cfg, sources.read(cfg)
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

    def _pixels(self, split: str) -> np.ndarray:
        store = open_images(getattr(self.data, split).images, Paths.of(self.cfg).cache(split), "auto", 4.0)
        return np.stack([np.asarray(store[i], dtype=np.float32).reshape(-1) / 255 for i in range(len(store))])

    def _svc(self) -> tuple[float, float, float]:
        x, test_x = self._pixels("train"), self._pixels("test")
        y = self.data.train.table[self.data.targets[0]].astype(str).to_numpy()
        test_y = self.truth.iloc[:, 0].astype(str).to_numpy()
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
