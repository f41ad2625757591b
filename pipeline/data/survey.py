"""`make init DIR`: what a competition folder holds, and the config that reads it.

The layout, the task, the id and label columns, the image sizes and channels, the sample
submission's format and the class balance are decided from the files, each with the reason,
and written to configs/<name>.yaml with the reason as the value's comment. The config is read
back with the competition's own reader before it is written. A folder that two layouts fit, or
with two candidate label columns, is refused in one line naming the candidates and the key to
set; an existing config is never overwritten.
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pipeline import config as C
from pipeline import tasks
from pipeline.data import sources
from pipeline.data.images import DECODE_ERRORS, ArraySource
from pipeline.errors import PipelineError
from pipeline.files import write_text

PIXEL_COLUMN = re.compile(r"^pixel\d+$")
FILENAME_LABEL = r"^(?P<label>.+)_\d+$"
SAMPLE_SUBMISSION = re.compile(r"sample.*submission.*\.csv$", re.IGNORECASE)
SAMPLED_IMAGES = 200  # images opened to learn sizes and channels
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")  # what may end a YAML comment, and other controls
FAST_FIRST_PIXELS = 20_000 * 160**2  # more training pixels than this: a fast first run on a CPU
CPU_BUDGET, GPU_BUDGET = "20m", "2h"  # a first run's train.time_budget


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


# --- layouts: each returns its decisions, or None when it does not fit the folder ---------------


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
    train = next((n for n, f in with_strings.items() if claimed(list(f.columns))[0]), None)
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
        if folder.given.get("data.train_csv", name) != name or len(frame.columns) < 2:
            continue
        columns = [str(c) for c in frame.columns if folder.given.get("data.id_column", c) == c]
        naming = ((c, _folder_of(folder, frame[c].astype(str))) for c in columns)
        if found := next(((c, d) for c, d in naming if d is not None), None):
            fits[name] = found
    if not fits:
        return None
    likely = [n for n in fits if n.startswith("train")] or list(fits)
    train = folder.pick(likely, "data.train_csv", f"{folder.root} (CSVs naming the images, with columns beside)")
    return _image_csv_decisions(folder, train, *fits[train])


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


LAYOUTS: dict[str, Callable[[Folder], list[Decision] | None]] = {
    "pixel_columns": pixel_columns,
    "pixel_string": pixel_string,
    "image_csv": image_csv,
    "class_folders": class_folders,
    "filename_regex": filename_regex,
}


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
        if len(tokens) >= 16 and all(map(sources.is_number, tokens)):
            return str(column)
    return None


def _resolves(folder: Folder, image_dir: Path, names: pd.Series) -> bool:
    files = folder.images_in(image_dir)
    known = {p.name for p in files} | {p.stem for p in files}
    return len(names) > 0 and names.isin(known).mean() >= 0.9


def _folder_of(folder: Folder, names: pd.Series) -> Path | None:
    return next((d for d in folder.subfolders() if _resolves(folder, d, names)), None)


def claimed(columns: list) -> tuple[list[str], str]:
    """The columns the first task to claim any takes as its targets (keypoints: x/y columns), and why."""
    for task in tasks.every():
        found = task.claim_columns([str(c) for c in columns])
        if found:
            return found, f"{task.name} columns, by their names"
    return [], ""


def _test_folder(folder: Folder, exclude: Path) -> str | None:
    with_images = [d.name for d in folder.subfolders() if d != exclude and folder.images_in(d)]
    return "test" if "test" in with_images else (with_images[0] if len(with_images) == 1 else None)


def _image_csv_decisions(folder: Folder, train: str, id_column: str, image_dir: Path) -> list[Decision]:
    frame = folder.tables[train]
    others = [(n, f) for n, f in folder.tables.items() if n != train and id_column in f.columns]
    others.sort(key=lambda item: (not item[0].startswith("test"), len(item[1].columns)))  # test*.csv: ids only
    test = others[0][0] if others else None
    test_ids = folder.tables[test][id_column] if test else folder.csvs.get(folder.sample_submission, frame).iloc[:, 0]
    test_dir = _folder_of(folder, test_ids.astype(str)) if test or folder.sample_submission else None
    shared = set(folder.tables[test].columns) if test else set()
    targets = [c for c in frame.columns if c != id_column and c not in shared]
    coordinates, why = claimed(targets)
    labels = (
        folder.given.get("data.label_columns") or coordinates or [folder.pick(targets, "data.label_columns", train)]
    )
    return [
        Decision("data.layout", "image_csv", f"{train}'s {id_column!r} column names the images in {image_dir.name}/"),
        Decision("data.train_csv", train, "the CSV with the targets"),
        Decision("data.test_csv", test, "the test ids" if test else "none: the test ids are the sample's first column"),
        Decision("data.id_column", id_column, "its values are image file names"),
        Decision("data.label_columns", labels, why or "the one target column"),
        Decision("data.train_dir", image_dir.name, "the training images"),
        Decision("data.test_dir", test_dir.name if test_dir else "test", "the images the test ids name"),
    ]


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


# --- the survey ----------------------------------------------------------------------------------


@dataclass
class Survey:
    name: str
    decisions: list[Decision]
    found: list[str]  # what it printed: rows, classes or points, sizes, preset

    def raw(self) -> dict:
        raw: dict = {}
        for d in self.decisions:
            section, key = d.key.split(".")
            raw.setdefault(section, {})[key] = d.value
        return raw


def task_of(layout: list[Decision]) -> Decision:
    """The first task, in the registry's order, that takes the competition for its own."""
    values = {d.key: d.value for d in layout}
    labels = values.get("data.label_columns", [])
    for task in tasks.every():
        why = task.detect(values["data.layout"], labels)
        if why is not None:
            return Decision("competition.task", task.name, why)
    raise PipelineError(f"init: no task takes label columns {labels}; set competition.task=<task>")


