"""A segmentation competition's masks, from any of the shapes Kaggle ships them in, as one
canonical table: a row per training image and a column per class, each cell that class's
run-length code (data.rle_order) in the image's own pixels, "" for an empty mask.

The shapes: a code column per class beside the id (TGS's `id,rle_mask`); one row per image and
class (Severstal's `ImageId,ClassId,EncodedPixels`, `data.class_column`, or its 2019
`ImageId_ClassId,EncodedPixels`, `data.class_separator`), where an image with no row has no
mask, and a row per object (SIIM) adds to its image's mask; or a folder of mask images named by
the id (`data.mask_dir`, nonzero pixels in the mask).
"""

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data import rle
from pipeline.data.mask_sheets import Sheet
from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.tables import line, require_columns

JOINED_CLASS = "_class"  # where a joined key's class goes
EMPTY_CODES = ("", "-1")  # SIIM writes -1 for an image with no mask


def training_table(frame: pd.DataFrame, layout, source: Path) -> tuple[pd.DataFrame, list[str]]:
    """The train CSV (`layout`: data, an ImageCsv) as a row per image and a code column per class,
    and those columns."""
    if layout.mask_dir is not None:
        require_columns(frame, [layout.id_column], source)
        ids = frame[layout.id_column].astype(str).tolist()
        codes, shapes = from_folder(layout.dir / layout.mask_dir, ids, layout.extensions, layout.rle_order)
        check_mask_shapes(shapes, ids, layout.dir / layout.train_dir, layout.extensions)
        return frame.assign(mask=codes), ["mask"]
    frame, class_column = _split_joined(frame, layout, source)
    long = class_column is not None or frame[layout.id_column].duplicated().any()
    if not long:
        require_columns(frame, [layout.id_column, *layout.label_columns], source)
        codes = {c: blank_empty(frame[c]) for c in layout.label_columns}
        for column, cells in codes.items():
            for i, code in enumerate(cells):
                rle.runs(code, f"{source} line {line(i)}, column {column!r}")
        return frame.assign(**codes), list(layout.label_columns)
    if len(layout.label_columns) != 1:
        raise PipelineError(
            f"{source}: a table of one row per image and class (or object) has one column of run-length codes;"
            f" data.label_columns names {len(layout.label_columns)}: {layout.label_columns}"
        )
    require_columns(frame, [layout.id_column, *layout.label_columns, *([class_column] if class_column else [])], source)
    ids = list(frame[layout.id_column].drop_duplicates())
    if class_column is not None:
        ids = image_ids(layout.dir / layout.train_dir, layout.extensions, frame[layout.id_column])
    return from_rows(frame, layout.id_column, ids, layout.label_columns[0], class_column, source)


def _split_joined(frame: pd.DataFrame, layout, source: Path) -> tuple[pd.DataFrame, str | None]:
    """A table keyed <image><separator><class> (data.class_separator) as one with the image in
    the id column and the class in a column of its own, and that column's name."""
    if layout.class_separator is None:
        return frame, layout.class_column
    require_columns(frame, [layout.id_column], source)
    images, classes = Sheet.of(layout).split(frame[layout.id_column], str(source))
    return frame.assign(**{layout.id_column: images, JOINED_CLASS: classes}), JOINED_CLASS


def image_ids(folder: Path, extensions: list[str], named: pd.Series) -> list[str]:
    """Every image in `folder` by id: file names where the table's ids carry the extension
    (Severstal's `0002cc93b.jpg`), else stems."""
    if not folder.is_dir():
        raise PipelineError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    with_suffix = named.astype(str).str.lower().str.endswith(tuple(extensions)).any()
    return [p.name if with_suffix else p.stem for p in files]


def union(codes: list[str], where: list[str]) -> str:
    """One code for the pixels of all `codes` (each checked; `where` names each one's row)."""
    pairs = [np.stack(rle.runs(code, place), axis=1) for code, place in zip(codes, where, strict=True)]
    runs = np.concatenate([np.zeros((0, 2), np.int64), *pairs])
    if len(runs) == 0:
        return ""
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    ends = np.maximum.accumulate(runs[:, 0] + runs[:, 1])  # one past each run's last pixel, so far
    starts_new = np.concatenate([[True], runs[1:, 0] > ends[:-1]])  # touching runs merge too
    first = np.flatnonzero(starts_new)
    last_end = np.append(ends[first[1:] - 1], ends[-1])
    return " ".join(f"{s} {e - s}" for s, e in zip(runs[first, 0], last_end, strict=True))


