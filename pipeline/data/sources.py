"""Readers for the competition layouts, each giving one canonical train and test table.

A table has the columns `id`, `image` (where the pixels come from: a file path
relative to the data folder, or `<csv>:<line>` for pixels stored in a CSV), the
target columns (train only) and any other columns the competition ships. The
pixels themselves come with it as an ArraySource or a FileSource (images.py).

Line numbers in errors are the CSV's own (the header is line 1).
"""

import hashlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import config as C
from pipeline import tasks
from pipeline.data import pixel_values
from pipeline.data.images import ArraySource, FileSource, open_images
from pipeline.data.mask_sheets import Sheet
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
    sample_ids = sample_images(path, layout)
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


def sample_images(path: Path, layout: C.LayoutBase) -> pd.Series:
    """The images a sample submission lists, each once (a segmentation sample may list an image
    on a row per class), named by its first column."""
    sample = read_csv(path, dtype=str)
    return Sheet.of(layout).image_ids(sample, str(path)).rename(sample.columns[0])


def _fingerprint(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


# --- pixels in CSVs ----------------------------------------------------------------------------


def _pixel_split(table: pd.DataFrame, values: np.ndarray, path: Path, pixel_max: float, shape: tuple) -> Split:
    images = pixel_values.to_uint8(values, pixel_max, shape, path)
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
    train_values = pixel_values.pixel_columns_matrix(train, pixels, train_path)
    test_values = pixel_values.pixel_columns_matrix(test, pixels, test_path)
    pixel_max = pixel_values.infer_pixel_max(train_values, layout.pixel_max, train_path)
    shape = pixel_values.image_shape(len(pixels), layout.image_shape, train_path)

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
    train_values = pixel_values.pixel_strings_matrix(train[layout.image_column], train_path, layout.image_column)
    test_values = pixel_values.pixel_strings_matrix(test[layout.image_column], test_path, layout.image_column)
    if test_values.shape[1] != train_values.shape[1]:
        raise PipelineError(
            f"{test_path}: {test_values.shape[1]} pixels per image, training has {train_values.shape[1]}"
        )
    pixel_max = pixel_values.infer_pixel_max(train_values, layout.pixel_max, train_path)
    shape = pixel_values.image_shape(train_values.shape[1], layout.image_shape, train_path)
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
        test = sample_images(test_path, layout).to_frame(layout.id_column)
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
