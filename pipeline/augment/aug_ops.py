"""The augmentation ops: one spec from which the `aug` config section, the check of what the
batched path can do, the tune space and both executors are made. No op is listed anywhere else.

An op owns
- its keys: the `aug.*` settings it reads, each off at 0, with its limits and its search range;
- its setting: the ranges its draws come from and the probability it applies with;
- its draw: per-image parameters from a numpy generator, within those ranges;
- its per-image executor: an albumentations transform over the same ranges;
- its batched executor, where one exists: a geometric op gives an affine map per image, in the
  [-1, 1] coordinates of `grid_sample(align_corners=False)`, and the maps of all geometric ops
  make one warp; a photometric op changes a float batch of 0-255 values in place;
- its keypoint mapping: the same affine map moves the points; a horizontal flip also swaps the
  `flip_pairs`; a point moved outside the image keeps its place, |coordinate| > 1, and stays in
  the targets.

Nothing heavy is imported here: the config is read by stages that never load torch or
albumentations (the blend); each executor imports its library in the call that uses it, and the
batched ops use only the methods of the tensors they are given.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field

Ranges = dict[str, tuple[float, float]]
NEAREST = 6  # cv2.INTER_NEAREST_EXACT for masks: cv2's INTER_NEAREST shifts an upscaled one by up to a pixel


@dataclass(frozen=True)
class Key:
    """One `aug.*` setting: `high` is the largest value the config accepts (`open_high`: never
    reached); `search` the tune space's range, or `choices` its values."""

    name: str
    high: float
    search: tuple[float, float] | None = None
    choices: tuple | None = None
    open_high: bool = False
    integer: bool = False
    default: float = 0
    odd: bool = False  # a kernel size: 0 (off) or odd >= 3
    doc: str = ""

    def annotation(self) -> Any:
        limits = {"lt" if self.open_high else "le": self.high, "ge": 1 if self.default else 0}
        checks = [Field(**limits, description=self.doc)] + ([AfterValidator(_odd_kernel)] if self.odd else [])
        return Annotated[(int if self.integer else float, *checks)]

    def param(self) -> dict | None:
        """The tune space's `Param` fields for this key: its choices, or its range with its switch."""
        if self.choices:
            return {"type": "categorical", "choices": list(self.choices)}
        return self.search and {"type": "float", "low": self.search[0], "high": self.search[1], "optional": True}


def _odd_kernel(size: int) -> int:
    if size and (size < 3 or size % 2 == 0):
        raise ValueError(f"must be 0 (off) or an odd kernel size of at least 3, got {size}")
    return size


@dataclass(frozen=True)
class Setting:
    """What one op draws from: `p` the chance it applies to an image, `ranges` its parameters'."""

    p: float
    ranges: Ranges = field(default_factory=dict)

    def uniform(self, name: str, n: int, rng: np.random.Generator, applied: np.ndarray) -> np.ndarray:
        """(n,) draws within `ranges[name]`; the identity value 0 where the op is not applied."""
        low, high = self.ranges[name]
        return np.where(applied, rng.uniform(low, high, n), 0.0)


@dataclass(frozen=True)
class Context:
    """What a per-image executor needs beyond its setting: the image's channels, the model's input
    side, and its own flip at a probability where a flip renames the points it mirrors (else None)."""

    channels: int
    size: int
    hflip: Callable[[float], Any] | None = None


