"""What the drawn demos (hands, cells) share: each image drawn with its row of targets, into
train/ and test/, and the CSVs an entrant expects beside them (train.csv, test.csv, a sample
submission, and the held-out solution.csv only local scoring reads), written into a temporary
sibling folder and moved into place; train.csv moves last: its presence means the build finished."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.files import filled_into

Draw = Callable[[np.random.Generator], tuple[Image.Image, list]]  # rng -> the image and its targets


def build_drawn(
    folder: Path,
    draw: Draw,
    columns: list[str],
    sample: dict,
    counts: tuple[int, int],
    seed: int,
    adjust: Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame] | None = None,
) -> None:
    """`counts` training and test images drawn by `draw`, their targets in `columns`; the
    sample submission holds `sample`'s value per column; `adjust` changes the training rows
    (labels a human left out) after both splits are drawn."""
    rng = np.random.default_rng(seed)
    with filled_into(folder, last="train.csv") as tmp:
        train = _draw_split(tmp / "train", counts[0], rng, "tr", draw, columns)
        test = _draw_split(tmp / "test", counts[1], rng, "te", draw, columns)
        train = adjust(train, rng) if adjust else train
        test[["id"]].to_csv(tmp / "test.csv", index=False)
        test.assign(**sample).to_csv(tmp / "sample_submission.csv", index=False)
        test.to_csv(tmp / "solution.csv", index=False)
        train.to_csv(tmp / "train.csv", index=False)


def _draw_split(folder: Path, n: int, rng: np.random.Generator, prefix: str, draw: Draw, columns: list[str]):
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        image, targets = draw(rng)
        image.save(folder / f"{prefix}{i:04d}.png")
        rows.append([f"{prefix}{i:04d}", *targets])
    return pd.DataFrame(rows, columns=["id", *columns])
