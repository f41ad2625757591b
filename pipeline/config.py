"""The competition config: one YAML, one pydantic model per section, unknown keys rejected.

`load(path, overrides)` is the only way in; every error it raises names the key. The sections
are defined in config_section (what they share), config_data and config_training; this module
is their one public face.
"""

import hashlib
import re
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline import tasks
from pipeline.augment import aug_ops
from pipeline.config_data import (
    IMAGE_EXTENSIONS,
    ClassFolders,
    FileLayout,
    FilenameRegex,
    Folds,
    ImageCsv,
    Layout,
    LayoutBase,
    PixelColumns,
    PixelLayout,
    PixelString,
    Scrape,
    ScrapeSource,
)
from pipeline.config_section import (
    KeyValueError,
    Section,
    seconds,
)
from pipeline.config_training import (
    Aug,
    AugSettings,
    Average,
    Blend,
    Distill,
    FinalSize,
    Model,
    Package,
    Param,
    Predict,
    PseudoLabels,
    Train,
    Tune,
)
from pipeline.errors import PipelineError

# the config's API: the sections are defined beside it (config_section, config_data, config_training)
__all__ = [
    "Aug",
    "AugSettings",
    "Average",
    "Blend",
    "ClassFolders",
    "Competition",
    "Config",
    "FileLayout",
    "FilenameRegex",
    "Distill",
    "FinalSize",
    "PseudoLabels",
    "Folds",
    "IDENTITY_KEYS",
    "IMAGE_EXTENSIONS",
    "ImageCsv",
    "Layout",
    "LayoutBase",
    "Model",
    "Package",
    "Param",
    "PixelColumns",
    "PixelLayout",
    "PixelString",
    "Predict",
    "Scrape",
    "ScrapeSource",
    "Section",
    "Train",
    "Tune",
    "load",
    "parse_override",
    "save_given",
    "save_resolved",
    "seconds",
    "validate",
    "with_overrides",
]


