"""Tiny, seeded competition folders in every layout, written into a temporary folder."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline import config as C
from pipeline.data import cells
from pipeline.paths import Paths
from pipeline.stages import folds, train

os.environ["HF_HUB_OFFLINE"] = "1"  # model.pretrained's default never asks the hub from a test
for proxy in ("http_proxy", "https_proxy", "all_proxy"):  # the scrape refuses one it was not given
    os.environ.pop(proxy, None)
    os.environ.pop(proxy.upper(), None)

KEYPOINTS = ["left_eye_center_x", "left_eye_center_y", "right_eye_center_x", "right_eye_center_y"]


def ctrl_c_as_at_a_terminal() -> None:
    """A child's SIGINT as a terminal's shell leaves it (Popen's preexec_fn): a background job of a
    non-interactive shell (`nohup make test &`) starts with SIGINT ignored, a child inherits that,
    and a Python started so never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_config(data: dict, task: str = "classification", **sections) -> C.Config:
    return C.validate({"competition": {"name": "tiny", "task": task}, "data": data, **sections})


def pixel_frame(rng: np.random.Generator, n: int, n_pixels: int, pixel_max: int) -> pd.DataFrame:
    return pd.DataFrame(rng.integers(0, pixel_max + 1, (n, n_pixels)), columns=[f"pixel{i}" for i in range(n_pixels)])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def pixel_columns_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Digit Recognizer layout with 8x8 images in 0..16 (like scikit-learn's digits), 3 classes."""
    train = pixel_frame(rng, 30, 64, 16)
    train.insert(0, "label", np.arange(30) % 3)
    train.to_csv(tmp_path / "train.csv", index=False)
    pixel_frame(rng, 6, 64, 16).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"ImageId": range(1, 7), "Label": 0}).to_csv(tmp_path / "sample_submission.csv", index=False)
    return tmp_path


def pixel_strings(rng: np.random.Generator, n: int, n_pixels: int) -> list[str]:
    return [" ".join(map(str, row)) for row in rng.integers(0, 256, (n, n_pixels))]


@pytest.fixture
def pixel_string_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Facial Keypoints layout: 6x6 images as pixel strings, 2 keypoints, some missing."""
    train = pd.DataFrame(rng.uniform(0, 6, (20, 4)), columns=KEYPOINTS)
    train.loc[::3, KEYPOINTS[2:]] = np.nan
    train["Image"] = pixel_strings(rng, 20, 36)
    train.to_csv(tmp_path / "training.csv", index=False)
    pd.DataFrame({"ImageId": range(1, 5), "Image": pixel_strings(rng, 4, 36)}).to_csv(
        tmp_path / "test.csv", index=False
    )
    lookup = pd.DataFrame(
        {
            "RowId": range(1, 9),
            "ImageId": np.repeat(range(1, 5), 2),
            "FeatureName": KEYPOINTS[:2] * 4,
            "Location": np.nan,
        }
    )
    lookup.to_csv(tmp_path / "IdLookupTable.csv", index=False)
    pd.DataFrame({"RowId": range(1, 9), "Location": 0}).to_csv(tmp_path / "SampleSubmission.csv", index=False)
    return tmp_path


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def image_csv_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    ids = [f"img{i:02d}" for i in range(12)]
    pd.DataFrame({"id": ids, "label": ["cat", "dog", "bird"] * 4}).to_csv(tmp_path / "train.csv", index=False)
    for i, image_id in enumerate(ids):
        write_image(tmp_path / "train" / f"{image_id}.{'png' if i % 2 else 'jpg'}", rng)
    test_ids = ["t1", "t2"]
    pd.DataFrame({"id": test_ids}).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": "cat"}).to_csv(tmp_path / "sample_submission.csv", index=False)
    for image_id in test_ids:
        write_image(tmp_path / "test" / f"{image_id}.png", rng)
    return tmp_path


@pytest.fixture
def class_folders_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Plant Seedlings layout: train/<class>/*.png, test/*.png, sample ids with the extension."""
    for label in ("maize", "wheat"):
        for i in range(5):
            write_image(tmp_path / "train" / label / f"{label[0]}{i}.png", rng)
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "test" / name, rng)
    pd.DataFrame({"file": ["a.png", "b.png"], "species": "maize"}).to_csv(
        tmp_path / "sample_submission.csv", index=False
    )
    return tmp_path


