"""DICOM files as 8-bit images, as radiology competitions ship them (12- or 16-bit values).

The stored values go through the modality LUT (rescale slope and intercept, to Hounsfield units
for CT), then a window maps them to 0-255: `data.dicom_window` when set, else the file's own
window (WindowCenter/WindowWidth) or VOI LUT, else the image's own range. MONOCHROME1 images
are inverted, so that bright means dense in every image. Errors are ValueErrors naming what is
unsupported; the image reader turns them into one line naming the file.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def shape(path: Path) -> tuple[int, int, int]:
    """(rows, columns, samples per pixel) from the header, without reading the pixels."""
    dataset = _read(path, pixels=False)
    try:
        return int(dataset.Rows), int(dataset.Columns), int(dataset.get("SamplesPerPixel", 1))
    except AttributeError:
        raise ValueError("a DICOM file without Rows and Columns holds no image") from None


def read(path: Path, window: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) uint8 for grayscale, (H, W, 3) for colour."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    dataset = _read(path, pixels=True)
    try:
        stored = dataset.pixel_array
    except (AttributeError, NotImplementedError, RuntimeError) as exc:
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        raise ValueError(f"its pixels cannot be read (transfer syntax {syntax}): {str(exc).splitlines()[0]}") from None
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"multi-frame DICOM ({dataset.NumberOfFrames} frames) is not supported; one image per file")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if stored.ndim == 3:
        rgb = convert_color_space(stored, photometric, "RGB") if photometric.startswith("YBR") else stored
        return _to_byte(rgb.astype(np.float64), rgb.min(), rgb.max())
    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    if window is not None:
        grey = _windowed(values, *window)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        grey = _windowed(values, _first(dataset.WindowCenter), _first(dataset.WindowWidth))
    elif "VOILUTSequence" in dataset:
        looked_up = np.asarray(apply_voi_lut(stored, dataset), dtype=np.float64)
        grey = _to_byte(looked_up, looked_up.min(), looked_up.max())
    else:
        grey = _to_byte(values, values.min(), values.max())
    return 255 - grey if photometric == "MONOCHROME1" else grey


def _read(path: Path, *, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError as exc:
        raise ValueError(f"not a DICOM file ({exc})") from None


def _first(value) -> float:
    """WindowCenter and WindowWidth may list several windows: the first is the default one."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2): values below it black, above it white."""
    if width < 1:
        raise ValueError(f"window width {width} is below 1")
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_byte(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255 / (high - low))).astype(np.uint8)