def blank_empty(codes: pd.Series) -> pd.Series:
    """The codes with a missing cell or SIIM's -1 as ""."""
    text = codes.fillna("").astype(str).str.strip()
    return text.mask(text.isin(EMPTY_CODES), "")


def from_rows(
    frame: pd.DataFrame, id_column: str, ids: list[str], code_column: str, class_column: str | None, source: Path
) -> tuple[pd.DataFrame, list[str]]:
    """A table of one row per image and class (or per object) -> a row per id of `ids` (every
    training image; one with no row has empty masks) and a code column per class, as
    `class_column`'s values name them (none: one class, named as the code column)."""
    unknown = ~frame[id_column].isin(ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise PipelineError(f"{source} line {line(i)}: id {frame[id_column].iloc[i]!r} has no training image")
    codes = blank_empty(frame[code_column])
    class_of = frame[class_column].astype(str) if class_column else pd.Series(code_column, index=frame.index)
    rows_of: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(frame[id_column], class_of, strict=True)):
        rows_of.setdefault(key, []).append(i)

    def cell(image: str, name: str) -> str:
        rows = rows_of.get((image, name), [])
        return union([codes.iloc[i] for i in rows], [f"{source} line {line(i)}, column {code_column!r}" for i in rows])

    classes = sorted(class_of.unique())
    return pd.DataFrame({id_column: ids, **{name: [cell(image, name) for image in ids] for name in classes}}), classes


def from_folder(
    folder: Path, ids: list[str], extensions: list[str], order: str
) -> tuple[pd.Series, dict[str, tuple[int, int]]]:
    """Each id's mask image in `folder` (<id>.<ext> or <id>_mask.<ext>) as a code (nonzero
    pixels in the mask), and each mask's (height, width). Every stage reads the table, so both
    are kept (CODES_CACHE) and a mask is decoded again only when its file's size or time changed."""
    if not folder.is_dir():
        raise PipelineError(f"mask folder {folder} (data.mask_dir) does not exist")
    # Carvana names a mask <id>_mask.gif
    by_stem = {
        p.stem.removesuffix("_mask"): p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions
    }
    cache = codes_cache(folder, order)
    known, codes = _read_json(cache), {}
    for image_id in ids:
        path = by_stem.get(image_id)
        if path is None:
            raise PipelineError(f"{folder}: no mask image for training id {image_id!r}")
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        kept = known.get(path.name)
        codes[path.name] = kept if kept and kept[:2] == key and len(kept) == 5 else [*key, *_encoded(path, order)]
    if codes != known:
        with contextlib.suppress(OSError):  # a read-only home decodes every time
            write_text(cache, json.dumps(codes))
    entries = [codes[by_stem[i].name] for i in ids]
    return pd.Series([e[2] for e in entries], name="mask"), {i: (e[3], e[4]) for i, e in zip(ids, entries, strict=True)}


def _encoded(path: Path, order: str) -> list:
    mask = read_mask(path)
    return [rle.encode(mask, order), *mask.shape]


def check_mask_shapes(shapes: dict[str, tuple[int, int]], ids: list[str], image_dir: Path, extensions) -> None:
    """Each mask is its image's size (read from the image file's header): a smaller one would
    put its pixels in the wrong places without a code ever running past the image."""
    if not image_dir.is_dir():
        return  # the image reader names the missing folder
    files = [p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions]
    images = {p.stem: p for p in files} | {p.name: p for p in files}
    for image_id in ids:
        path = images.get(image_id)
        if path is None:
            continue  # missing: the image reader names it
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError):
            continue  # not one PIL reads (DICOM): its reader checks it
        if shapes[image_id] != (height, width):
            mask_h, mask_w = shapes[image_id]
            raise PipelineError(
                f"mask of training id {image_id!r} is {mask_h}x{mask_w} (height x width), its image {path} is "
                f"{height}x{width}: a mask is its image's size"
            )


def codes_cache(folder: Path, order: str) -> Path:
    """Where a mask folder's codes are kept: ~/.cache/pipeline/mask_codes/, by folder and order."""
    key = hashlib.sha256(f"{folder.resolve()}:{order}".encode()).hexdigest()[:20]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pipeline" / "mask_codes" / f"{key}.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_mask(path: Path) -> np.ndarray:
    """A mask image as (height, width) 0/1; a colour mask is in where any channel is nonzero."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise PipelineError(f"mask image {path} cannot be decoded: {exc}") from None
    return (pixels.reshape(*pixels.shape[:2], -1) != 0).any(axis=2).astype(np.uint8)
