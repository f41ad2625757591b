"""What every config section shares: one pydantic model per section with unknown keys rejected
and no boolean where a number belongs, a key's error raised as that key's, and the value types
several sections use (probabilities, durations, fold ids, image sides, names)."""

import math
import typing
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)


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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


KaggleSlug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{2,49}$")]