class Op:
    """An augmentation: see the module's docstring. Subclasses set `keys` and the executors."""

    keys: tuple[Key, ...] = ()
    geometric = False  # moves pixels (and points) rather than changing their values
    batched = False  # has a batched executor
    needs_colour = False
    crops = False  # may cut what the targets mark out of the image

    def on(self, aug: Any) -> bool:
        return any(getattr(aug, k.name) for k in self.keys if not k.default)

    def setting(self, aug: Any) -> Setting:
        raise NotImplementedError

    def per_image(self, setting: Setting, context: Context) -> Any:
        """The albumentations transform."""
        raise NotImplementedError

    def draw(self, setting: Setting, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """n images' parameters, each an array with n rows."""
        raise NotImplementedError

    def matrix(self, drawn: dict[str, np.ndarray]) -> np.ndarray:
        """Geometric: (n, 3, 3) maps from input to output [-1, 1] coordinates."""
        raise NotImplementedError

    def relabel(self, points: Any, drawn: dict[str, Any], swap: Any) -> Any:
        """Geometric: (n, K, 2) points after the map, renamed where the op renames them."""
        return points

    def apply(self, images: Any, drawn: dict[str, Any]) -> Any:
        """Photometric: a float (n, C, S, S) batch of 0-255 values, changed in place."""
        raise NotImplementedError


def _applied(p: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random(n) < p


def _symmetric(aug: Any, *names: str) -> Ranges:
    return {name: (-getattr(aug, name), getattr(aug, name)) for name in names}


class HorizontalFlip(Op):
    keys = (Key("hflip", 1.0, search=(0.25, 0.5), doc="probability of a left-right flip"),)
    geometric = batched = True

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.hflip)

    def per_image(self, setting: Setting, context: Context) -> Any:
        if context.hflip is not None:
            return context.hflip(setting.p)
        import albumentations as A

        return A.HorizontalFlip(p=setting.p)

    def draw(self, setting: Setting, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"flipped": _applied(setting.p, n, rng)}

    def matrix(self, drawn: dict[str, np.ndarray]) -> np.ndarray:
        return _diagonal(np.where(drawn["flipped"], -1.0, 1.0), np.ones(len(drawn["flipped"])))

    def relabel(self, points: Any, drawn: dict[str, Any], swap: Any) -> Any:
        return points[:, swap].where(drawn["flipped"].view(-1, 1, 1), points)


class VerticalFlip(Op):
    keys = (Key("vflip", 1.0, search=(0.25, 0.5), doc="probability of an upside-down flip"),)
    geometric = batched = True

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.vflip)

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        return A.VerticalFlip(p=setting.p)

    def draw(self, setting: Setting, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"flipped": _applied(setting.p, n, rng)}

    def matrix(self, drawn: dict[str, np.ndarray]) -> np.ndarray:
        return _diagonal(np.ones(len(drawn["flipped"])), np.where(drawn["flipped"], -1.0, 1.0))


def _diagonal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    matrix = np.zeros((len(x), 3, 3))
    matrix[:, 0, 0], matrix[:, 1, 1], matrix[:, 2, 2] = x, y, 1.0
    return matrix


