"""Which competition layout a folder holds, and each decision with its reason: pixel columns, a
pixel string, an image CSV, class folders or labels in file names. A folder that two layouts
fit, or with two candidate label columns, is refused in one line naming the candidates and the
key to set."""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline import config as C
from pipeline import tasks
from pipeline.data import pixel_values, sources
from pipeline.errors import PipelineError

PIXEL_COLUMN = re.compile(r"^pixel\d+$")


FILENAME_LABEL = r"^(?P<label>.+)_\d+$"


SAMPLE_SUBMISSION = re.compile(r"sample.*submission.*\.csv$", re.IGNORECASE)


@dataclass
class Decision:
    key: str  # dotted config key
    value: object
    why: str


@dataclass
class Folder:
    """A competition folder's CSVs (headers and first rows), subfolders and image files, and the
    keys the user gave (`make init ARGS=...`), which no guess replaces."""

    root: Path
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)
    extensions: tuple[str, ...] = C.IMAGE_EXTENSIONS
    listings: dict[Path, list[Path]] = field(default_factory=dict)
    given: dict[str, object] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path, given: dict[str, object]) -> "Folder":
        if not root.is_dir():
            raise PipelineError(f"init: {root} is not a folder")
        folder = cls(root, given=given)
        for path in sorted(root.glob("*.csv")):
            folder.csvs[path.name] = sources.read_csv(path, rows_required=False, nrows=50)
        return folder

    @property
    def sample_submission(self) -> str | None:
        return next((name for name in self.csvs if SAMPLE_SUBMISSION.search(name)), None)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSVs other than the sample submission."""
        return {name: frame for name, frame in self.csvs.items() if name != self.sample_submission}

    def pick(self, candidates: list, key: str, where: str):
        """The one candidate for `key`, or the given value; none or several are refused, naming
        the candidates and the key that picks."""
        if key in self.given:
            return self.given[key]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise PipelineError(f"init: {where} has no candidate for {key}; set it: make init DIR=... ARGS={key}=...")
        raise PipelineError(
            f"init: {where} has {len(candidates)} candidates for {key}: {candidates}; pick one: make init DIR=..."
            f" ARGS={key}=..."
        )

    def images_in(self, folder: Path) -> list[Path]:
        """Listed once per folder: every column of every CSV is tried against the folders."""
        if folder not in self.listings:
            self.listings[folder] = sorted(
                p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in self.extensions
            )
        return self.listings[folder]

    def subfolders(self, folder: Path | None = None) -> list[Path]:
        return sorted(p for p in (folder or self.root).iterdir() if p.is_dir() and not p.name.startswith("."))


def pixel_columns(folder: Folder) -> list[Decision] | None:
    with_pixels = {n: f for n, f in folder.tables.items() if sum(map(bool, map(PIXEL_COLUMN.match, f.columns))) >= 16}
    named = [folder.given.get(key) for key in ("data.train_csv", "data.test_csv")]
    if all(named):
        with_pixels = {n: f for n, f in with_pixels.items() if n in named}
    if len(with_pixels) > 2:
        raise PipelineError(
            f"init: {sorted(with_pixels)} all hold pixel columns; pick two: make init DIR=..."
            " ARGS='data.train_csv=... data.test_csv=...'"
        )
    if len(with_pixels) != 2:
        return None
    (a, first), (b, second) = with_pixels.items()
    train, test = (a, b) if len(first.columns) > len(second.columns) else (b, a)
    frame, other = with_pixels[train], with_pixels[test]
    labels = [c for c in frame.columns if not PIXEL_COLUMN.match(c) and c not in other.columns]
    shared = [c for c in frame.columns if not PIXEL_COLUMN.match(c) and c in other.columns]
    n_pixels = sum(map(bool, map(PIXEL_COLUMN.match, frame.columns)))
    found = f"{train} and {test} hold {n_pixels} pixel columns per image"
    decisions = [Decision("data.layout", "pixel_columns", found), *_csv_names(train, test)]
    decisions.append(Decision("data.label_column", folder.pick(labels, "data.label_column", train), f"only in {train}"))
    id_column = shared[0] if len(shared) == 1 else None
    decisions.append(Decision("data.id_column", id_column, _id_reason(id_column, train, test)))
    return decisions


def pixel_string(folder: Folder) -> list[Decision] | None:
    with_strings = {n: f for n, f in folder.tables.items() if _pixel_string_column(f)}
    if len(with_strings) != 2:
        return None
    train = next((n for n, f in with_strings.items() if claimed(f, list(f.columns))[0]), None)
    if train is None:
        return None
    test = next(n for n in with_strings if n != train)
    image_column = _pixel_string_column(with_strings[train])
    ids = [c for c in with_strings[test].columns if c != image_column]
    decisions = [
        Decision("data.layout", "pixel_string", f"{train} and {test} hold each image as a string of pixels"),
        *_csv_names(train, test),
        Decision("data.image_column", image_column, "its values are strings of numbers"),
        Decision("data.id_column", folder.pick(ids, "data.id_column", test), f"{test}'s other column"),
    ]
    lookup = next((n for n, f in folder.tables.items() if {"RowId", "ImageId", "FeatureName"} <= set(f.columns)), None)
    decisions.append(Decision("data.lookup_table", lookup, "the features asked per test image" if lookup else "none"))
    return decisions


def image_csv(folder: Folder) -> list[Decision] | None:
    """The training CSV names the images and has the targets beside them; most often it is
    called train*.csv. Two such CSVs (train.csv beside train_v2.csv) are refused."""
    fits = {}
    for name, frame in folder.tables.items():
        # a train CSV of ids alone may have its targets in a folder of masks
        if folder.given.get("data.train_csv", name) != name or (
            len(frame.columns) < 2 and not name.startswith("train")
        ):
            continue
        columns = [str(c) for c in frame.columns if folder.given.get("data.id_column", c) == c]
        naming = ((c, sep, _folder_of(folder, _images(frame[c], sep))) for sep in (None, "_") for c in columns)
        if found := next(((c, sep, d) for c, sep, d in naming if d is not None), None):
            fits[name] = found
    if not fits:
        return None
    likely = [n for n in fits if n.startswith("train")] or list(fits)
    train = folder.pick(likely, "data.train_csv", f"{folder.root} (CSVs naming the images, with columns beside)")
    id_column, separator, image_dir = fits[train]
    decisions = _image_csv_decisions(folder, train, id_column, image_dir, separator)
    joined = Decision("data.class_separator", separator, f"{id_column}'s values are <image>{separator}<class>")
    return [*decisions, joined] if separator else decisions


def _images(values: pd.Series, separator: str | None) -> pd.Series:
    """A column's values as image names: as they are, or cut at `separator`'s last occurrence
    (Severstal 2019's `0002cc93b.jpg_1`)."""
    text = values.astype(str)
    if separator is None:
        return text
    return text.str.rsplit(separator, n=1).str[0] if text.str.contains(separator, regex=False).all() else text[:0]


def class_folders(folder: Folder) -> list[Decision] | None:
    for train in folder.subfolders():
        classes = [c for c in folder.subfolders(train) if folder.images_in(c)]
        if len(classes) >= 2:
            test = _test_folder(folder, exclude=train)
            return [
                Decision("data.layout", "class_folders", f"{train.name}/ has a folder of images per class"),
                Decision("data.train_dir", train.name, f"{len(classes)} class folders"),
                Decision("data.test_dir", test, "the other folder of images" if test else "no test images found"),
            ]
    return None


def filename_regex(folder: Folder) -> list[Decision] | None:
    for train in folder.subfolders():
        matches = [re.match(FILENAME_LABEL, p.stem) for p in folder.images_in(train)]
        labels = {m.group("label") for m in matches if m}
        if matches and all(matches) and 2 <= len(labels) <= len(matches) / 2:
            test = _test_folder(folder, exclude=train)
            return [
                Decision("data.layout", "filename_regex", f"{train.name}/ names each image <label>_<number>"),
                Decision("data.train_dir", train.name, f"{len(labels)} labels in {len(matches)} file names"),
                Decision("data.pattern", FILENAME_LABEL, "the label is the name before _<number>"),
                Decision("data.test_dir", test, "the other folder of images" if test else "no test images found"),
            ]
    return None


def _csv_names(train: str, test: str) -> list[Decision]:
    return [
        Decision("data.train_csv", train, "the CSV with the targets"),
        Decision("data.test_csv", test, "the CSV without them"),
    ]


def _id_reason(id_column: str | None, train: str, test: str) -> str:
    if id_column is None:
        return "no id column in both CSVs: ids are row numbers from 1"
    return f"the one column besides the pixels in both {train} and {test}"


def _pixel_string_column(frame: pd.DataFrame) -> str | None:
    for column in frame.columns:
        first = frame[column].dropna()
        tokens = str(first.iloc[0]).split() if first.dtype == object and len(first) else []
        # long run-length codes are numbers too: a column a task claims as its targets is not pixels
        if len(tokens) >= 16 and all(map(pixel_values.is_number, tokens)) and not claimed(frame, [column])[0]:
            return str(column)
    return None


def _resolves(folder: Folder, image_dir: Path, names: pd.Series) -> bool:
    files = folder.images_in(image_dir)
    known = {p.name for p in files} | {p.stem for p in files}
    return len(names) > 0 and names.isin(known).mean() >= 0.9


def _folder_of(folder: Folder, names: pd.Series) -> Path | None:
    """The folder, or a folder inside one (TGS: train/images), whose images the names name."""
    nested = [inner for d in folder.subfolders() for inner in [d, *folder.subfolders(d)]]
    return next((d for d in nested if _resolves(folder, d, names)), None)


def _mask_folder(folder: Folder, ids: pd.Series, image_dir: Path) -> str | None:
    """Another folder of images named by the training ids (or <id>_mask, as Carvana's): masks."""
    nested = [inner for d in folder.subfolders() for inner in [d, *folder.subfolders(d)]]
    for candidate in nested:
        stems = {p.stem.removesuffix("_mask") for p in folder.images_in(candidate)}
        if candidate != image_dir and len(ids) and ids.isin(stems).mean() >= 0.9:
            return _relative(folder, candidate)
    return None


def _relative(folder: Folder, path: Path) -> str:
    return path.relative_to(folder.root).as_posix()


def claimed(table: pd.DataFrame, columns: list) -> tuple[list[str], str, list[Decision]]:
    """The columns the first task to claim any takes as its targets (keypoints: x/y columns by
    their names; multi-label: 0/1 columns; segmentation: run-length codes), why, and the keys
    that task finds beside them (segmentation: the column naming the class of a row)."""
    for task in tasks.every():
        found = task.claim_columns(table, [str(c) for c in columns])
        if found:
            others = [str(c) for c in columns if str(c) not in found]
            keys = [Decision(*proposal) for proposal in task.keys_beside(table, found, others)]
            return found, f"{len(found)} {task.name} columns", keys
    return [], "", []


def _test_folder(folder: Folder, exclude: Path) -> str | None:
    with_images = [d.name for d in folder.subfolders() if d != exclude and folder.images_in(d)]
    return "test" if "test" in with_images else (with_images[0] if len(with_images) == 1 else None)


def _image_csv_decisions(
    folder: Folder, train: str, id_column: str, image_dir: Path, separator: str | None
) -> list[Decision]:
    frame = folder.tables[train]
    others = [
        (n, f)
        for n, f in folder.tables.items()
        if n != train and id_column in f.columns and not _answers(folder, f, frame)
    ]
    others.sort(key=lambda item: (not item[0].startswith("test"), len(item[1].columns)))  # test*.csv: ids only
    test = others[0][0] if others else None
    test_ids = folder.tables[test][id_column] if test else folder.csvs.get(folder.sample_submission, frame).iloc[:, 0]
    test_dir = _folder_of(folder, _images(test_ids, separator)) if test or folder.sample_submission else None
    shared = set(folder.tables[test].columns) if test else set()
    targets = [c for c in frame.columns if c != id_column and c not in shared]
    taken, why, beside = claimed(frame, targets)
    masks = _mask_folder(folder, _images(frame[id_column], separator), image_dir) if not taken else None
    if masks is not None:
        taken, why, beside = [], "", [Decision("data.mask_dir", masks, "a mask image per training id")]
    labels = folder.given.get("data.label_columns") or taken
    labels = labels or ([] if masks else [folder.pick(targets, "data.label_columns", train)])
    features = [c for c in frame.columns if c in shared and c != id_column and _feature(frame[c])]
    found = [Decision("data.feature_columns", features, f"in both {train} and {test}: tabular columns")]
    return [
        Decision("data.layout", "image_csv", f"{train}'s {id_column!r} column names the images in {image_dir.name}/"),
        Decision("data.train_csv", train, "the CSV with the targets"),
        Decision("data.test_csv", test, "the test ids" if test else "none: the test ids are the sample's first column"),
        Decision("data.id_column", id_column, "its values are image file names"),
        Decision("data.label_columns", labels, why or ("masks, not columns" if masks else "the one target column")),
        *beside,
        Decision("data.train_dir", _relative(folder, image_dir), "the training images"),
        Decision("data.test_dir", _relative(folder, test_dir) if test_dir else "test", "the images the test ids name"),
        *(found if features else []),
    ]


def _answers(folder: Folder, table: pd.DataFrame, train: pd.DataFrame) -> bool:
    """Whether a table holds answers rather than the test rows' columns: shaped as the sample
    submission (a solution file), or holding every column of the training table."""
    sample = folder.csvs.get(folder.sample_submission)
    shaped_as_sample = sample is not None and list(table.columns) == list(sample.columns)
    holds_targets = len(train.columns) > 1 and set(train.columns) <= set(table.columns)  # not ids alone
    return shaped_as_sample or holds_targets


def _feature(values: pd.Series) -> bool:
    """A tabular column rather than an identifier: numbers, or text that repeats."""
    return pd.api.types.is_numeric_dtype(values) or values.nunique() < len(values)


LAYOUTS: dict[str, Callable[[Folder], list[Decision] | None]] = {
    "pixel_columns": pixel_columns,
    "pixel_string": pixel_string,
    "image_csv": image_csv,
    "class_folders": class_folders,
    "filename_regex": filename_regex,
}


def detect_layout(folder: Folder) -> list[Decision]:
    tried = [folder.given["data.layout"]] if "data.layout" in folder.given else list(LAYOUTS)
    if unknown := [name for name in tried if name not in LAYOUTS]:
        raise PipelineError(f"init: data.layout={unknown[0]!r} is not a layout; one of {list(LAYOUTS)}")
    fits = {name: LAYOUTS[name](folder) for name in tried}
    fits = {name: decisions for name, decisions in fits.items() if decisions is not None}
    if "image_csv" in fits:  # a CSV that names the images says more than the file names do
        fits.pop("filename_regex", None)
    if len(fits) > 1:
        raise PipelineError(
            f"init: {folder.root} fits the layouts {sorted(fits)}; pick one: make init DIR=... ARGS=data.layout=..."
        )
    if not fits:
        raise PipelineError(
            f"init: {folder.root} fits none of the layouts {tried}: expected CSVs of pixels, "
            "a CSV naming image files, class folders, or <label>_<n> file names"
        )
    return next(iter(fits.values()))


def overlay(decisions: list[Decision], given: dict[str, object]) -> list[Decision]:
    """The decisions with the given keys' values in place of what was guessed, and added."""
    why = "given to `make init`"
    replaced = [Decision(d.key, given[d.key], why) if d.key in given else d for d in decisions]
    return replaced + [
        Decision(key, value, why) for key, value in given.items() if key not in {d.key for d in decisions}
    ]