class Competition(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    task: str  # a module of pipeline/tasks: classification, keypoints (or one registered)
    kaggle: str | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        try:
            tasks.get(task)
        except PipelineError as exc:
            raise ValueError(str(exc).partition("; ")[2]) from None
        return task


class Config(Section):
    competition: Competition
    data: Layout
    folds: Folds = Folds()
    model: Model = Model()
    train: Train = Train()
    aug: Aug = Aug()
    tune: Tune = Tune()
    predict: Predict = Predict()
    blend: Blend = Blend()
    scrape: Scrape = Scrape()
    package: Package = Package()

    @model_validator(mode="after")
    def _fill_derived_defaults(self) -> "Config":
        demo_layout = {"digits": "pixel_columns", "hands": "image_csv"}.get(self.data.demo, self.data.layout)
        if self.data.layout != demo_layout:
            raise ValueError(
                f"data.demo={self.data.demo} builds a {demo_layout} folder; it needs data.layout={demo_layout}"
            )
        if self.data.dir is None:
            self.data.dir = Path("data") / self.competition.name
        task = tasks.get(self.competition.task)
        task.check(self)
        for op in aug_ops.enabled(self.aug):
            if op.crops and not task.crops:
                names = " and ".join(f"aug.{k.name}" for k in op.keys)
                raise ValueError(f"{names} may cut the targets out of the image, which {task.name} cannot have")
        self.folds.kind = task.fold_kind_of(self.folds.kind)
        if self.train.experiment is None:
            self.train.experiment = self.competition.name
        for key in self.train.pinned:
            section, _, rest = key.partition(".")
            fields = type(getattr(self, section)).model_fields if section in type(self).model_fields else {}
            if rest.split(".")[0] not in fields:
                raise ValueError(f"train.pinned: {key!r} is not a config key (section.key)")
        for key, ids in (("train.folds", self.train.folds), ("tune.folds", self.tune.folds)):
            if ids and max(ids) >= self.folds.n_splits:
                raise ValueError(
                    f"{key}={ids}: fold {max(ids)} does not exist; folds.n_splits={self.folds.n_splits} "
                    f"makes folds 0 to {self.folds.n_splits - 1}"
                )
        return self

    @property
    def runs_dir(self) -> Path:
        return Path("runs") / self.competition.name

    def to_yaml(self, sections: tuple[str, ...] | None = None) -> str:
        data = self.model_dump(mode="json", include=set(sections) if sections else None)
        return yaml.safe_dump(data, sort_keys=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:12]


IDENTITY_KEYS = ("train.experiment", "train.tuned_from", "train.pinned")  # which experiment it is, not how it trains


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read the YAML at `path`, apply dotted `key=value` overrides, validate. The keys the
    overrides name (but IDENTITY_KEYS) join train.pinned: the tuned settings never replace them."""
    path = Path(path)
    raw = _read_yaml(path)
    for item in overrides:
        _apply_override(raw, item)
    if isinstance(raw.get("train", {}), dict):
        train = raw.setdefault("train", {})
        train.setdefault("experiment", re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-._") or "experiment")
        named = [key for key in (item.partition("=")[0] for item in overrides) if key not in IDENTITY_KEYS]
        if named and isinstance(train.get("pinned", []), list):
            train["pinned"] = list(dict.fromkeys([*train.get("pinned", []), *named]))
    source = f"{path}" + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return validate(raw, source)


def validate(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{source}: {_describe(exc.errors()[0])}") from None


def with_overrides(cfg: Config, overrides: dict, source: str) -> Config:
    """`cfg` with dotted `key: value` overrides applied, validated again; errors name `source`."""
    raw = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        _set_dotted(raw, key, value, f"{source}: {key}")
    return validate(raw, source)


def save_resolved(cfg: Config, path: Path) -> None:
    from pipeline.files import write_text

    write_text(path, cfg.to_yaml())


def save_given(cfg: Config, path: Path) -> None:
    """Only the keys the config and its overrides set: a process started on this file decides
    the unset keys from the data exactly as this one does."""
    from pipeline.files import write_text

    given = cfg.model_dump(mode="json", exclude_unset=True)
    given.setdefault("train", {})["experiment"] = cfg.train.experiment  # not the saved file's stem
    write_text(path, yaml.safe_dump(given, sort_keys=False))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise PipelineError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#x} on line {line}): save it as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """`section.key=value` -> (dotted key, the value as YAML reads it)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise PipelineError(f"override {item!r} must look like section.key=value")
    if key in Config.model_fields:
        raise PipelineError(f"override {item!r} would replace the section {key!r}: set its keys, as {key}.<key>=value")
    try:
        return key, yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return key, text


def _apply_override(raw: dict, item: str) -> None:
    key, value = parse_override(item)
    _set_dotted(raw, key, value, f"override {item!r}")


def _set_dotted(raw: dict, key: str, value, where: str) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PipelineError(f"{where}: {part!r} is not a section")
        node = child
    node[leaf] = value


def _describe(error: dict) -> str:
    key, owner = _resolve(error["loc"])
    error_type, ctx = error["type"], error.get("ctx", {})
    if error_type == "extra_forbidden":
        parent, _, _ = key.rpartition(".")
        where = f"under '{parent}'" if parent else "at the top level"
        return f"unknown key '{key}'; allowed {where}: {', '.join(owner.model_fields) if owner else 'none'}"
    if error_type == "missing":
        return f"key '{key}' is required"
    if error_type == "union_tag_invalid":
        return f"key '{key}.layout' = {ctx['tag']!r} is not a known layout; expected one of {ctx['expected_tags']}"
    if error_type == "union_tag_not_found":
        return f"key '{key}.layout' is required; it names the competition's file layout"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(ctx.get("error"), KeyValueError):
        found = ctx["error"]
        return f"key '{key}.{found.key}' = {found.value!r}: {found}"
    return f"key '{key}' = {error['input']!r}: {message}" if key else message


def _resolve(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """The user's dotted key for a pydantic error location, and the model that owns its last part.

    pydantic puts the chosen union tag in the location, ('data', 'pixel_columns', 'x'): it is
    skipped, so the key reads 'data.x' as written in the YAML.
    """
    candidates: list[type[BaseModel]] = [Config]
    path: list[str] = []
    owner = None
    for part in loc:
        tagged = [c for c in candidates if part in _literal_values(c, "layout")]
        if len(candidates) > 1 and tagged:
            candidates = tagged
            continue
        path.append(str(part))
        if isinstance(part, int):
            continue
        owner = candidates[0] if len(candidates) == 1 else None
        field = owner.model_fields.get(part) if owner else None
        candidates = _models_in(field.annotation) if field else []
    return ".".join(path), owner


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _literal_values(model: type[BaseModel], field: str) -> tuple:
    info = model.model_fields.get(field)
    return typing.get_args(info.annotation) if info else ()