class Affine(Op):
    """albumentations' Affine: about the centre, zoom each axis, rotate, shear each axis; then
    shift. In the image as shown (y down) a positive angle turns counterclockwise."""

    keys = (
        Key("rotate", 180.0, search=(5, 30), doc="degrees either way"),
        Key("shift", 0.5, search=(0.02, 0.2), doc="fraction of the side, either way, on each axis"),
        Key("scale", 1.0, search=(0.05, 0.3), open_high=True, doc="zoom each axis in or out by up to this"),
        Key("shear", 45.0, search=(2, 15), doc="degrees either way, on each axis"),
    )
    geometric = batched = True

    def setting(self, aug: Any) -> Setting:
        ranges = _symmetric(aug, "rotate", "shift", "shear")
        return Setting(aug.p, ranges | {"scale": (1 - aug.scale, 1 + aug.scale)})

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        r = setting.ranges
        return A.Affine(
            rotate=r["rotate"], translate_percent=r["shift"], scale=r["scale"], shear=r["shear"], p=setting.p
        )

    def draw(self, setting: Setting, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """rotate (n,), degrees; shift (n, 2), fractions of the side; scale and shear (n, 2),
        factors and degrees; each pair x then y."""
        applied = _applied(setting.p, n, rng)

        def pair(name: str) -> np.ndarray:
            return np.stack([setting.uniform(name, n, rng, applied) for _ in range(2)], axis=1)

        scale = np.where(applied[:, None], pair("scale"), 1.0)
        return {
            "rotate": setting.uniform("rotate", n, rng, applied),
            "shift": pair("shift"),
            "scale": scale,
            "shear": pair("shear"),
        }

    def matrix(self, drawn: dict[str, np.ndarray]) -> np.ndarray:
        angle, tan = np.deg2rad(drawn["rotate"]), np.tan(-np.deg2rad(drawn["shear"]))  # albumentations' sign
        cos, sin, n = np.cos(angle), np.sin(angle), len(angle)
        rotation = np.stack([np.stack([cos, sin], 1), np.stack([-sin, cos], 1)], 1)  # y down: counterclockwise
        shear = np.stack([np.stack([np.ones(n), tan[:, 0]], 1), np.stack([tan[:, 1], np.ones(n)], 1)], 1)
        matrix = np.zeros((n, 3, 3))
        matrix[:, :2, :2] = shear @ rotation @ (drawn["scale"][:, :, None] * np.eye(2))
        matrix[:, :2, 2], matrix[:, 2, 2] = 2 * drawn["shift"], 1.0  # a side is 2 units long
        return matrix


class Perspective(Op):
    keys = (Key("perspective", 0.3, search=(0.02, 0.1), doc="corner jitter, fraction of the side"),)
    geometric = True

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.p, {"perspective": (0.0, aug.perspective)})

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        return A.Perspective(scale=setting.ranges["perspective"], p=setting.p)


class BrightnessContrast(Op):
    keys = (
        Key("brightness", 1.0, search=(0.05, 0.3), doc="added, fraction of the pixel range, either way"),
        Key("contrast", 1.0, search=(0.05, 0.3), doc="multiplied by 1 plus up to this, either way"),
    )
    batched = True

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.p, _symmetric(aug, "brightness", "contrast"))

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        r = setting.ranges
        return A.RandomBrightnessContrast(brightness_limit=r["brightness"], contrast_limit=r["contrast"], p=setting.p)

    def draw(self, setting: Setting, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        applied = _applied(setting.p, n, rng)
        return {name: setting.uniform(name, n, rng, applied) for name in ("brightness", "contrast")}

    def apply(self, images: Any, drawn: dict[str, Any]) -> Any:
        gain, offset = 1 + drawn["contrast"].view(-1, 1, 1, 1), 255 * drawn["brightness"].view(-1, 1, 1, 1)
        return images.mul_(gain).add_(offset).clamp_(0, 255)


class HueSaturation(Op):
    keys = (
        Key("hue", 0.5, search=(0.01, 0.1), doc="hue shift, fraction of the colour wheel, either way"),
        Key("saturation", 1.0, search=(0.05, 0.3), doc="saturation factor 1 plus up to this, either way"),
    )
    needs_colour = True

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.p, _symmetric(aug, "hue") | {"saturation": (1 - aug.saturation, 1 + aug.saturation)})

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        r = setting.ranges
        return A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=r["saturation"], hue=r["hue"], p=setting.p)


class Blur(Op):
    keys = (Key("blur", 31, choices=(0, 3, 5), integer=True, odd=True, doc="largest Gaussian kernel"),)

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.p, {"blur": (3, aug.blur)})

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        return A.GaussianBlur(blur_limit=tuple(int(k) for k in setting.ranges["blur"]), p=setting.p)


class Noise(Op):
    keys = (Key("noise", 1.0, search=(0.01, 0.1), doc="Gaussian noise's std, fraction of the pixel range"),)

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.p, {"noise": (0.0, aug.noise)})

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        return A.GaussNoise(std_range=setting.ranges["noise"], p=setting.p)


