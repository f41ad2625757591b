"""What a competition folder holds, as `make init DIR` surveys it: the layout
(data.layout_detection), the task, the id and label columns, the image sizes and channels, the
sample submission's format, the class balance and a first run's preset and time budget, each
decided from the files with its reason. The init stage writes it as a config."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import config as C
from pipeline import tasks
from pipeline.data import sources
from pipeline.data.images import DECODE_ERRORS, ArraySource
from pipeline.data.layout_detection import (
    Decision,
    Folder,
    detect_layout,
    overlay,
)
from pipeline.errors import PipelineError

SAMPLED_IMAGES = 200  # images opened to learn sizes and channels
FAST_FIRST_PIXELS = 20_000 * 160**2  # more training pixels than this: a fast first run on a CPU
CPU_BUDGET, GPU_BUDGET = "20m", "2h"  # a first run's train.time_budget


# --- layouts: each returns its decisions, or None when it does not fit the folder ---------------


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


def task_of(layout: list[Decision], folder: Folder) -> Decision:
    """The first task, in the registry's order, that takes the competition for its own."""
    values = {d.key: d.value for d in layout}
    labels = values.get("data.label_columns", [])
    table = folder.tables.get(values.get("data.train_csv"))
    if values.get("data.mask_dir"):
        task = next(t for t in tasks.every() if t.reads_masks)
        return Decision("competition.task", task.name, f"mask images in {values['data.mask_dir']}/")
    for task in tasks.every():
        why = task.detect(values["data.layout"], labels, table)
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
    task = task_of(overlay(layout, given), folder)
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


def checked_keys(given: dict[str, object]) -> dict[str, object]:
    """The keys given to init, each a section.key of the config."""
    for key in given:
        section, _, leaf = key.partition(".")
        if not leaf or "." in leaf:
            raise PipelineError(f"init: {key!r} is not a section.key; init takes keys of one section each")
    return given