@pytest.fixture
def filename_regex_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Oxford-IIIT Pets layout: images/great_pyrenees_173.jpg, the breed in the file name."""
    for breed in ("great_pyrenees", "Abyssinian", "pug"):
        for i in range(4):
            write_image(tmp_path / "images" / f"{breed}_{100 + i}.jpg", rng)
    return tmp_path


@pytest.fixture
def digits_dir(tmp_path, rng):
    """A pixel_columns competition of 32x32 images, 3 classes, 36 rows."""
    folder = tmp_path / "competition"
    folder.mkdir()
    frame = pixel_frame(rng, 36, 1024, 255)
    frame.insert(0, "label", np.arange(36) % 3)
    frame.to_csv(folder / "train.csv", index=False)
    pixel_frame(rng, 5, 1024, 255).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"ImageId": range(1, 6), "Label": 0}).to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": range(1, 6), "Label": [0, 1, 2, 0, 1]}).to_csv(folder / "solution.csv", index=False)
    return folder


@pytest.fixture
def faces_dir(tmp_path, rng):
    folder = tmp_path / "faces"
    folder.mkdir()
    table = pd.DataFrame(rng.uniform(4, 28, (24, 4)), columns=KEYPOINTS)
    table.loc[::3, KEYPOINTS[2:]] = np.nan
    table["Image"] = pixel_strings(rng, 24, 1024)
    table.to_csv(folder / "training.csv", index=False)
    pd.DataFrame({"ImageId": [1, 2, 3], "Image": pixel_strings(rng, 3, 1024)}).to_csv(folder / "test.csv", index=False)
    lookup = pd.DataFrame(
        {
            "RowId": range(1, 6),
            "ImageId": [1, 1, 2, 3, 3],
            "FeatureName": [KEYPOINTS[0], KEYPOINTS[1], KEYPOINTS[3], KEYPOINTS[0], KEYPOINTS[2]],
        }
    )
    lookup.to_csv(folder / "IdLookupTable.csv", index=False)
    pd.DataFrame({"RowId": range(1, 6), "Location": 0}).to_csv(folder / "SampleSubmission.csv", index=False)
    return folder


@pytest.fixture
def blobs_dir(tmp_path):
    """A learnable pixel_columns competition: 32x32 noise with a bright square whose corner is the class."""
    rng = np.random.default_rng(0)
    labels = np.arange(96) % 3
    images = rng.integers(0, 80, (96, 32, 32))
    for i, label in enumerate(labels):
        y, x = [(2, 2), (2, 20), (20, 11)][label]
        images[i, y : y + 10, x : x + 10] = 255
    frame = pd.DataFrame(images.reshape(96, -1), columns=[f"pixel{i}" for i in range(1024)])
    frame.insert(0, "label", labels)
    folder = tmp_path / "blobs"
    folder.mkdir()
    frame.to_csv(folder / "train.csv", index=False)
    frame.drop(columns="label").head(6).to_csv(folder / "test.csv", index=False)
    return folder


def add_scraped(folder: Path, rng: np.random.Generator, n: int = 4) -> None:
    """`n` scraped 40x40 colour images of class 1 in folder/extra.csv, and one corrupt file's row."""
    from PIL import Image

    (folder / "extra" / "1").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"extra/1/{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
        rows.append({"url": f"http://x/{i}.png", "label": 1, "status": "kept", "path": name})
    rows.append({"url": "http://x/bad.png", "label": 1, "status": "corrupt", "path": ""})
    pd.DataFrame(rows).to_csv(folder / "extra.csv", index=False)


def tiny(data: dict, task: str = "classification", epochs: int = 1, **train_keys):
    return make_config(
        data,
        task,
        folds={"n_splits": 2},
        model={"name": "test_resnet", "image_size": 32},
        train={"epochs": epochs, "batch_size": 8, "workers": 0, "lr": 0.01, **train_keys},
        aug={"rotate": 10, "shift": 0.1, "hflip": 0.5 if task == "keypoints" else 0.0},
    )


def run(cfg, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    folds.run(cfg)
    train.run(cfg)
    return json.loads((cwd / Paths.of(cfg).cv_json).read_text())


def run_killed_after(cfg, cwd, monkeypatch, checkpoints: int) -> None:
    """run(), killed (KeyboardInterrupt) right after fit's `checkpoints`-th checkpoint is written."""
    from pipeline.learn import fit

    save, written = fit.save_checkpoint, []

    def killed(*args, **kwargs):
        save(*args, **kwargs)
        written.append(1)
        if len(written) == checkpoints:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(fit, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, cwd, monkeypatch)


@pytest.fixture
def cells_config(tmp_path, monkeypatch):
    """The cells demo, 24 training and 6 test images, and its config made tiny, in tmp_path."""
    monkeypatch.setattr(cells, "N_TRAIN", 24)
    monkeypatch.setattr(cells, "N_TEST", 6)
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "cells.yaml").read_text())
    raw["folds"]["n_splits"] = 2
    raw["model"] = {"name": "test_resnet", "pretrained": "none", "image_size": 32}
    raw["train"] = {"epochs": 2, "batch_size": 8, "workers": 0, "lr": 0.01, "device": "cpu"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cells.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "cells.yaml"
