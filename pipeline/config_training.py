"""The config sections that say how models train, are searched, predict and are packaged: model,
train, aug (its keys are the augmentation ops'), tune, predict, blend and package."""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PositiveFloat,
    PositiveInt,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.augment import aug_ops
from pipeline.config_section import (
    BlendName,
    Duration,
    ExperimentName,
    FoldIds,
    KaggleSlug,
    NonNegative,
    OnOff,
    Probability,
    Section,
    _image_size,
    _number,
)


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
    clip_to_targets: bool = False  # regression: predictions clipped to the range each fit trained on
    decoder: Literal["unet", "fpn"] = "unet"  # segmentation: the decoder over the timm encoder model.name


@dataclass(frozen=True)
class AverageKind:
    holds_lr: bool  # the schedule anneals to average.lr and holds it over the averaged epochs
    across_folds: bool  # which epochs are averaged is chosen once every fold trained


AVERAGE_KINDS = {
    "last_k": AverageKind(holds_lr=False, across_folds=False),
    "swa": AverageKind(holds_lr=True, across_folds=False),
    "greedy_soup": AverageKind(holds_lr=False, across_folds=True),
}


class Average(Section):
    """train.average: the weights kept are the mean of the last k epochs' (learn.averaging), or of
    those of them a greedy soup picks on the other folds' validation rows (learn.soup)."""

    # the schedule as it is, annealed to lr and held there (SWA), or a greedy soup of the last k
    kind: Literal["last_k", "swa", "greedy_soup"]
    k: Annotated[int, Field(ge=2)] = 3  # epochs averaged (greedy_soup: offered): the last k (all when fewer)
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05  # swa: the learning rate held, x train.lr

    @property
    def held_lr(self) -> float | None:
        """The learning rate (x train.lr) its last k epochs hold: swa's; the others follow the schedule."""
        return self.lr if AVERAGE_KINDS[self.kind].holds_lr else None

    def describe(self, *, folds: int) -> str:
        """What the kept weights are, for a run of `folds` folds (a lone fold's soup has no other
        fold to choose it: it takes every epoch offered)."""
        if not self.across_folds:
            use = "averaged"
        elif folds > 1:
            use = "offered to a greedy soup the other folds choose"
        else:
            use = "averaged, all of them (one fold: no other fold to choose a soup)"
        return f"the last {self.k} epochs' weights {use} (train.average {self.kind})"

    @property
    def across_folds(self) -> bool:
        """Whether the epochs averaged are chosen after every fold trained (greedy_soup), not in the fit."""
        return AVERAGE_KINDS[self.kind].across_folds


class FinalSize(Section):
    """train.final_size: after the main schedule, each fit goes on at a larger side (Contrails'
    512 -> 768 px); its CV, TTA and predictions are at that side."""

    image_size: Annotated[int, AfterValidator(_image_size)]  # larger than the side the main schedule trains
    epochs: PositiveInt = 2
    lr: PositiveFloat = 1e-4  # cosine from it, with no warm-up, everything training


class PseudoLabels(Section):
    """train.pseudo_labels: images without a label join training with a teacher's predictions
    (learn.pseudo_labels): fold k's from the teacher's fold-k models, the full fit's from its
    full fits, so no fold learns about its validation rows through them."""

    teacher: ExperimentName  # a trained experiment, or a blend (runs/<name>/blends/<teacher>.yaml)
    rows: Literal["test", "extra", "both"] = "test"  # extra: the scraped images, relabelled
    min_confidence: Probability = 0.0  # rows the teacher is less sure of stay out (not for values and points)
    weight: PositiveFloat = 1.0  # how often an epoch sees each pseudo-labelled row (fractions: a seeded share)
    soft: bool = True  # the teacher's probabilities (segmentation: its maps) as targets; false: its decided labels


class Distill(Section):
    """train.distill: each fit's training rows learn from their labels and a teacher's predictions
    (learn.distillation): fold k's from the teacher's fold-k models, the full fit's from its full fits."""

    teacher: ExperimentName  # a trained experiment, or a blend (runs/<name>/blends/<teacher>.yaml)
    alpha: Probability = 0.5  # the teacher's share of each target; the label keeps the rest
    temperature: PositiveFloat = 2.0  # softens the teacher's outputs, and the student's (classification, multilabel)
    # the teacher predicts each training batch as the student sees it, augmented and mixed (timm's
    # LogitDistillationTask; Beyer et al. 2022, "a good teacher is consistent"), not once per image
    # before training; classes and labels only. None: online where the task can
    online: bool | None = None


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
    # the task's first: cross_entropy (classification); bce, asymmetric (multilabel); mse, l1,
    # smooth_l1 (regression); l1, mse, smooth_l1 (keypoints)
    loss: str = "auto"
    # the task's first: accuracy, log_loss, macro_f1 (classification); f1_samples, f2_samples,
    # f1_micro, f1_macro, roc_auc, map (multilabel); rmse, mae, r2 (regression); rmse (keypoints)
    metric: str = "auto"
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
    average: Average | None = None  # e.g. {kind: swa, k: 3}: the kept weights averaged over epochs
    final_size: FinalSize | None = None  # e.g. {image_size: 384, epochs: 2}: a last stage at a larger side
    pseudo_labels: PseudoLabels | None = None  # e.g. {teacher: base, rows: test}
    distill: Distill | None = None  # e.g. {teacher: big-blend, alpha: 0.5}: a student learns a teacher's outputs
    folds: FoldIds = None  # train only these folds (tuning uses a subset)

    @model_validator(mode="after")
    def _one_kept_weights(self) -> "Train":
        if self.average is not None and self.checkpoint == "best":
            raise ValueError(
                f"average={self.average.kind} keeps the last {self.average.k} epochs' weights averaged and "
                "checkpoint=best one epoch's: set one"
            )
        if self.average is not None and self.average.across_folds and self.final_size is not None:
            raise ValueError(
                "average=greedy_soup chooses its epochs once every fold has trained, and final_size trains on "
                "from each fold's kept weights before the next fold starts: use average=last_k or swa with final_size"
            )
        return self


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
    # the task's, from the sample submission: label, probabilities (classification); tags,
    # probabilities, binary (multilabel); values (regression); keypoints_wide, keypoints_long
    format: str = "auto"
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


class Blend(Section):
    """`make blend`: weights for several experiments' out-of-fold predictions (blend.py)."""

    experiments: list[ExperimentName] = []  # empty: every experiment that finished training
    name: BlendName | None = None  # default "blend", or the members joined by "+"
    # auto: optimise (the smooth loss) for log_loss, rmse and the multilabel F scores (their
    # thresholds refitted on the blend), hill_climb for the others
    # stack: gradient-boosted trees on the members' predictions plus data.feature_columns
    method: Literal["auto", "hill_climb", "optimise", "stack"] = "auto"
    models: Literal["folds", "full"] = "folds"  # each member's models: its fold ensemble or its full fit
    space: Literal["probabilities", "ranks"] = "probabilities"  # classification: blend ranks per class
    rounds: PositiveInt = 50  # hill_climb's additions

    @field_validator("experiments")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"an experiment is named twice in {names}")
        return names


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
