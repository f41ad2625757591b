"""The segmentation demo: synthetic micrographs of cells, in TGS salt's layout (image folders,
`id,rle_mask` with Kaggle's column-major run-length codes, a sample submission). Nothing is
downloaded: every image is drawn here.

Each image holds no cell (a quarter of them), or one to four, each an ellipse of mid-grey
cytoplasm with a dark rim and darker nuclei. The lighting sweeps across the image, so the
background is darker than the cells at one side and brighter at the other: a single intensity
threshold (Otsu's) cannot tell them apart; the rim and the texture can.

train/<id>.png, test/<id>.png  64x64 RGB
train.csv                      id, rle_mask (empty: no cell)
test.csv                       id
sample_submission.csv          id, rle_mask ("1 1", as TGS's)
solution.csv                   the test rows' masks, read only by local scoring
"""

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data import rle
from pipeline.data.drawn import build_drawn

N_TRAIN, N_TEST = 800, 200
SIDE = 64
SUPERSAMPLE = 4  # drawn at 4x and shrunk: smooth edges
EMPTY_SHARE = 0.25


def build_cells(folder: Path, seed: int = 0) -> None:
    def draw(rng: np.random.Generator) -> tuple[Image.Image, list]:
        image, mask = draw_cells(rng)
        return Image.fromarray(image), [rle.encode(mask, "column")]

    build_drawn(folder, draw, ["rle_mask"], {"rle_mask": "1 1"}, (N_TRAIN, N_TEST), seed)


def draw_cells(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(SIDE, SIDE, 3) uint8 image and its (SIDE, SIDE) 0/1 mask of cells."""
    big = SIDE * SUPERSAMPLE
    y, x = np.mgrid[:big, :big] / big
    angle = rng.uniform(0, 2 * np.pi)
    light = 0.15 + 0.75 * (0.5 + 0.5 * np.cos(angle) * (2 * x - 1) + 0.5 * np.sin(angle) * (2 * y - 1)).clip(0, 1)
    grey = light + _smooth_noise(rng, big, 0.08)
    inside = np.zeros((big, big), bool)
    count = 0 if rng.random() < EMPTY_SHARE else int(rng.integers(1, 5))
    for _ in range(count):
        cell, rim = _ellipse(rng, x, y)
        grey = np.where(cell, 0.55 + _smooth_noise(rng, big, 0.05), grey)
        grey = np.where(rim, 0.1, grey)
        for _ in range(int(rng.integers(1, 3))):
            nucleus, _ = _ellipse(rng, x, y, within=cell, scale=0.3)
            grey = np.where(nucleus, 0.3, grey)
        inside |= cell | rim
    grey = grey + rng.normal(0, 0.03, grey.shape)
    tint = rng.uniform(0.85, 1.0, 3)
    small = _shrink(grey[..., None] * tint)
    mask = _shrink(inside.astype(np.float64)[..., None])[..., 0] > 0.5
    return (small.clip(0, 1) * 255).astype(np.uint8), mask.astype(np.uint8)


def _ellipse(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, within=None, scale: float = 1.0):
    """A filled ellipse at a random place (inside `within`, if given) and its rim."""
    if within is not None and within.any():
        picks = np.flatnonzero(within)
        cy, cx = np.unravel_index(picks[rng.integers(len(picks))], within.shape)
        centre = np.array([cx, cy]) / within.shape[0]
    else:
        centre = rng.uniform(0.15, 0.85, 2)
    radii = rng.uniform(0.07, 0.16, 2) * scale
    turn = rng.uniform(0, np.pi)
    u = (x - centre[0]) * np.cos(turn) + (y - centre[1]) * np.sin(turn)
    v = -(x - centre[0]) * np.sin(turn) + (y - centre[1]) * np.cos(turn)
    distance = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2)
    return distance <= 0.85, (distance > 0.85) & (distance <= 1.0)


def _smooth_noise(rng: np.random.Generator, side: int, amplitude: float) -> np.ndarray:
    coarse = rng.normal(0, amplitude, (8, 8))
    return np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((side, side), Image.Resampling.BICUBIC))


def _shrink(array: np.ndarray) -> np.ndarray:
    """(big, big, C) -> (SIDE, SIDE, C) by the mean of each SUPERSAMPLE block."""
    channels = array.shape[2]
    return array.reshape(SIDE, SUPERSAMPLE, SIDE, SUPERSAMPLE, channels).mean(axis=(1, 3))
