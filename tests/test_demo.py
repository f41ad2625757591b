import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.config import validate
from pipeline.data import sources
from pipeline.data.digits import build_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "digits"
    build_digits(folder)
    return folder


def test_digit_recognizer_format(digits):
    train, test = pd.read_csv(digits / "train.csv"), pd.read_csv(digits / "test.csv")
    assert train.shape == (3000, 785) and test.shape == (1000, 784)
    assert list(train.columns[:2]) == ["label", "pixel0"] and train.columns[-1] == "pixel783"
    assert (train["label"].value_counts() == 300).all()
    assert train.iloc[:, 1:].to_numpy().max() == 255
    sample, solution = pd.read_csv(digits / "sample_submission.csv"), pd.read_csv(digits / "solution.csv")
    assert list(sample.columns) == ["ImageId", "Label"] and sample["ImageId"].tolist() == list(range(1, 1001))
    assert solution["ImageId"].tolist() == sample["ImageId"].tolist()
    assert (solution["Label"].value_counts() == 100).all()
    train_rows = {row.tobytes() for row in train.iloc[:, 1:].to_numpy(np.uint8)}
    assert not any(row.tobytes() in train_rows for row in test.to_numpy(np.uint8))


def test_reads_as_a_competition(digits):
    cfg = validate(
        {
            "competition": {"name": "digits", "task": "classification"},
            "data": {"layout": "pixel_columns", "dir": str(digits)},
        }
    )
    data = sources.read(cfg)
    assert data.train.images.images.shape == (3000, 28, 28, 1) and len(data.test.table) == 1000


def test_gallery_pages_link_every_kind_of_file(digits):
    site = digits / "gallery"
    truth = pd.read_csv(digits / "gallery_truth.csv")
    assert set(truth["kind"]) == {
        "clean",
        "corrupt",
        "not_image",
        "too_small",
        "duplicate",
        "test_leak",
        "upscaled_copy",
    }
    assert (truth[truth["kind"] == "clean"]["label"].value_counts() == 100).all()
    linked = set()
    for digit in range(10):
        page = (site / f"digit-{digit}.html").read_text()
        for pattern in (r'src="/static/', r'data-src="static/', r'srcset="static/', r'<a href="static/', r"og:image"):
            assert re.search(pattern, page), (digit, pattern)
        linked |= set(re.findall(r"static/[0-9a-f]{12}(?:@2x)?\.(?:png|jpg)", page))
    assert linked == set(truth["file"])
    assert all((site / f).exists() for f in truth["file"])
    for kind, side in (("clean", 28), ("test_leak", 28), ("upscaled_copy", 56)):
        with Image.open(site / truth.loc[truth["kind"] == kind, "file"].iloc[0]) as image:
            assert image.size == (side, side), kind
    assert (site / "index.html").exists()