class Cutout(Op):
    keys = (
        Key("cutout", 0.5, search=(0.05, 0.3), doc="a hole's largest side, fraction of the image's side"),
        Key("cutout_holes", 16, integer=True, default=1, doc="up to this many holes"),
    )
    batched = True

    def setting(self, aug: Any) -> Setting:
        return Setting(aug.p, {"side": (aug.cutout / 2, aug.cutout), "holes": (1, aug.cutout_holes)})

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        side, holes = setting.ranges["side"], tuple(int(h) for h in setting.ranges["holes"])
        return A.CoarseDropout(num_holes_range=holes, hole_height_range=side, hole_width_range=side, p=setting.p)

    def draw(self, setting: Setting, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """holes (n, K, 4): top, left, height, width as fractions of the side; height 0: no hole."""
        (low, high), most = setting.ranges["side"], int(setting.ranges["holes"][1])
        size = rng.uniform(low, high, (n, most, 2))
        corner = (1 - size) * rng.random((n, most, 2))
        count = rng.integers(1, most + 1, (n, 1))
        used = (np.arange(most)[None, :] < count) & _applied(setting.p, n, rng)[:, None]
        return {"holes": np.concatenate([corner, size * used[..., None]], axis=2)}

    def apply(self, images: Any, drawn: dict[str, Any]) -> Any:
        return images.masked_fill_(_hole_mask(drawn["holes"], images.shape[-1])[:, None], 0)


def _hole_mask(holes: Any, side: int) -> Any:
    """(N, K, 4) fractional holes -> (N, S, S) bool, True inside any hole."""
    centres = (holes.new_ones(side).cumsum(0) - 0.5) / side
    y0, x0, height, width = holes.unbind(dim=2)  # each (N, K)
    inside_y = (centres >= y0[..., None]) & (centres < (y0 + height)[..., None])  # (N, K, S)
    inside_x = (centres >= x0[..., None]) & (centres < (x0 + width)[..., None])
    return (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1)


class RandomResizedCrop(Op):
    keys = (Key("random_resized_crop", 1.0, search=(0.3, 0.9), open_high=True, doc="smallest share of the area kept"),)
    geometric = True
    crops = True

    def setting(self, aug: Any) -> Setting:
        return Setting(1.0, {"area": (aug.random_resized_crop, 1.0)})

    def per_image(self, setting: Setting, context: Context) -> Any:
        import albumentations as A

        size, area = (context.size, context.size), setting.ranges["area"]
        return A.RandomResizedCrop(size=size, scale=area, p=setting.p, mask_interpolation=NEAREST)


# in the order they apply: the crop first, then the geometric ops, then the photometric ones
OPS: tuple[Op, ...] = (RandomResizedCrop(), HorizontalFlip(), VerticalFlip(), Affine(), Perspective())
OPS += (BrightnessContrast(), HueSaturation(), Blur(), Noise(), Cutout())


def config_fields() -> dict[str, tuple[Any, float]]:
    """Every op's keys as pydantic fields of the `aug` section: name -> (type, default)."""
    return {k.name: (k.annotation(), k.default if k.integer else float(k.default)) for op in OPS for k in op.keys}


def enabled(aug: Any) -> list[Op]:
    return [op for op in OPS if op.on(aug)]


def search_space(channels: int, *, crops: bool) -> dict[str, dict]:
    """The tune space's `aug.*` keys as `Param` fields (`crops`: with the ops that may cut the targets out)."""
    searched = [op for op in OPS if (crops or not op.crops) and (channels == 3 or not op.needs_colour)]
    return {f"aug.{k.name}": k.param() for op in searched for k in op.keys if k.param()}


def not_batched(aug: Any) -> list[str]:
    """The enabled settings the batched path cannot do, as `aug.key=value`."""
    return [
        f"aug.{k.name}={getattr(aug, k.name)}"
        for op in enabled(aug)
        if not op.batched
        for k in op.keys
        if getattr(aug, k.name) != k.default
    ]
