"""Readers for the competition layouts, each giving one canonical train and test table.

A table has the columns `id`, `image` (where the pixels come from: a file path
relative to the data folder, or `<csv>:<line>` for pixels stored in a CSV), the
target columns (train only) and any other columns the competition ships. The
pixels themselves come with it as an ArraySource or a FileSource (images.py).

Line numbers in errors are the CSV's own (the header is line 1).
"""

import hashlib
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import config as C
from pipeline import tasks
from pipeline.data.images import ArraySource, FileSource, open_images
from pipeline.errors import PipelineError
from pipeline.files import sha256_file
from pipeline.tables import line, read_csv, require_columns, show


@dataclass(frozen=True)
class Split:
    table: pd.DataFrame
    images: ArraySource | FileSource


@dataclass(frozen=True)
class CompetitionData:
    train: Split
    test: Split
    targets: list[str]  # the target columns of the train table, as its task reads them
    features: list[str] = field(default_factory=list)  # tabular columns of both tables (data.feature_columns)


def read(cfg: C.Config) -> CompetitionData:
    """The competition's train and test tables, checked; every problem is a PipelineError."""
    reader = READERS[cfg.data.layout]
    data = reader(cfg.data, cfg.competition.task)
    source = data.train.table.attrs.get("source", "train table")
    tasks.get(cfg.competition.task).check_targets(data.train.table, data.targets, source)
    return data


def check_unique(ids: pd.Series, path: Path, column: str) -> None:
    duplicated = ids[ids.duplicated(keep=False)]
    if len(duplicated):
        first = duplicated.index[:2]
        raise PipelineError(
            f"{path} lines {line(first[0])} and {line(first[1])}: "
            f"duplicate id {show(ids[first[0]])} in column {column!r}"
        )


def check_against_sample(ids: pd.Series, layout: C.LayoutBase) -> pd.Series:
    """Test ids must be the sample submission's ids. Ids that match only with a file extension
    (Plant Seedlings' sample lists `0021e90e4.png`) are returned in the sample's spelling."""
    if layout.sample_submission is None:
        return ids
    path = layout.dir / layout.sample_submission
    sample_ids = read_csv(path, dtype=str).iloc[:, 0]
    wanted, have = set(sample_ids), set(ids.astype(str))
    if wanted == have:
        return ids
    by_name = ids.attrs.get("file_names")
    if by_name is not None and wanted == set(by_name):
        return pd.Series(by_name, index=ids.index, name=ids.name)
    if by_name is not None and len(wanted ^ set(by_name)) < len(wanted ^ have):
        have = set(by_name)  # the sample spells ids as file names: compare in that spelling
    missing, unexpected = sorted(wanted - have), sorted(have - wanted)
    examples = [f"{missing[0]!r} is in the sample but not the test set"] if missing else []
    examples += [f"{unexpected[0]!r} is in the test set but not the sample"] if unexpected else []
    raise PipelineError(
        f"{path}: test ids do not match the sample submission's {sample_ids.name!r} column "
        f"({len(missing)} missing, {len(unexpected)} unexpected; e.g. {', and '.join(examples)})"
    )