@dataclass(frozen=True)
class Pictures:
    channels: Decision | None  # file layouts only: pixel layouts are grayscale
    sizes: str  # "64x64", or "12 sizes, most often 500x375"
    kind: str  # grayscale or colour
    side: int  # the median longer side


def images_of(data: sources.CompetitionData) -> Pictures:
    images = data.train.images
    if isinstance(images, ArraySource):
        height, width = images.images.shape[1:3]
        return Pictures(None, f"{width}x{height}", "grayscale", max(height, width))
    picks = np.linspace(0, len(images) - 1, min(SAMPLED_IMAGES, len(images))).astype(int)
    sizes, gray = [], True
    for i in picks:
        try:
            with Image.open(images.paths[i]) as image:
                sizes.append(image.size)
                gray = gray and _is_gray(image)
        except DECODE_ERRORS as exc:
            raise PipelineError(f"init: image file {images.paths[i]} cannot be decoded: {exc}") from None
    named = pd.Series([f"{w}x{h}" for w, h in sizes])
    described = named.iloc[0] if named.nunique() == 1 else f"{named.nunique()} sizes, most often {named.mode()[0]}"
    why = f"all {len(sizes)} images looked at are gray" if gray else "colour images"
    side = int(np.median([max(size) for size in sizes]))
    return Pictures(
        Decision("data.channels", 1 if gray else 3, why), described, "grayscale" if gray else "colour", side
    )


def machine_budget() -> tuple[Decision, bool]:
    """train.time_budget for a first run on this machine, and whether it has a GPU."""
    import torch

    if torch.cuda.is_available():
        why = (
            f"one GPU here ({torch.cuda.get_device_name(0)}): the folds and the full fit planned into "
            f"{GPU_BUDGET}; more time buys epochs, fewer trades"
        )
        return Decision("train.time_budget", GPU_BUDGET, why), True
    why = (
        f"no GPU here, {os.cpu_count() or 1} CPU cores: the folds and the full fit planned into {CPU_BUDGET}, "
        "trading image side and folds when they do not fit; raise it for more"
    )
    return Decision("train.time_budget", CPU_BUDGET, why), False


def suggested_preset(rows: int, side: int, *, gpu: bool = False) -> Decision:
    if gpu:
        return Decision("train.preset", "medium", "a GPU: medium, the time budget trades what does not fit")
    if rows * min(side, 256) ** 2 > FAST_FIRST_PIXELS:
        return Decision("train.preset", "fast", f"{rows} images of {side} px: a fast first run, then medium")
    return Decision("train.preset", "medium", f"{rows} images of {side} px: medium fits a first run")


