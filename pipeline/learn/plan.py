"""What the stages that train or read trained models share: the config with the defaults that
fit the data filled in and the tuned settings merged, the prepared data (images, targets, task
for every folds.csv row), the fold plan, and the fingerprint that ties a fit to the config and
folds it was trained on."""

import functools
import json

import numpy as np
import pandas as pd
import yaml

from pipeline import config as C
from pipeline import tasks
from pipeline.data import sources
from pipeline.data.images import FileSource, typical_side, uniform_side
from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.learn import defaults
from pipeline.learn.fit_setup import Setup
from pipeline.learn.loader import ConcatImages
from pipeline.learn.validation import read_folds
from pipeline.paths import Paths


def tuned_settings(cfg: C.Config, paths: Paths) -> dict:
    """The overrides `make tune` found (runs/<name>/<experiment>/tune/best.yaml, or
    train.tuned_from's) but those train.pinned names (the command line's keys among them); none
    before a search."""
    tuned = paths.tuned_yaml
    if not tuned.exists():
        if cfg.train.tuned_from:
            raise PipelineError(f"train.tuned_from={cfg.train.tuned_from}: {tuned} does not exist; run its `make tune`")
        return {}
    found = yaml.safe_load(tuned.read_text()) or {}
    merged = {k: v for k, v in found.items() if k not in cfg.train.pinned}
    kept = [f"{k}={functools.reduce(getattr, k.split('.'), cfg)}" for k in found if k in cfg.train.pinned]
    print(
        f"using the tuned settings in {tuned}: {', '.join(f'{k}={v}' for k, v in merged.items()) or 'none'}"
        + (f"; kept as train.pinned (or the command line) sets them: {', '.join(kept)}" if kept else "")
    )
    return merged


def recorded_sources(paths: Paths) -> dict[str, str]:
    try:
        return json.loads(paths.sources_json.read_text())
    except (OSError, ValueError):
        return {}


def sources_to_keep(paths: Paths, cfg: C.Config, decided: list) -> dict[str, str]:
    """The pretrained sources recorded, and the one just decided."""
    recorded = recorded_sources(paths)
    if any(d.key == "model.pretrained" for d in decided) and cfg.model.name not in recorded:
        return {**recorded, cfg.model.name: cfg.model.pretrained}
    return recorded


def record_sources(paths: Paths, setup: Setup) -> None:
    """`setup.sources`, kept for the runs after this one."""
    if setup.sources != recorded_sources(paths):
        write_text(paths.sources_json, json.dumps(setup.sources))


def given_keys(cfg: C.Config) -> set[str]:
    """The dotted keys the config file and its overrides set (the rest are defaults)."""
    return {f"{name}.{key}" for name in type(cfg).model_fields for key in getattr(cfg, name).model_fields_set}


def fold_ids_of(cfg: C.Config, folds: pd.DataFrame) -> list[int]:
    """train.folds, or every fold of folds.csv (-1 marks extra rows that are never validated on)."""
    return cfg.train.folds if cfg.train.folds is not None else sorted(int(f) for f in folds["fold"].unique() if f >= 0)


def channels(cfg: C.Config) -> int:
    return 1 if cfg.data.layout in ("pixel_columns", "pixel_string") else cfg.data.channels


def prepare(cfg: C.Config, paths: Paths, *, tuned: bool = True, record: bool = True) -> tuple[Setup, pd.DataFrame]:
    """The images, targets and task for every row of folds.csv, in its order, and the config
    they train with (Setup.cfg): its unset keys decided from the data, then (`tuned`) the
    settings `make tune` found merged. `record`: the pretrained source decided is written now,
    else by the caller once its checks pass (record_sources)."""
    folds = read_folds(paths.folds_csv)
    data = sources.read(cfg)
    store = sources.open_split(cfg, data.train.images, paths.cache("train"), defaults.working_side(cfg))
    position = {str(i): n for n, i in enumerate(data.train.table["id"])}
    competition = folds["fold"] >= 0
    missing = [i for i in folds.loc[competition, "id"] if i not in position]
    if missing:
        raise PipelineError(f"{paths.folds_csv}: id {missing[0]!r} is not in the train table; run `make folds` again")
    rows = folds.loc[competition, "id"].map(position).to_numpy()
    images = store
    if (~competition).any():
        extra = FileSource(tuple(paths.data / p for p in folds.loc[~competition, "id"]), channels(cfg))
        images = ConcatImages([store, sources.open_split(cfg, extra, paths.cache("extra"), defaults.working_side(cfg))])
        rows = np.concatenate([rows, len(store) + np.arange(int((~competition).sum()))])
    facts = defaults.Facts(
        task=cfg.competition.task,
        rows=int(competition.sum()),
        side=typical_side(store),
        channels=channels(cfg),
        n_folds=folds.loc[competition, "fold"].nunique(),
        targets=tuple(data.targets),
        recorded_sources=tuple(recorded_sources(paths).items()),
    )
    given = given_keys(cfg)
    cfg, decided = defaults.resolve(cfg, facts)
    pretrained_sources = sources_to_keep(paths, cfg, decided)
    print("\n".join(defaults.describe(decided)) if decided else "defaults: every key is set", flush=True)
    settings = tuned_settings(cfg, paths) if tuned else {}
    if settings:
        cfg = C.with_overrides(cfg, settings, str(paths.tuned_yaml))
    task = tasks.get(cfg.competition.task).of_data(cfg, data.train.table, data.targets)
    targets = task.encode(folds, data.targets)
    size = cfg.model.image_size or uniform_side(store)
    if size is None:
        raise PipelineError("model.image_size is not set and the competition's images differ in size: set it")
    given = frozenset(given | set(settings))
    setup = Setup(cfg, task, images, rows, targets, channels(cfg), size, given, sources=pretrained_sources)
    if record:
        record_sources(paths, setup)
    return setup, folds
