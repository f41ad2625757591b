"""Pixels stored as numbers in CSVs (a column per pixel, or a row's pixels in one string): read,
checked and scaled to uint8 images, each error naming the file, line and column."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.tables import line, show


def infer_pixel_max(values: np.ndarray, setting: str | float, path: Path) -> float:
    if setting != "auto":
        return float(setting)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if low < 0:
        raise PipelineError(f"{path}: pixel values go down to {low}; expected 0 or more (set data.pixel_max)")
    integral = bool(np.all(np.mod(values, 1) == 0))
    for candidate in (1.0, 16.0, 255.0):
        if high <= candidate and (integral or candidate == 1.0):
            return candidate
    raise PipelineError(f"{path}: pixel values go up to {high}; expected at most 255 (set data.pixel_max)")


def image_shape(n_pixels: int, setting: tuple[int, int] | None, path: Path) -> tuple[int, int]:
    if setting is not None:
        if setting[0] * setting[1] != n_pixels:
            raise PipelineError(
                f"{path}: data.image_shape {tuple(setting)} holds {setting[0] * setting[1]} pixels, "
                f"rows have {n_pixels}"
            )
        return tuple(setting)
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise PipelineError(f"{path}: {n_pixels} pixels per row is not a square image; set data.image_shape")
    return side, side


def to_uint8(values: np.ndarray, pixel_max: float, shape: tuple[int, int], path: Path) -> np.ndarray:
    """(N, H*W) numbers in 0..pixel_max -> (N, H, W, 1) uint8."""
    if float(np.nanmax(values, initial=0)) > pixel_max:
        raise PipelineError(f"{path}: pixel values go up to {np.nanmax(values)}, above data.pixel_max={pixel_max}")
    scaled = np.rint(values * (255.0 / pixel_max)).clip(0, 255).astype(np.uint8)
    return scaled.reshape(len(values), *shape, 1)


def pixel_columns_matrix(frame: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    block = frame[columns]
    for column in columns:
        if not pd.api.types.is_numeric_dtype(block[column]):
            numeric = pd.to_numeric(block[column], errors="coerce")
            i = int(np.flatnonzero(numeric.isna() & block[column].notna())[0])
            raise PipelineError(
                f"{path} line {line(i)}, column {column!r}: pixel {show(block[column].iloc[i])} is not a number"
            )
    values = block.to_numpy(dtype=np.float32)
    short = np.isnan(values).any(axis=1)
    if short.any():
        i = int(np.flatnonzero(short)[0])
        count = int((~np.isnan(values[i])).sum())
        raise PipelineError(
            f"{path} line {line(i)}: {count} pixels, expected {len(columns)} (column "
            f"{columns[int(np.flatnonzero(np.isnan(values[i]))[0])]!r} is empty)"
        )
    return values


def pixel_strings_matrix(strings: pd.Series, path: Path, column: str) -> np.ndarray:
    rows, expected = [], None
    for i, text in enumerate(strings):
        try:
            row = np.array(str(text).split(), dtype=np.float32)
        except ValueError:
            bad = next(tok for tok in str(text).split() if not is_number(tok))
            raise PipelineError(f"{path} line {line(i)}, column {column!r}: pixel {bad!r} is not a number") from None
        expected = len(row) if expected is None else expected
        if len(row) != expected:
            raise PipelineError(f"{path} line {line(i)}, column {column!r}: {len(row)} pixels, expected {expected}")
        rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
