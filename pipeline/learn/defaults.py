"""Defaults that fit the data: what each key the config leaves unset becomes, and why.

A key is unset when neither the YAML nor an override names it (pydantic's `model_fields_set`).
`resolve(cfg, facts)` fills those keys from the training rows, the image side and channels and
the task, scaled by `train.preset` (AutoGluon's idea: one word trades time for accuracy):

  model     grayscale images of 32 px or less, or of 64 px or less when there are 1,000 or
            more, train a resnet18 from scratch at their own size (at least 32 px); anything
            else fine-tunes a pretrained EfficientNet-Lite0 at 96 px or more. Pretrained
            weights come from the hub when cached or reachable, else from the packaged
            efficientnet_lite0 weights where the model is one, else none.
  fine-tune fastai's `fine_tune`: the head alone for the first epoch (the backbone frozen), then
            everything, with learning rates falling by layer_decay per stage towards the stem.
  epochs    a number of optimizer steps per fold, so that small data gets more epochs.
  aug       the task's preset (keypoints: flips only with left/right pairs), else one by image
            kind: no flips for tiny grayscale images (flipping a digit changes it), hflip for photos.

Every value it decides is printed once, with the reason, and lands in the resolved config.
"""

import math
import os
from dataclasses import dataclass

from pipeline import config as C
from pipeline import tasks
from pipeline.learn.backbones import LITE0_MODELS, backbone_stages

SCRATCH_SIDE = 32  # a resnet's stem and first stage divide by 4: smaller inputs lose the image
SMALL_SIDE, MANY_ROWS = 64, 1000  # this many grayscale images of at most this side learn from scratch
PRETRAINED_SIDE = 96  # ImageNet features need some pixels to work with
HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Preset:
    steps: float  # optimizer steps per fold, as a multiple of the medium preset's
    size_cap: int  # the largest model input side


PRESETS = {
    "fast": Preset(steps=0.5, size_cap=96),
    "medium": Preset(steps=1.0, size_cap=160),
    "best": Preset(steps=2.0, size_cap=256),
}
SCRATCH_STEPS, SCRATCH_EPOCHS = 600, (20, 60)
PRETRAINED_STEPS, PRETRAINED_EPOCHS = 300, (10, 30)

GLYPH_AUG = {"rotate": 10.0, "shift": 0.1, "scale": 0.1, "p": 0.8}
PHOTO_AUG = {"hflip": 0.5, "rotate": 10.0, "shift": 0.1, "scale": 0.15, "brightness": 0.2, "contrast": 0.2, "p": 0.8}


def working_side(cfg: C.Config) -> int:
    """The largest model input side the experiment may ask for, which its cached images keep:
    model.image_size, else the preset's cap (the most a default takes), the largest
    model.image_size of the tuning space, and train.final_size's. TTA views zoom the model's
    input, not the file."""
    sides = [cfg.model.image_size or PRESETS[cfg.train.preset].size_cap]
    if cfg.train.final_size is not None:
        sides.append(cfg.train.final_size.image_size)
    searched = cfg.tune.space.get("model.image_size")
    if searched is not None:
        sides.append(int(searched.high) if searched.high is not None else max(int(c) for c in searched.choices))
    return max(sides)


@dataclass(frozen=True)
class Facts:
    """What the defaults depend on."""

    task: str
    rows: int  # the competition's training rows
    side: int  # the longer side of a typical training image
    channels: int
    n_folds: int
    targets: tuple[str, ...] = ()  # the target columns
    # model.name -> the pretrained source an earlier run decided: kept, since a hub that answers
    # today and not tomorrow would otherwise change the fingerprint and retrain every fold
    recorded_sources: tuple[tuple[str, str], ...] = ()

    @property
    def tiny_grayscale(self) -> bool:
        return self.channels == 1 and self.side <= SCRATCH_SIDE

    @property
    def from_scratch(self) -> bool:
        """ImageNet's colour photos teach little about tiny grayscale images, or about small ones
        when there are enough of them to learn from, and a scratch resnet at their own size is
        several times cheaper than a pretrained one at 96 px."""
        return self.tiny_grayscale or (self.channels == 1 and self.side <= SMALL_SIDE and self.rows >= MANY_ROWS)

    @property
    def kind(self) -> str:
        return f"{self.side} px {'grayscale' if self.channels == 1 else 'colour'} images"


