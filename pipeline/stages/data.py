"""The data stage: build the demo if asked, then read, verify and cache the competition's images."""

from collections.abc import Sequence

import numpy as np

from pipeline import tasks
from pipeline.config import Config, save_resolved
from pipeline.data import inputs, sources
from pipeline.data.cells import build_cells
from pipeline.data.digits import build_digits
from pipeline.data.hands import build_hands
from pipeline.data.images import CachedImages
from pipeline.errors import PipelineError
from pipeline.kaggle import kaggle_cli
from pipeline.learn.defaults import working_side
from pipeline.paths import Paths

DEMOS = {"digits": build_digits, "hands": build_hands, "cells": build_cells}


def run(cfg: Config) -> None:
    paths = Paths.of(cfg)
    if cfg.data.demo != "none" and not (paths.data / cfg.data.train_csv).exists():
        print(f"building the {cfg.data.demo} demo competition in {paths.data}")
        DEMOS[cfg.data.demo](paths.data)
    elif cfg.competition.kaggle and not (paths.data.is_dir() and any(paths.data.iterdir())):
        print(f"downloading {cfg.competition.kaggle} with the Kaggle CLI into {paths.data}")
        kaggle_cli.download(cfg.competition.kaggle, paths.data)
    if not paths.data.is_dir():
        raise PipelineError(
            f"competition folder {paths.data} does not exist: put the competition's files there "
            "(or set competition.kaggle to download them, or data.dir)"
        )
    data = sources.read(cfg)
    shapes, opened, task = {}, {}, tasks.get(cfg.competition.task)
    for name, split in (("train", data.train), ("test", data.test)):
        opened[name] = sources.open_split(cfg, split.images, paths.cache(name), working_side(cfg))
        shapes[name] = describe_shapes(opened[name])
    source = data.train.table.attrs.get("source", "train table")
    task.check_sizes(data.train.table, data.targets, opened["train"].original_sizes, source)
    inputs.refresh(paths)  # what was built or downloaded here is what the stage read
    save_resolved(cfg, paths.resolved("data"))
    targets = task.describe_targets(data.train.table, data.targets)
    print(
        f"data {cfg.competition.name}: {len(data.train.table)} train rows ({shapes['train']}), "
        f"{len(data.test.table)} test rows ({shapes['test']}); {targets}"
    )


def describe_shapes(images: Sequence) -> str:
    """The images' sizes in their files (H x W x C), and how they are held for training."""
    if len(images) == 0:
        return "no images"
    sizes = images.original_sizes
    channels = np.asarray(images[0]).shape[-1]
    low, high = (f"{h}x{w}x{channels}" for h, w in (sizes.min(axis=0), sizes.max(axis=0)))
    size = low if low == high else f"{low} to {high}"
    if isinstance(images, CachedImages):
        return f"{size}, cached" + (f" at a shorter side of {images.side} px" if images.side else "")
    return f"{size}, decoded lazily"