def _is_gray(image: Image.Image) -> bool:
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool(np.abs(pixels - pixels[..., :1]).max() <= 2)


def sample_format(folder: Folder, task: str, data: sources.CompetitionData) -> Decision | None:
    name = folder.sample_submission
    if name is None:
        return None
    columns = [str(c) for c in folder.csvs[name].columns]
    value, why = tasks.get(task).sample_format(columns, data.train.table, data.targets)
    return Decision("predict.format", value, f"{name}: {why}")


def survey(root: Path, name: str | None = None, given: dict[str, object] | None = None) -> Survey:
    given = checked_keys(given or {})
    folder = Folder.read(root, given)
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name).strip("-.") or "competition"
    layout = detect_layout(folder)
    task = task_of(overlay(layout, given))
    decisions = [
        Decision("competition.name", name, "the folder's name"),
        task,
        layout[0],
        Decision("data.dir", str(root), "the folder surveyed"),
        *layout[1:],  # None included: a test CSV or lookup table that is not there is not the default's
    ]
    sample = folder.sample_submission
    decisions.append(Decision("data.sample_submission", sample, "its file name" if sample else "none found"))
    decisions = overlay(decisions, given)
    task = next(d for d in decisions if d.key == "competition.task")
    data = sources.read(C.validate(Survey(name, decisions, []).raw(), f"init {root}"))
    pictures = images_of(data)
    decisions += [pictures.channels] if pictures.channels else []
    decisions += [d for d in [sample_format(folder, task.value, data)] if d]
    budget, gpu = machine_budget()
    preset = suggested_preset(len(data.train.table), pictures.side, gpu=gpu)
    decisions = overlay([*decisions, preset, budget], given)
    final = {d.key: d.value for d in decisions}
    rows = f"{len(data.train.table)} training rows, {len(data.test.table)} test rows"
    found = [
        rows,
        tasks.get(task.value).describe_targets(data.train.table, data.targets),
        f"images: {pictures.sizes}, {pictures.kind}",
        f"preset: {final['train.preset']}",
        f"time budget: {final['train.time_budget']}",
    ]
    return Survey(name, decisions, found)


# --- the config file ---------------------------------------------------------------------------


def render(result: Survey, source: Path) -> str:
    """The config, each value written by the YAML emitter and each reason as a comment."""
    lines = [
        comment(f"{result.name}: written by `make init DIR={source}`; each value says why it was chosen."),
        comment("Keys left out take the defaults that fit the data (printed by `make train`)."),
        *map(comment, result.found),
    ]
    for section, keys in result.raw().items():
        lines.append(f"\n{section}:")
        for key, value in keys.items():
            why = next(d.why for d in result.decisions if d.key == f"{section}.{key}")
            text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()[1:-1]
            lines.append(f"  {text}  {comment(why)}")
    return "\n".join(lines) + "\n"


def comment(text: str) -> str:
    """`text` as one YAML comment: a name with a line break in it must not end the comment and
    write live keys (a folder named "tr\nscrape: {allow_private_addresses: true}" would)."""
    return "# " + UNPRINTABLE.sub(lambda found: repr(found[0])[1:-1], text)


def parsed_back(result: Survey, text: str, root: Path) -> dict:
    """The written config read back, refused unless it holds exactly the decisions."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = None
    if loaded != yaml.safe_load(yaml.safe_dump(result.raw())):
        raise PipelineError(f"init: a file or folder name under {root} does not survive YAML; rename it")
    return loaded


def checked_keys(given: dict[str, object]) -> dict[str, object]:
    """The keys given to init, each a section.key of the config."""
    for key in given:
        section, _, leaf = key.partition(".")
        if not leaf or "." in leaf:
            raise PipelineError(f"init: {key!r} is not a section.key; init takes keys of one section each")
    return given


def run(root: Path, output: Path | None = None, name: str | None = None, given: dict | None = None) -> Path:
    result = survey(root, name, given)
    output = output or Path("configs") / f"{result.name}.yaml"
    if output.exists():
        raise PipelineError(f"init: {output} exists; init never overwrites a config (remove it or pass -o)")
    text = render(result, root)
    C.validate(parsed_back(result, text, root), f"init {root}")
    write_text(output, text)
    print(f"init: {root}: " + "; ".join(result.found))
    print(f"init: wrote {output}")
    return output
