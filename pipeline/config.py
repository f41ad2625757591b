"""The competition config: one YAML, one pydantic model per section, unknown keys rejected.

`load(path, overrides)` is the only way in; every error it raises names the key.
"""

import hashlib
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline import tasks
from pipeline.augment import aug_ops
from pipeline.errors import PipelineError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm", ".dicom")


class KeyValueError(ValueError):
    """A section-level check's finding about one of its keys, reported as that key's error."""

    def __init__(self, key: str, value: Any, rule: str):
        super().__init__(rule)
        self.key, self.value = key, value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, raw: Any) -> Any:
        """pydantic reads true as 1: a boolean is refused where the key takes none."""
        for key, value in raw.items() if isinstance(raw, dict) else ():
            given = value if isinstance(value, list) else [value]
            field = cls.model_fields.get(key)
            if field and any(isinstance(v, bool) for v in given) and not _takes_booleans(field):
                raise KeyValueError(key, value, "a boolean is given where a number or a word belongs")
        return raw


def _takes_booleans(field) -> bool:
    return OnOff in field.metadata or _names_bool(field.annotation)


def _names_bool(annotation: Any) -> bool:
    if annotation in (bool, Any):
        return True
    return any(_names_bool(arg) for arg in typing.get_args(annotation) if not isinstance(arg, str))


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


class LayoutBase(Section):
    dir: Path | None = None  # default data/<competition.name>
    # `make data` builds a demo competition here: MNIST digits (pixel_columns) or hands (image_csv)
    demo: Literal["none", "digits", "hands"] = "none"
    use_extra: bool = True  # scraped images join training with fold -1
    cache: Literal["auto", "always", "never"] = "auto"
    cache_limit_gb: PositiveFloat = 4.0  # "auto" caches decoded images up to this size
    sample_submission: str | None = None
    solution: str | None = None  # held-out answers (the demo has them): `make score` reads only this


class PixelLayout(LayoutBase):
    image_shape: tuple[PositiveInt, PositiveInt] | None = None  # (height, width); inferred when square
    pixel_max: Literal["auto"] | PositiveFloat = "auto"  # inferred as 1, 16 or 255


class PixelColumns(PixelLayout):
    layout: Literal["pixel_columns"]
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    sample_submission: str | None = "sample_submission.csv"
    label_column: str = "label"
    id_column: str | None = None  # None: ids are 1-based row numbers, as Digit Recognizer's ImageId
    pixel_prefix: str = "pixel"


class PixelString(PixelLayout):
    layout: Literal["pixel_string"]
    train_csv: str = "training.csv"
    test_csv: str = "test.csv"
    sample_submission: str | None = "SampleSubmission.csv"
    lookup_table: str | None = "IdLookupTable.csv"
    image_column: str = "Image"
    id_column: str = "ImageId"  # of the test CSV; train rows are numbered from 1
    keypoint_columns: list[str] | None = None  # None: every column ending in _x or _y


class FileLayout(LayoutBase):
    channels: Literal[1, 3] = 3
    extensions: list[str] = list(IMAGE_EXTENSIONS)
    # DICOM files' (center, width) in modality units, e.g. [40, 80] for a CT brain window;
    # None: each file's own window, else its own range
    dicom_window: tuple[float, Annotated[float, Field(ge=1.0)]] | None = None

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, extensions: list[str]) -> list[str]:
        return ["." + e.lower().lstrip(".") for e in extensions]


class ImageCsv(FileLayout):
    layout: Literal["image_csv"]
    train_csv: str = "train.csv"
    test_csv: str | None = "test.csv"  # None: test ids are the sample submission's first column
    sample_submission: str | None = "sample_submission.csv"
    id_column: str = "id"
    label_columns: list[str] = ["label"]
    train_dir: str = "train"
    test_dir: str = "test"
    image_ext: str | None = None  # None: found among `extensions`