def _fingerprint(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


# --- pixels in CSVs ----------------------------------------------------------------------------


def infer_pixel_max(values: np.ndarray, setting: str | float, path: Path) -> float:
    if setting != "auto":
        return float(setting)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if low < 0:
        raise PipelineError(f"{path}: pixel values go down to {low}; expected 0 or more (set data.pixel_max)")
    integral = bool(np.all(np.mod(values, 1) == 0))
    for candidate in (1.0, 16.0, 255.0):
        if high <= candidate and (integral or candidate == 1.0):
            return candidate
    raise PipelineError(f"{path}: pixel values go up to {high}; expected at most 255 (set data.pixel_max)")


def image_shape(n_pixels: int, setting: tuple[int, int] | None, path: Path) -> tuple[int, int]:
    if setting is not None:
        if setting[0] * setting[1] != n_pixels:
            raise PipelineError(
                f"{path}: data.image_shape {tuple(setting)} holds {setting[0] * setting[1]} pixels, "
                f"rows have {n_pixels}"
            )
        return tuple(setting)
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise PipelineError(f"{path}: {n_pixels} pixels per row is not a square image; set data.image_shape")
    return side, side


def to_uint8(values: np.ndarray, pixel_max: float, shape: tuple[int, int], path: Path) -> np.ndarray:
    """(N, H*W) numbers in 0..pixel_max -> (N, H, W, 1) uint8."""
    if float(np.nanmax(values, initial=0)) > pixel_max:
        raise PipelineError(f"{path}: pixel values go up to {np.nanmax(values)}, above data.pixel_max={pixel_max}")
    scaled = np.rint(values * (255.0 / pixel_max)).clip(0, 255).astype(np.uint8)
    return scaled.reshape(len(values), *shape, 1)


def _pixel_columns_matrix(frame: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    block = frame[columns]
    for column in columns:
        if not pd.api.types.is_numeric_dtype(block[column]):
            numeric = pd.to_numeric(block[column], errors="coerce")
            i = int(np.flatnonzero(numeric.isna() & block[column].notna())[0])
            raise PipelineError(
                f"{path} line {line(i)}, column {column!r}: pixel {show(block[column].iloc[i])} is not a number"
            )
    values = block.to_numpy(dtype=np.float32)
    short = np.isnan(values).any(axis=1)
    if short.any():
        i = int(np.flatnonzero(short)[0])
        count = int((~np.isnan(values[i])).sum())
        raise PipelineError(
            f"{path} line {line(i)}: {count} pixels, expected {len(columns)} (column "
            f"{columns[int(np.flatnonzero(np.isnan(values[i]))[0])]!r} is empty)"
        )
    return values


def _pixel_strings_matrix(strings: pd.Series, path: Path, column: str) -> np.ndarray:
    rows, expected = [], None
    for i, text in enumerate(strings):
        try:
            row = np.array(str(text).split(), dtype=np.float32)
        except ValueError:
            bad = next(tok for tok in str(text).split() if not is_number(tok))
            raise PipelineError(f"{path} line {line(i)}, column {column!r}: pixel {bad!r} is not a number") from None
        expected = len(row) if expected is None else expected
        if len(row) != expected:
            raise PipelineError(f"{path} line {line(i)}, column {column!r}: {len(row)} pixels, expected {expected}")
        rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _pixel_split(table: pd.DataFrame, values: np.ndarray, path: Path, pixel_max: float, shape: tuple) -> Split:
    images = to_uint8(values, pixel_max, shape, path)
    table.insert(1, "image", [f"{path.name}:{line(i)}" for i in range(len(table))])
    table.attrs["source"] = str(path)
    fingerprint = _fingerprint(path.name, sha256_file(path), pixel_max, shape)
    return Split(table.reset_index(drop=True), ArraySource(images, fingerprint))


def read_pixel_columns(layout: C.PixelColumns, task: str) -> CompetitionData:
    train_path, test_path = layout.dir / layout.train_csv, layout.dir / layout.test_csv
    train, test = read_csv(train_path), read_csv(test_path)
    pixels = sorted(
        (c for c in train.columns if str(c).startswith(layout.pixel_prefix)),
        key=lambda c: int(re.sub(r"\D", "", c[len(layout.pixel_prefix) :]) or 0),
    )
    if not pixels:
        raise PipelineError(f"{train_path}: no pixel columns (names starting with {layout.pixel_prefix!r})")
    require_columns(train, [layout.label_column] + ([layout.id_column] if layout.id_column else []), train_path)
    require_columns(test, pixels + ([layout.id_column] if layout.id_column else []), test_path)
    train_values = _pixel_columns_matrix(train, pixels, train_path)
    test_values = _pixel_columns_matrix(test, pixels, test_path)
    pixel_max = infer_pixel_max(train_values, layout.pixel_max, train_path)
    shape = image_shape(len(pixels), layout.image_shape, train_path)

    def table(frame: pd.DataFrame, path: Path, targets: list[str]) -> pd.DataFrame:
        ids = frame[layout.id_column] if layout.id_column else pd.Series(np.arange(1, len(frame) + 1))
        check_unique(ids, path, layout.id_column or "row number")
        return pd.concat([ids.rename("id"), frame[targets].reset_index(drop=True)], axis=1)

    train_table = table(train, train_path, [layout.label_column])
    test_table = table(test, test_path, [])
    test_table["id"] = check_against_sample(test_table["id"], layout)
    return CompetitionData(
        train=_pixel_split(train_table, train_values, train_path, pixel_max, shape),
        test=_pixel_split(test_table, test_values, test_path, pixel_max, shape),
        targets=[layout.label_column],
    )


def read_pixel_string(layout: C.PixelString, task: str) -> CompetitionData:
    train_path, test_path = layout.dir / layout.train_csv, layout.dir / layout.test_csv
    train, test = read_csv(train_path), read_csv(test_path)
    require_columns(train, [layout.image_column] + (layout.keypoint_columns or []), train_path)
    require_columns(test, [layout.id_column, layout.image_column], test_path)
    keypoints = layout.keypoint_columns or [c for c in train.columns if re.search(r"_[xy]$", str(c))]
    if not keypoints:
        raise PipelineError(f"{train_path}: no keypoint columns (names ending in _x or _y); set data.keypoint_columns")
    train_values = _pixel_strings_matrix(train[layout.image_column], train_path, layout.image_column)
    test_values = _pixel_strings_matrix(test[layout.image_column], test_path, layout.image_column)
    if test_values.shape[1] != train_values.shape[1]:
        raise PipelineError(
            f"{test_path}: {test_values.shape[1]} pixels per image, training has {train_values.shape[1]}"
        )
    pixel_max = infer_pixel_max(train_values, layout.pixel_max, train_path)
    shape = image_shape(train_values.shape[1], layout.image_shape, train_path)
    check_unique(test[layout.id_column], test_path, layout.id_column)
    _check_lookup_table(layout, test[layout.id_column], keypoints)
    train_table = pd.concat([pd.Series(np.arange(1, len(train) + 1), name="id"), train[keypoints]], axis=1)
    test_table = test[[layout.id_column]].rename(columns={layout.id_column: "id"})
    return CompetitionData(
        train=_pixel_split(train_table, train_values, train_path, pixel_max, shape),
        test=_pixel_split(test_table, test_values, test_path, pixel_max, shape),
        targets=list(keypoints),
    )


def _check_lookup_table(layout: C.PixelString, test_ids: pd.Series, keypoints: list[str]) -> None:
    """The lookup table asks for features of test images; the sample submission lists its RowIds."""
    if layout.lookup_table is None:
        return
    path = layout.dir / layout.lookup_table
    lookup = read_csv(path)
    require_columns(lookup, ["RowId", "ImageId", "FeatureName"], path)
    unknown_image = ~lookup["ImageId"].isin(set(test_ids))
    if unknown_image.any():
        i = int(np.flatnonzero(unknown_image)[0])
        raise PipelineError(f"{path} line {line(i)}: ImageId {show(lookup['ImageId'].iloc[i])} is not in the test set")
    unknown_feature = ~lookup["FeatureName"].isin(set(keypoints))
    if unknown_feature.any():
        i = int(np.flatnonzero(unknown_feature)[0])
        raise PipelineError(
            f"{path} line {line(i)}: FeatureName {show(lookup['FeatureName'].iloc[i])} is not a keypoint column"
        )
    check_against_sample(lookup["RowId"].astype(str), layout)


# --- image files -------------------------------------------------------------------------------


def open_split(cfg: C.Config, source: ArraySource | FileSource, cache_dir: Path, side: int) -> Sequence:
    """A split's images, cached in `cache_dir` at `side`: the experiment's working side, the
    largest model input it may ask for (learn.presets.working_side)."""
    return open_images(source, cache_dir, cfg.data.cache, cfg.data.cache_limit_gb, side)


def list_images(folder: Path, extensions: list[str]) -> list[Path]:
    """Image files directly in `folder`, sorted. Other files (Oxford Pets ships .mat files beside
    its JPEGs) are left out with a warning that names them; hidden files are ignored."""
    if not folder.is_dir():
        raise PipelineError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    others = [p for p in files if p.suffix.lower() not in extensions]
    if others:
        print(
            f"warning: {folder}: left out {len(others)} file(s) whose extension is not in data.extensions, "
            f"e.g. {others[0].name}",
            file=sys.stderr,
        )
    return [p for p in files if p.suffix.lower() in extensions]


def _file_split(table: pd.DataFrame, paths: list[Path], layout: C.FileLayout, source: str) -> Split:
    table = table.reset_index(drop=True)
    table.insert(1, "image", [str(p.relative_to(layout.dir)) for p in paths])
    table.attrs["source"] = source
    window = tuple(layout.dicom_window) if layout.dicom_window else None
    return Split(table, FileSource(tuple(paths), layout.channels, window))


def _stems(paths: list[Path], folder: Path, *, with_class: bool = False) -> pd.Series:
    """Each image's id: its file's stem, or (`with_class`) <class folder>/<stem>."""
    names = [f"{p.parent.name}/{p.stem}" if with_class else p.stem for p in paths]
    ids = pd.Series(names, name="id")
    ids.attrs["file_names"] = [p.name for p in paths]
    seen: dict[str, Path] = {}
    for name, path in zip(names, paths, strict=True):
        if name in seen:
            raise PipelineError(f"{folder}: duplicate id {name!r} ({seen[name]} and {path})")
        seen[name] = path
    return ids


def _test_from_folder(layout: C.FileLayout, test_dir: str | None) -> Split:
    paths = list_images(layout.dir / test_dir, layout.extensions) if test_dir else []
    ids = _stems(paths, layout.dir / (test_dir or ""))
    ids = check_against_sample(ids, layout)
    return _file_split(pd.DataFrame({"id": ids}), paths, layout, str(layout.dir / (test_dir or "")))


def read_class_folders(layout: C.ClassFolders, task: str) -> CompetitionData:
    root = layout.dir / layout.train_dir
    if not root.is_dir():
        raise PipelineError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise PipelineError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    paths = [p for c in classes for p in list_images(root / c, layout.extensions)]
    labels = [p.parent.name for p in paths]
    shared_stems = len({p.stem for p in paths}) < len(paths)  # cats/1.jpg and dogs/1.jpg: ids name the class
    train = pd.DataFrame({"id": _stems(paths, root, with_class=shared_stems), "label": labels})
    return CompetitionData(
        _file_split(train, paths, layout, str(root)), _test_from_folder(layout, layout.test_dir), ["label"]
    )


def read_filename_regex(layout: C.FilenameRegex, task: str) -> CompetitionData:
    root = layout.dir / layout.train_dir
    paths = list_images(root, layout.extensions)
    pattern = re.compile(layout.pattern)
    labels = []
    for path in paths:
        match = pattern.search(path.stem)
        if match is None:
            raise PipelineError(f"{path}: file name does not match data.pattern {layout.pattern!r}")
        labels.append(match.group("label"))
    train = pd.DataFrame({"id": _stems(paths, root), "label": labels})
    return CompetitionData(
        _file_split(train, paths, layout, str(root)), _test_from_folder(layout, layout.test_dir), ["label"]
    )


def read_image_csv(layout: C.ImageCsv, task: str) -> CompetitionData:
    train_path = layout.dir / layout.train_csv
    train = read_csv(train_path, dtype={layout.id_column: str})
    train, targets = tasks.get(task).training_table(train, layout, train_path)
    if layout.test_csv is not None:
        test_path = layout.dir / layout.test_csv
        test = read_csv(test_path, dtype={layout.id_column: str})
        require_columns(test, [layout.id_column], test_path)
    elif layout.sample_submission is not None:
        test_path = layout.dir / layout.sample_submission
        test = read_csv(test_path, dtype=str).iloc[:, :1].set_axis([layout.id_column], axis=1)
    else:
        raise PipelineError("data.test_csv and data.sample_submission are both unset: no way to list the test images")
    for table, path in ((train, train_path), (test, test_path)):
        require_columns(table, layout.feature_columns, path)
    train = _image_csv_table(train, train_path, layout, layout.train_dir)
    test = _image_csv_table(test, test_path, layout, layout.test_dir)
    check_against_sample(test["id"], layout)
    return CompetitionData(
        *(_file_split(t, t.pop("_path").tolist(), layout, str(p)) for t, p in ((train, train_path), (test, test_path))),
        targets=targets,
        features=list(layout.feature_columns),
    )


def _image_csv_table(frame: pd.DataFrame, path: Path, layout: C.ImageCsv, image_dir: str) -> pd.DataFrame:
    check_unique(frame[layout.id_column], path, layout.id_column)
    folder = layout.dir / image_dir
    if not folder.is_dir():
        raise PipelineError(f"image folder {folder} does not exist (images of {path})")
    names = {p.name: p for p in folder.iterdir() if p.is_file()}
    by_stem = {p.stem: p for p in names.values() if p.suffix.lower() in layout.extensions}
    paths = []
    for i, image_id in enumerate(frame[layout.id_column]):
        found = (
            names.get(f"{image_id}{layout.image_ext}")
            if layout.image_ext
            else names.get(image_id) or by_stem.get(image_id)
        )
        if found is None:
            raise PipelineError(f"{path} line {line(i)}: no image for id {image_id!r} in {folder}")
        paths.append(found)
    frame = frame.rename(columns={layout.id_column: "id"}).reset_index(drop=True)
    frame.attrs["source"] = str(path)
    frame["_path"] = paths
    return frame


READERS: dict[str, Callable[..., CompetitionData]] = {
    "pixel_columns": read_pixel_columns,
    "pixel_string": read_pixel_string,
    "image_csv": read_image_csv,
    "class_folders": read_class_folders,
    "filename_regex": read_filename_regex,
}
