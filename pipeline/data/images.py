"""Decode, verify, hash and cache images as uint8 arrays of shape (H, W, C).

A competition's images are decoded once into a memory-mapped cache keyed by the
content of the source files, so later stages and DataLoader workers share one
copy in the page cache; competitions too large for the cache decode lazily.
"""

import functools
import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data import dicom
from pipeline.errors import PipelineError
from pipeline.files import sha256_file, temporary_dir

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def scaled_shape(height: int, width: int, side: int | None) -> tuple[int, int]:
    """The (height, width) an image is cached at: its shorter side brought down to `side`, never up.
    The model's square resize to `side` then loses nothing a larger copy would have kept."""
    if side is None or min(height, width) <= side:
        return height, width
    factor = side / min(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def decode(path: Path, channels: int, side: int | None = None, window: tuple[float, float] | None = None) -> np.ndarray:
    """Fully decode one image file (a header check misses truncation) to (h, w, channels) uint8,
    its shorter side brought down to `side`. A JPEG decodes at a reduced scale (libjpeg's DCT
    scaling, PIL's draft), still reading every byte. `window`: a DICOM file's (center, width)."""
    try:
        picture, original = _dicom_picture(path, window) if dicom.is_dicom(path) else _picture(path, channels, side)
        converted = picture.convert("L" if channels == 1 else "RGB")
        target = scaled_shape(*original, side)
        if converted.size != target[::-1]:
            converted = converted.resize(target[::-1], Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise PipelineError(f"image file {path} does not exist") from None
    except DECODE_ERRORS as exc:
        raise PipelineError(f"image file {path} cannot be decoded: {exc}") from None
    array = np.asarray(converted, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def _picture(path: Path, channels: int, side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded picture, at most as large as its file's, and the file's (height, width)."""
    with Image.open(path) as image:
        width, height = image.size
        target = scaled_shape(height, width, side)
        if image.format == "JPEG" and target != (height, width):
            image.draft("L" if channels == 1 else "RGB", target[::-1])
        image.load()
        return eight_bit(image), (height, width)


def _dicom_picture(path: Path, window: tuple[float, float] | None) -> tuple[Image.Image, tuple[int, int]]:
    pixels = dicom.read(path, window)
    return Image.fromarray(pixels), pixels.shape[:2]


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def eight_bit(image: Image.Image) -> Image.Image:
    """The image with 8-bit values, ready for convert(). Pillow's convert() clips values above
    255 (a 16-bit mid-grey becomes white): 16-bit grey, and a PNG's "I" mode (16-bit at most),
    are scaled by their depth instead. Other 32-bit images raise ValueError."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        _say_once("images: 16-bit grey images are scaled to 8 bits (value * 255 / 65535)")
        scaled = np.asarray(image, dtype=np.float64) * (255 / 65535)
        return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        raise ValueError(f"{image.mode} mode ({image.format} 32-bit) images are not supported")
    return image


@functools.cache
def _say_once(message: str) -> None:
    print(message, flush=True)


def header_shape(path: Path, channels: int) -> tuple[int, int, int]:
    """(H, W, C) from the header alone, without decoding the pixels."""
    try:
        if dicom.is_dicom(path):
            return (*dicom.shape(path)[:2], channels)
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise PipelineError(f"image file {path} does not exist") from None
    except DECODE_ERRORS as exc:
        raise PipelineError(f"image file {path} cannot be decoded: {exc}") from None
    return height, width, channels


@dataclass(frozen=True)
class ArraySource:
    """Images already decoded in memory, (N, H, W, C) uint8, e.g. parsed from CSV pixels."""

    images: np.ndarray
    fingerprint: str

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class FileSource:
    """Image files to decode, one per table row, in row order. `dicom_window`: the (center,
    width) DICOM files are windowed with (None: each file's own)."""

    paths: tuple[Path, ...]
    channels: int
    dicom_window: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        window = f" dicom_window={self.dicom_window}" if self.dicom_window else ""
        digest = hashlib.sha256(f"channels={self.channels}{window}".encode())
        for path in self.paths:
            digest.update(f"{path.name}:{sha256_file(path)}".encode())
        return digest.hexdigest()

    def decode(self, i: int, side: int | None) -> np.ndarray:
        return decode(self.paths[i], self.channels, side, self.dicom_window)

    def shapes(self) -> np.ndarray:
        """(N, 3) every file's (H, W, C), from the headers."""
        shapes = [header_shape(p, self.channels) for p in self.paths]
        return np.array(shapes, dtype=np.int64).reshape(-1, 3)


# Every image store is a Sequence of uint8 (h, w, C) arrays with `original_sizes`: (N, 2) each
# image's (height, width) in its file, the units of keypoint targets and of predictions.


class MemoryImages(Sequence):
    """Decoded images held in memory at their own size: an ArraySource's, uncached; a demo's."""

    def __init__(self, images: Sequence[np.ndarray]):
        self.images = images
        self.original_sizes = np.array([image.shape[:2] for image in images], dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[i]


class CachedImages(Sequence):
    """A ragged uint8 store: one flat memory-mapped buffer plus, per image, (offset, h, w, C)
    as cached and (H, W) as in its file. Its folder is named by the sources' content and the
    shorter side images were brought down to (`side`; None: every image at its own size)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.pixels = np.load(self.folder / "pixels.npy", mmap_mode="r")
        self.index = np.load(self.folder / "index.npy")
        self.original_sizes = self.index[:, 4:6]
        self.side = cache_side(self.folder)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        offset, height, width, channels = self.index[i, :4]
        return self.pixels[offset : offset + height * width * channels].reshape(height, width, channels)


class LazyImages(Sequence):
    """Decodes each image from its file on access (at the working side), for competitions too
    large to cache."""

    def __init__(self, source: FileSource, side: int | None = None, shapes: np.ndarray | None = None):
        self.source, self.side, self._shapes = source, side, shapes

    @functools.cached_property
    def original_sizes(self) -> np.ndarray:
        return (self.source.shapes() if self._shapes is None else self._shapes)[:, :2]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.source.decode(i, self.side)


def uniform_side(images: Sequence) -> int | None:
    """The longer side when every image has the same height and width, else None."""
    sizes = images.original_sizes
    if len(sizes) == 0 or not (sizes == sizes[0]).all():
        return None
    return int(sizes[0].max())


def typical_side(images: Sequence) -> int:
    """The median longer side of the images in their files."""
    sides = images.original_sizes.max(axis=1)
    return int(np.median(sides)) if len(sides) else 0


def open_images(
    source: ArraySource | FileSource,
    cache_dir: Path,
    policy: str = "auto",
    limit_gb: float = 4.0,
    side: int | None = None,
) -> Sequence:
    """Images for one table, from the cache when possible (building it on first use). `side`:
    the largest model input the experiment asks for; a file's image is cached with its shorter
    side brought down to it. A cache of smaller images is built again, and said so."""
    if isinstance(source, ArraySource):
        if policy == "never":
            return MemoryImages(source.images)
        folder = Path(cache_dir) / f"{source.fingerprint[:16]}-full"
        if not (folder / "index.npy").exists():
            _build_cache(folder, lambda tmp: _write_arrays(tmp, source.images))
        return CachedImages(folder)
    if policy == "never":
        return LazyImages(source, side)
    fingerprint = source.fingerprint()[:16]
    found = _find_cache(Path(cache_dir), fingerprint, side)
    if found is not None:
        return found
    shapes = source.shapes()
    scaled = side if (shapes[:, :2].min(axis=1) > (side or np.inf)).any() else None
    working = np.array([(*scaled_shape(h, w, scaled), c) for h, w, c in shapes], dtype=np.int64).reshape(-1, 3)
    if policy == "auto" and working.prod(axis=1).sum() > limit_gb * 2**30:
        return LazyImages(source, scaled, shapes)
    folder = Path(cache_dir) / f"{fingerprint}-{scaled or 'full'}"
    _build_cache(folder, lambda tmp: _write_files(tmp, source, scaled, shapes, working))
    for smaller in _caches(Path(cache_dir), fingerprint):
        if smaller != folder:
            shutil.rmtree(smaller, ignore_errors=True)  # the new cache serves what it served
    return CachedImages(folder)


def cache_side(folder: Path) -> int | None:
    suffix = folder.name.rpartition("-")[2]
    return None if suffix == "full" else int(suffix)


def _caches(cache_dir: Path, fingerprint: str) -> list[Path]:
    return [f for f in cache_dir.glob(f"{fingerprint}-*") if (f / "index.npy").exists()] if cache_dir.is_dir() else []


def _find_cache(cache_dir: Path, fingerprint: str, side: int | None) -> CachedImages | None:
    """The cache of these files with the smallest images that still serve `side`; None (said
    when a cache of smaller images exists) when there is none."""

    def serves(folder: Path) -> bool:
        held = cache_side(folder)
        return held is None or (side is not None and held >= side)

    built = _caches(cache_dir, fingerprint)
    serving = [f for f in built if serves(f)]
    if serving:
        return CachedImages(min(serving, key=lambda f: cache_side(f) or np.inf))
    if built:
        held = max(cache_side(f) for f in built)
        wanted = f"{side} px" if side else "every image at its own size"
        print(
            f"images: the cache {cache_dir} holds images at {held} px (shorter side); {wanted} is needed now: "
            "decoding them again",
            flush=True,
        )
    return None


def _build_cache(folder: Path, write) -> None:
    """`write` the store into a temporary folder, then rename it into place."""
    tmp = temporary_dir(folder)
    try:
        write(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "index.npy").exists():  # another process may have built it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_arrays(folder: Path, images: np.ndarray) -> None:
    n, height, width, channels = images.shape
    offsets = np.arange(n, dtype=np.int64) * height * width * channels
    shape = np.tile([height, width, channels, height, width], (n, 1))
    np.save(folder / "pixels.npy", np.ascontiguousarray(images).reshape(-1))
    np.save(folder / "index.npy", np.column_stack([offsets, shape]).astype(np.int64))


def _write_files(folder: Path, source: FileSource, side: int | None, shapes: np.ndarray, working: np.ndarray) -> None:
    """Decode every file at the working side, in threads (PIL releases the GIL while it decodes:
    as fast as processes, measured), each image written at its offset with pwrite: the pages
    go to the page cache, not into this process's memory."""
    sizes = working.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    path = folder / "pixels.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (int(sizes.sum()),)})
        start = f.tell()
        f.truncate(start + int(sizes.sum()))
    fd = os.open(path, os.O_WRONLY)

    def fill(i: int) -> None:
        image = source.decode(i, side)
        if image.shape != tuple(working[i]):
            raise PipelineError(f"image file {source.paths[i]} decodes to {image.shape}, its header says {shapes[i]}")
        _write_at(fd, memoryview(np.ascontiguousarray(image)).cast("B"), start + int(offsets[i]))

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            done = pool.map(fill, range(len(source)))
            list(tqdm(done, total=len(source), desc="decode images", unit="img", disable=None))
    finally:
        os.close(fd)
    np.save(folder / "index.npy", np.column_stack([offsets, working, shapes[:, :2]]))
    seconds = time.monotonic() - started
    at = f"shorter side at most {side} px" if side else "every image at its own size"
    print(
        f"images: decoded {len(source)} files in {seconds:.0f} s ({len(source) / max(seconds, 1e-9):.0f} img/s), "
        f"cached with {at}: {sizes.sum() / 2**30:.2f} GB",
        flush=True,
    )


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