@dataclass(frozen=True)
class Default:
    key: str
    value: object
    why: str


def unset(section: C.Section, key: str) -> bool:
    return key not in section.model_fields_set


def resolve(cfg: C.Config, facts: Facts) -> tuple[C.Config, list[Default]]:
    """`cfg` with its unset keys decided from the data, and what was decided."""
    decided: list[Default] = []
    for rule in (model_defaults, fine_tune_defaults, schedule_defaults, aug_defaults):
        wanted = [d for d in rule(cfg, facts) if _is_unset(cfg, d.key)]
        decided += wanted
        if wanted:
            cfg = _apply(cfg, wanted)
    return cfg, decided


def describe(decided: list[Default]) -> list[str]:
    """A line per reason: the values decided for it, then why."""
    reasons = {d.why: [e for e in decided if e.why == d.why] for d in decided}
    return [f"default: {', '.join(f'{d.key}={d.value}' for d in same)} ({why})" for why, same in reasons.items()]


def _is_unset(cfg: C.Config, key: str) -> bool:
    section, name = key.split(".")
    return unset(getattr(cfg, section), name)


def _apply(cfg: C.Config, decided: list[Default]) -> C.Config:
    """The values set on a copy, so that they count as set from here on (a re-resolve keeps them)."""
    cfg = cfg.model_copy(deep=True)
    for d in decided:
        section, name = d.key.split(".")
        setattr(getattr(cfg, section), name, d.value)
    return cfg


# --- the rules: each proposes values; only the unset keys take them --------------------------------


def model_defaults(cfg: C.Config, facts: Facts) -> list[Default]:
    decided = []
    if unset(cfg.model, "name"):
        if facts.from_scratch:
            decided.append(Default("model.name", "resnet18", f"{facts.rows} {facts.kind}: a resnet from scratch"))
        else:
            decided.append(Default("model.name", "efficientnet_lite0", f"{facts.kind}: a pretrained backbone"))
    name = decided[0].value if decided else cfg.model.name
    pretrained = cfg.model.pretrained
    if unset(cfg.model, "pretrained"):  # only then: the hub may be asked
        from_scratch = facts.from_scratch and unset(cfg.model, "name")
        decided.append(pretrained_default(name, from_scratch=from_scratch, recorded=dict(facts.recorded_sources)))
        pretrained = decided[-1].value
    floor = PRETRAINED_SIDE if pretrained != "none" else SCRATCH_SIDE
    cap = PRESETS[cfg.train.preset].size_cap
    model = "a pretrained" if floor > SCRATCH_SIDE else "this"
    why = f"images of {facts.side} px, at least {floor} for {model} model, at most {cap} ({cfg.train.preset})"
    return [*decided, Default("model.image_size", min(max(facts.side, floor), cap), why)]


def pretrained_default(name: str, *, from_scratch: bool, recorded: dict[str, str] | None = None) -> Default:
    if recorded and name in recorded:
        return Default("model.pretrained", recorded[name], f"{name}'s source as an earlier run decided it")
    if from_scratch:
        return Default("model.pretrained", "none", "small grayscale images: ImageNet features fit them poorly")
    if hub_weights_available(name):
        return Default("model.pretrained", "hub", f"{name}'s weights are in the hub cache or the hub is reachable")
    if name in LITE0_MODELS:
        return Default("model.pretrained", "efficientnet_lite0", "the packaged ImageNet weights (no hub)")
    return Default("model.pretrained", "none", f"no hub and no packaged weights for {name}")