class ClassFolders(FileLayout):
    layout: Literal["class_folders"]
    train_dir: str = "train"
    test_dir: str | None = "test"
    sample_submission: str | None = "sample_submission.csv"


class FilenameRegex(FileLayout):
    layout: Literal["filename_regex"]
    train_dir: str = "images"
    test_dir: str | None = None
    pattern: str = r"^(?P<label>.+)_\d+$"  # matched against the file stem; needs a `label` group

    @field_validator("pattern")
    @classmethod
    def _has_label_group(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if "label" not in compiled.groupindex:
            raise ValueError("needs a named group (?P<label>...) for the class")
        return pattern


Layout = Annotated[
    Union[PixelColumns, PixelString, ImageCsv, ClassFolders, FilenameRegex],  # noqa: UP007
    Field(discriminator="layout"),
]


class Folds(Section):
    n_splits: Annotated[int, Field(ge=2)] = 5
    kind: Literal["auto", "stratified", "group", "stratified_binned", "multilabel", "kfold"] = "auto"
    seed: int = 42
    group_column: str | None = None  # for kind=group
    stratify_on: str = "missing_pattern"  # stratified_binned: missing_pattern, target_mean or a column
    n_bins: Annotated[int, Field(ge=2)] = 5


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


def _words_for_yaml_booleans(value: Any) -> Any:
    """YAML reads a bare on/off (in a file or in `key=value`) as true/false: give the words back."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


OnOff = BeforeValidator(_words_for_yaml_booleans)


def _distinct(ids: list[int] | None) -> list[int] | None:
    if ids is not None and not ids:
        raise ValueError("names no fold; leave it unset for every fold")
    if ids is not None and len(set(ids)) < len(ids):
        raise ValueError("names a fold twice; each fold counts once in the CV")
    return ids


FoldIds = Annotated[list[Annotated[int, Field(ge=0)]] | None, AfterValidator(_distinct)]


MIN_IMAGE_SIZE = 16


def _image_size(side: int | None) -> int | None:
    if side is not None and side < MIN_IMAGE_SIZE:
        raise ValueError(
            f"a side of at least {MIN_IMAGE_SIZE} pixels: a backbone divides it by 32 (smaller images are upscaled"
            " by model.image_size, not shrunk)"
        )
    return side


class Model(Section):
    name: str = "resnet18"  # any timm model
    pretrained: Annotated[str, Field(pattern=r"^(none|hub|efficientnet_lite0|file:.+)$")] = "none"
    # None: the competition's own image size; at least MIN_IMAGE_SIZE
    image_size: Annotated[int | None, AfterValidator(_image_size)] = None
    freeze_depth: Annotated[int, Field(ge=0)] = 0  # backbone stages frozen, counted from the stem
    freeze_blocks: Annotated[int, Field(ge=0)] = 0  # and this many blocks of the next stage
    unfreeze_epoch: PositiveInt | None = None  # unfreeze everything from this epoch (1-based)
    drop_rate: Probability = 0.0
    drop_path_rate: Probability = 0.0
    zero_init_last: bool = True  # zero gamma of the last BN in residual blocks, where timm supports it
    head_activation: Literal["none", "tanh"] = "none"  # keypoints: tanh keeps outputs in [-1, 1]


def seconds(duration: str | int | float) -> float:
    """ "8h", "30m", "90s" or a number of seconds -> seconds, more than none ("-5m" used to "fit")."""
    text = str(duration).strip().lower()
    units = {"h": 3600, "m": 60, "s": 1}
    try:
        counted = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        counted = math.nan
    if not 0 < counted < math.inf:
        raise ValueError(f"{duration!r} is not a duration like 8h, 30m, 90s: a finite time above zero")
    return counted


def _is_duration(duration: str | float | None) -> str | float | None:
    if duration is not None:
        seconds(duration)
    return duration


Duration = Annotated[str | float | None, AfterValidator(_is_duration)]  # "8h", "30m", "90s" or seconds


RESERVED_EXPERIMENTS = ("cache", "report", "blends")  # folders the competition's experiments share


def _experiment_name(name: str | None) -> str | None:
    if name is not None and name in RESERVED_EXPERIMENTS:
        raise ValueError(f"{name!r} names a folder the experiments share; reserved: {', '.join(RESERVED_EXPERIMENTS)}")
    return name


ExperimentName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"), AfterValidator(_experiment_name)]
BlendName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")]  # default: the members joined by +


class Train(Section):
    # runs/<competition>/<experiment>/: its folds' and full fit's files; default the config file's stem
    experiment: ExperimentName | None = None
    tuned_from: ExperimentName | None = None  # whose `make tune` settings merge; default this experiment's
    # dotted keys the tuned settings do not replace; every key named on the command line is added
    pinned: list[str] = []
    # how much time buys accuracy; keys left unset take defaults that fit the data (defaults.py)
    preset: Literal["fast", "medium", "best"] = "medium"
    time_budget: Duration = None  # "20m", "2h": epochs fitted so the folds and the full fit end in it
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: Probability = 0.9
    weight_decay: NonNegative = 0.05  # never on biases and norm parameters
    scheduler: Literal["onecycle", "cosine"] = "onecycle"
    warmup_epochs: NonNegative = 1.0  # cosine: linear warmup; onecycle warms up over pct_start
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    final_lr_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-4
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # discriminative lrs by depth
    head_lr_mult: PositiveFloat = 1.0
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    mixup_alpha: NonNegative = 0.0
    cutmix_alpha: NonNegative = 0.0
    mixup_prob: Probability = 1.0
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    accumulate: PositiveInt = 1
    clip_grad: PositiveFloat | None = None
    loss: str = "auto"  # the task's: cross_entropy; l1, mse, smooth_l1 (keypoints)
    metric: str = "auto"  # the task's: accuracy, log_loss, macro_f1; rmse (keypoints)
    device: str = "auto"  # auto: cuda when available
    amp: Annotated[Literal["auto", "bf16", "fp16", "off"], OnOff] = "auto"  # auto: on cuda, bf16 if supported
    channels_last: bool = True  # on cuda
    device_aug: Annotated[Literal["auto", "on", "off"], OnOff] = "auto"  # batches made from resident images
    distributed: Literal["auto", "ddp", "folds"] = "auto"  # with several GPUs; auto: by dataset size
    sync_bn: bool = False  # DDP: batch statistics over all ranks' shares of the batch
    compile: bool = False  # torch.compile the model that trains (pays off on GPUs after its warm-up)
    workers: Annotated[int, Field(ge=0)] | None = None  # None: chosen from the cores
    seed: int = 0
    full_fit: bool = True  # after the folds, train on all rows with the same schedule
    # the epoch whose weights a fold keeps: last (the full fit's recipe, an unbiased CV) or best
    # (chosen on the fold's own validation rows: its CV is optimistic)
    checkpoint: Literal["last", "best"] = "last"
    folds: FoldIds = None  # train only these folds (tuning uses a subset)


class AugSettings(Section):
    """How the augmentations apply; the augmentations themselves are the ops' keys (aug_ops)."""

    p: Probability = 0.5  # probability of each photometric or geometric transform
    flip_pairs: Literal["auto"] | list[tuple[str, str]] = "auto"  # keypoints swapped by hflip


# each augmentation is off at 0 and says its strength otherwise, so a search can tune both
Aug = create_model("Aug", __base__=AugSettings, __module__=__name__, **aug_ops.config_fields())


class Param(Section):
    """One dimension of the search: a dotted config key's type and range."""

    type: Literal["int", "float", "categorical", "bool"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    optional: bool = False  # int/float: a switch too; off means 0, which turns an augmentation off

    @model_validator(mode="after")
    def _range_fits_type(self) -> "Param":
        if self.type in ("int", "float"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"{self.type} needs low <= high, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"log needs low > 0, got {self.low}")
        if self.type == "categorical" and not self.choices:
            raise ValueError("categorical needs choices")
        return self


class Tune(Section):
    n_trials: PositiveInt = 20  # in all, over every run and worker
    timeout: Duration = None  # per run
    storage: str | None = None  # None: a journal file under runs/<name>/tune/; sqlite:///...; postgresql://...
    space: dict[str, Param] = {}  # dotted config key -> range; empty: the default space
    folds: FoldIds = None  # the folds a trial trains; None: all
    epochs: PositiveInt | None = None  # per fold in a trial; None: train.epochs
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int = 0
    # a worker beats every heartbeat_s in which it trained a batch; one silent for grace_s (more
    # than heartbeat_s, and than the longest pause between batches) has its trial retried,
    # at most max_retry times
    heartbeat_s: PositiveInt = 60
    grace_s: PositiveInt = 180
    max_retry: Annotated[int, Field(ge=0)] = 3

    @model_validator(mode="after")
    def _grace_outlasts_a_beat(self) -> "Tune":
        if self.grace_s <= self.heartbeat_s:
            raise ValueError(
                f"tune.grace_s={self.grace_s} must exceed tune.heartbeat_s={self.heartbeat_s}: a live worker"
                " would be taken for dead between two beats"
            )
        return self


class Predict(Section):
    # auto: the full model when its recipe's CV is within noise of the fold models', else the folds
    models: Literal["auto", "full", "folds", "both"] = "auto"
    weights: Literal["equal", "score"] = "equal"  # how models are averaged: equally or by fold score
    # views besides the plain one: hflip, vflip, shift:<fraction of the side> and
    # scale:<factor>, within TTA_RANGES
    tta: list[str] = []
    batch_size: PositiveInt | None = None  # None: twice train.batch_size
    format: str = "auto"  # the task's: label, probabilities; keypoints_wide, keypoints_long
    submit_wait: NonNegative = 0.0  # seconds `make submit` waits for the public score
    blend: BlendName | None = None  # submit runs/<name>/blends/<blend>.yaml instead of this experiment

    @field_validator("tta")
    @classmethod
    def _known_views(cls, views: list[str]) -> list[str]:
        for view in views:
            name, _, value = view.partition(":")
            if name in ("hflip", "vflip") and not value:
                continue
            if name in TTA_RANGES:
                low, high = TTA_RANGES[name]
                if not low <= _number(value) <= high:
                    raise ValueError(f"view {view!r}: {name}'s value is a number from {low:g} to {high:g}")
                continue
            raise ValueError(f"unknown view {view!r}; use hflip, vflip, shift:<fraction> or scale:<factor>")
        return views


# shift by a fraction of the side (half of it leaves half the image); zoom by a factor
TTA_RANGES = {"shift": (0.01, 0.45), "scale": (0.5, 2.0)}


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


class ScrapeSource(Section):
    """Where one label's images are: result pages, and/or a search URL template with queries."""

    pages: list[str] = []  # "{gallery}" stands for the demo gallery served on loopback
    search: str | None = None  # e.g. "https://example.com/search?q={query}"
    queries: list[str] = []

    @model_validator(mode="after")
    def _search_needs_queries(self) -> "ScrapeSource":
        if bool(self.search) != bool(self.queries):
            raise ValueError("search and queries go together: a URL template with {query}, and the queries")
        if self.search and "{query}" not in self.search:
            raise ValueError(f"search {self.search!r} has no {{query}} placeholder")
        return self


class Blend(Section):
    """`make blend`: weights for several experiments' out-of-fold predictions (blend.py)."""

    experiments: list[ExperimentName] = []  # empty: every experiment that finished training
    name: BlendName | None = None  # default "blend", or the members joined by "+"
    # auto: hill_climb for accuracy and macro_f1, optimise for log_loss and rmse
    method: Literal["auto", "hill_climb", "optimise"] = "auto"
    models: Literal["folds", "full"] = "folds"  # each member's models: its fold ensemble or its full fit
    space: Literal["probabilities", "ranks"] = "probabilities"  # classification: blend ranks per class
    rounds: PositiveInt = 50  # hill_climb's additions

    @field_validator("experiments")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"an experiment is named twice in {names}")
        return names


KaggleSlug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{2,49}$")]


class Package(Section):
    """`make package`: the models `make predict` submits, as a Kaggle dataset and an inference
    notebook that runs with the internet off (package.py)."""

    owner: str | None = None  # the Kaggle username the dataset and kernel belong to (`make push`)
    dataset: KaggleSlug | None = None  # default "<competition>-models"
    kernel: KaggleSlug | None = None  # default "<competition>-inference"
    # wheels bundled for packages the Kaggle image lacks; inference imports only torch, timm,
    # albumentations, numpy, pandas, Pillow, pydantic, PyYAML and tqdm, which it has
    wheels: list[str] = []
    # `make rehearse`'s stand-in for the Kaggle image: these distributions and what they require,
    # at this machine's versions; nothing else is importable in the notebook unless a wheel brings it
    kaggle_image: list[str] = [
        "pip", "ipykernel", "torch", "torchvision", "timm", "numpy", "pandas", "scipy", "scikit-learn",
        "pillow", "pyyaml", "pydantic", "tqdm", "albumentations", "matplotlib", "requests", "pydicom",
    ]  # fmt: skip
    accelerator: str = "none"  # or a Kaggle accelerator id: NvidiaTeslaT4, NvidiaTeslaP100, TpuV38 ...
    private: bool = True
    hidden_test_rows: PositiveInt | None = None  # None: the public test's rows times hidden_scale
    hidden_scale: PositiveFloat = 1.0
    time_limit: Duration = "9h"  # the competition's notebook run time
    submit: bool = True  # `make push`: once the pushed kernel has run, submit that version


class Scrape(Section):
    sources: dict[str, ScrapeSource] = {}  # label -> where its images are
    serve_gallery: bool = False  # the demo: serve data/<name>/gallery on loopback for the stage
    max_pages: PositiveInt = 20  # per label
    max_images: PositiveInt = 500  # image links followed per label
    timeout: PositiveFloat = 10.0  # seconds, connect and read
    retries: Annotated[int, Field(ge=0)] = 3  # on 429 and 5xx, with exponential backoff
    backoff: NonNegative = 0.5
    rate_limit: PositiveFloat = 2.0  # requests per second per host
    workers: PositiveInt = 8  # parallel downloads
    max_bytes: PositiveInt = 10_000_000
    max_pixels: PositiveInt = 40_000_000  # larger is a decompression bomb
    min_side: PositiveInt = 32
    near_duplicate_distance: Annotated[int, Field(ge=0, le=256)] = 20  # bits of a 256-bit perceptual hash
    allowed_domains: list[str] = []  # empty: any; checked at every redirect hop
    # loopback, private and link-local hosts (the demo's served gallery is trusted by its origin)
    allow_private_addresses: bool = False
    max_redirects: Annotated[int, Field(ge=0)] = 5
    download_s: PositiveFloat = 60.0  # the most one image may take, however slowly it drips
    user_agent: str = "Mozilla/5.0 (compatible; pipeline-scraper/0.1)"
    # http(s)://host:port every fetch but the demo gallery's goes through; the environment's
    # HTTP(S)_PROXY is refused unless named here (through a proxy, a target's address is checked
    # before the request, as the connection's peer is the proxy)
    proxy: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")] | None = None


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
        if self.folds.kind == "auto":
            self.folds.kind = task.fold_kind
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
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        parent, _, _ = key.rpartition(".")
        where = f"under '{parent}'" if parent else "at the top level"
        return f"unknown key '{key}'; allowed {where}: {', '.join(owner.model_fields) if owner else 'none'}"
    if kind == "missing":
        return f"key '{key}' is required"
    if kind == "union_tag_invalid":
        return f"key '{key}.layout' = {ctx['tag']!r} is not a known layout; expected one of {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
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
