"""The keypoint demo: synthetic photos of hands with 12 labelled points, after the fastai hand
keypoints write-up, in a layout an entrant would recognise (image folders, a CSV of x/y columns,
a sample submission). Nothing is downloaded: every image is drawn here.

The 12 points, named by their place from the image's left as the hand points up:
tip_1..tip_4 the fingertips, base_1..base_4 the finger bases, palm_1..palm_4 evenly spaced
along the palm line. Right hands (thumb on the right) and left hands (thumb on the left) both
appear, so a horizontal flip turns tip_1 into tip_4's place: flip_pairs swap 1<->4 and 2<->3.
Backgrounds, skin, lighting, pose (rotation, scale, place, finger spread) vary; a point outside
the image is missing, and some training rows miss a point or two more.

train/<id>.png, test/<id>.png  64x64 RGB
train.csv                      id, tip_1_x, tip_1_y, ..., palm_4_y (pixels; empty: missing)
test.csv                       id
sample_submission.csv          id and the 24 columns, zero
solution.csv                   the test rows' points, read only by local scoring
"""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from pipeline.data.drawn import build_drawn

N_TRAIN, N_TEST = 1000, 300
SIDE = 64
SUPERSAMPLE = 4  # drawn at 4x and shrunk: smooth edges
ROWS = ("tip", "base", "palm")  # a row of four points, index finger to little finger
POINTS = [f"{row}_{k}" for row in ROWS for k in range(1, 5)]
COLUMNS = [f"{p}_{axis}" for p in POINTS for axis in ("x", "y")]
FLIP_PAIRS = [[f"{row}_1", f"{row}_4"] for row in ROWS] + [[f"{row}_2", f"{row}_3"] for row in ROWS]
# finger lengths, index to little, in palm widths; a right hand shows them right to left
FINGER_LENGTHS = np.array([0.78, 0.88, 0.82, 0.62])
SLOTS_X = np.array([-0.36, -0.12, 0.12, 0.36])  # the finger bases across the top of the palm


def build_hands(folder: Path, seed: int = 0) -> None:
    def draw(rng: np.random.Generator) -> tuple[Image.Image, list]:
        image, points = draw_hand(rng)
        return image, list(points.ravel())

    blank = {c: 0.0 for c in COLUMNS}
    build_drawn(folder, draw, COLUMNS, blank, (N_TRAIN, N_TEST), seed, adjust=_drop_some_points)


def hand_points(rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """A pose, and its 12 points (12, 2) in pixels of the 64x64 image (NaN outside it)."""
    right = bool(rng.random() < 0.5)
    lengths = (FINGER_LENGTHS[::-1] if right else FINGER_LENGTHS) * rng.uniform(0.9, 1.1, 4)
    spread = rng.uniform(0.0, 0.25)
    angles = spread * (np.arange(4) - 1.5)  # each finger's lean from straight up, radians
    bases = np.column_stack([SLOTS_X, np.full(4, -0.55)])
    tips = bases + lengths[:, None] * np.column_stack([np.sin(angles), -np.cos(angles)])
    palm_x = np.linspace(-0.38, 0.38, 4)
    palm = np.column_stack([palm_x, 0.05 + 0.12 * (palm_x + 0.4) * (1 if right else -1) + 0.08 * palm_x**2])
    thumb_side = 1.0 if right else -1.0
    pose = {
        "right": right,
        "rotation": rng.uniform(-0.6, 0.6),
        "scale": rng.uniform(0.28, 0.36) * SIDE,
        "centre": np.array([SIDE / 2, SIDE * 0.58]) + rng.uniform(-6, 6, 2),
        "thumb": np.array([[0.5 * thumb_side, 0.25], [0.95 * thumb_side, -0.25]]),
        "bases": bases,
        "tips": tips,
        "palm": palm,
    }
    points = to_image(pose, np.concatenate([tips, bases, palm]))
    outside = (points < 0).any(axis=1) | (points > SIDE - 1).any(axis=1)
    points[outside] = np.nan
    return pose, points


def to_image(pose: dict, xy: np.ndarray) -> np.ndarray:
    """Hand coordinates (palm width 1, fingers up) -> pixels."""
    c, s = np.cos(pose["rotation"]), np.sin(pose["rotation"])
    turned = xy @ np.array([[c, s], [-s, c]])
    return turned * pose["scale"] + pose["centre"]


def draw_hand(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    pose, points = hand_points(rng)
    big = SIDE * SUPERSAMPLE
    image = _background(rng, big)
    draw = ImageDraw.Draw(image)
    skin = tuple(int(v) for v in np.clip(rng.normal([200, 150, 120], 30), 40, 255))
    width = pose["scale"] * SUPERSAMPLE * 0.2  # a finger's thickness
    palm = to_image(pose, _ellipse(0.5, 0.6)) * SUPERSAMPLE
    draw.polygon([tuple(p) for p in palm], fill=skin)
    for a, b in [*zip(pose["bases"], pose["tips"], strict=True), tuple(pose["thumb"])]:
        _finger(draw, to_image(pose, np.array([a, b])) * SUPERSAMPLE, width, skin)
    crease = to_image(pose, pose["palm"]) * SUPERSAMPLE
    draw.line([tuple(p) for p in crease], fill=tuple(int(v * 0.7) for v in skin), width=SUPERSAMPLE)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5) * SUPERSAMPLE)).resize((SIDE, SIDE))
    lit = np.asarray(image, dtype=np.float32) * rng.uniform(0.6, 1.3) + rng.normal(0, 6, (SIDE, SIDE, 3))
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8)), points


def _finger(draw: ImageDraw.ImageDraw, ends: np.ndarray, width: float, colour: tuple) -> None:
    draw.line([tuple(ends[0]), tuple(ends[1])], fill=colour, width=int(width))
    r = width / 2
    for x, y in ends:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _ellipse(half_width: float, half_height: float, n: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([half_width * np.cos(t), half_height * np.sin(t) - 0.05])


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    """A two-colour gradient at a random angle, with blotches."""
    a, b = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:side, 0:side] / side
    t = np.clip((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) + 0.5, 0, 1)[..., None]
    image = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 6)):
        x0, y0 = rng.uniform(0, side, 2)
        r = rng.uniform(side / 20, side / 6)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    return image


def _drop_some_points(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A tenth of the rows lose one or two more points: labels a human left out."""
    table = table.copy()
    for row in np.flatnonzero(rng.random(len(table)) < 0.1):
        for point in rng.choice(POINTS, size=rng.integers(1, 3), replace=False):
            table.loc[row, [f"{point}_x", f"{point}_y"]] = np.nan
    return table