def hub_weights_available(name: str) -> bool:
    """timm's weights for `name` in the Hugging Face cache, or the hub answering within a few
    seconds (never tried when HF_HUB_OFFLINE is set)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    except (RuntimeError, AttributeError):
        return False
    if not hub_id:
        return False
    if any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    import requests

    try:
        return requests.head(f"https://huggingface.co/{hub_id}", timeout=HUB_TIMEOUT_S).ok
    except requests.RequestException:
        return False


def fine_tune_defaults(cfg: C.Config, facts: Facts) -> list[Default]:
    """Freezing is decided as a whole: a config that sets any of its keys keeps its own plan
    (the ResNeXt write-up froze some stages for good)."""
    if cfg.model.pretrained == "none":
        return []
    decided = [Default("train.layer_decay", 0.7, "discriminative learning rates: each stage towards the stem at 0.7x")]
    if not all(unset(cfg.model, key) for key in ("freeze_depth", "freeze_blocks", "unfreeze_epoch")):
        return decided
    backbone = backbone_stages(cfg.model.name, facts.channels)
    why = "fastai's fine_tune: the head alone for one epoch, then everything"
    return [
        Default("model.freeze_depth", backbone, f"{why}; all {backbone} backbone stages frozen at first"),
        Default("model.unfreeze_epoch", 2, why),
        *decided,
    ]


def _schedule(cfg: C.Config) -> tuple[float, float, float]:
    """The optimizer steps a fold asks for, and the fewest and most epochs, at the config's preset."""
    pretrained = cfg.model.pretrained != "none"
    steps, (low, high) = (PRETRAINED_STEPS, PRETRAINED_EPOCHS) if pretrained else (SCRATCH_STEPS, SCRATCH_EPOCHS)
    scale = PRESETS[cfg.train.preset].steps
    return steps * scale, low * scale, high * scale


MIN_UNFROZEN_EPOCHS = 2  # a budget never plans fewer epochs after the backbone unfreezes


def epoch_bounds(cfg: C.Config, fold_rows: int, *, epochs_given: bool) -> tuple[int, int]:
    """The fewest and the most epochs a time budget may plan. The floor: two epochs after the
    backbone unfreezes, and half the optimizer steps the data asks for. The ceiling: train.epochs
    when the config sets it, else the preset's most (a budget with room to spare uses it)."""
    steps, _, high = _schedule(cfg)
    steps_per_epoch = max(1, math.ceil(fold_rows / cfg.train.batch_size))
    unfrozen_from = cfg.model.unfreeze_epoch or 1
    floor = max(unfrozen_from - 1 + MIN_UNFROZEN_EPOCHS, math.ceil(steps / 2 / steps_per_epoch))
    ceiling = cfg.train.epochs if epochs_given else max(cfg.train.epochs, int(high))
    return min(floor, ceiling), ceiling


def smallest_side(cfg: C.Config) -> int:
    """The smallest model input a budget may trade down to."""
    return PRETRAINED_SIDE if cfg.model.pretrained != "none" else SCRATCH_SIDE


def schedule_defaults(cfg: C.Config, facts: Facts) -> list[Default]:
    fold_rows = facts.rows * (facts.n_folds - 1) // facts.n_folds
    batch = min(64, max(16, 2 ** int(math.log2(max(fold_rows // 8, 1)))))
    batch_size = cfg.train.batch_size if not unset(cfg.train, "batch_size") else batch
    steps_per_epoch = max(1, math.ceil(fold_rows / batch_size))
    pretrained = cfg.model.pretrained != "none"
    steps, low, high = _schedule(cfg)
    epochs = int(min(max(round(steps / steps_per_epoch), low), high))
    decided = [
        Default("train.batch_size", batch, f"{fold_rows} training rows per fold: at least 8 steps an epoch"),
        Default(
            "train.epochs",
            max(epochs, 1),
            f"about {round(steps)} steps of {steps_per_epoch} an epoch, within {int(low)}-"
            f"{int(high)} epochs ({cfg.train.preset}{', fine-tuning' if pretrained else ''})",
        ),
        Default("train.lr", 1e-3 if pretrained else 3e-3, "AdamW, one-cycle: fine-tuning" if pretrained else "AdamW"),
    ]
    return decided + [Default(*proposal) for proposal in tasks.get(facts.task).proposals(cfg, facts)]


def aug_defaults(cfg: C.Config, facts: Facts) -> list[Default]:
    preset = tasks.get(facts.task).aug_preset(cfg, facts)
    if preset is not None:
        values, why = preset
    elif facts.tiny_grayscale:
        values, why = GLYPH_AUG, f"{facts.kind}: light affine, no flips (a flip can change the class)"
    else:
        values, why = PHOTO_AUG, f"{facts.kind}: photos, flips and light colour"
    if cfg.aug.model_fields_set:  # an aug section of one's own: the preset fills only what it leaves out
        why += "; the keys aug sets are kept"
    return [Default(f"aug.{key}", value, why) for key, value in values.items()]
