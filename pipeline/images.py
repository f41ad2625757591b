"""Decode, verify, hash and cache images as uint8 arrays of shape (H, W, C).

A competition's images are decoded once into a memory-mapped cache keyed by the
content of the source files, so later stages and DataLoader workers share one
copy in the page cache; competitions too large for the cache decode lazily.
"""

import functools
import hashlib
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.files import sha256_file, temporary_dir

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode(path: Path, channels: int) -> np.ndarray:
    """Fully decode one image file (a header check misses truncation) to (H, W, channels) uint8."""
    try:
        with Image.open(path) as image:
            image.load()
            converted = eight_bit(image).convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise PipelineError(f"image file {path} does not exist") from None
    except DECODE_ERRORS as exc:
        raise PipelineError(f"image file {path} cannot be decoded: {exc}") from None
    array = np.asarray(converted, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


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
    """Image files to decode, one per table row, in row order."""

    paths: tuple[Path, ...]
    channels: int

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"channels={self.channels}".encode())
        for path in self.paths:
            digest.update(f"{path.name}:{sha256_file(path)}".encode())
        return digest.hexdigest()


class CachedImages(Sequence):
    """A ragged uint8 store: one flat memory-mapped buffer plus (offset, H, W, C) per image."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.pixels = np.load(self.folder / "pixels.npy", mmap_mode="r")
        self.index = np.load(self.folder / "index.npy")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        offset, height, width, channels = self.index[i]
        return self.pixels[offset : offset + height * width * channels].reshape(height, width, channels)


def uniform_side(images: Sequence) -> int | None:
    """The longer side when every image has the same height and width, else None (also when
    that would take decoding every image)."""
    if isinstance(images, CachedImages):
        sizes = images.index[:, 1:3]
    elif isinstance(images, list):
        sizes = np.array([image.shape[:2] for image in images])
    else:
        return None
    if len(sizes) == 0 or not (sizes == sizes[0]).all():
        return None
    return int(sizes[0].max())


def typical_side(images: Sequence, sample: int = 64) -> int:
    """The median longer side: of every image in a cache, of a sample of files' headers otherwise."""
    if isinstance(images, CachedImages):
        sides = images.index[:, 1:3].max(axis=1)
    elif isinstance(images, LazyImages):
        picks = np.linspace(0, len(images) - 1, min(sample, len(images))).astype(int)
        sides = [max(header_shape(images.source.paths[i], 1)[:2]) for i in picks]
    else:
        sides = [max(images[i].shape[:2]) for i in range(min(sample, len(images)))]
    return int(np.median(sides)) if len(sides) else 0


class LazyImages(Sequence):
    """Decodes each image from its file on access, for competitions too large to cache."""

    def __init__(self, source: FileSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray:
        return decode(self.source.paths[i], self.source.channels)


def open_images(
    source: ArraySource | FileSource, cache_dir: Path, policy: str = "auto", limit_gb: float = 4.0
) -> Sequence:
    """Images for one table, from the cache when possible (building it on first use)."""
    if isinstance(source, FileSource) and not _should_cache(source, policy, limit_gb):
        return LazyImages(source)
    if isinstance(source, ArraySource) and policy == "never":
        return list(source.images)
    fingerprint = source.fingerprint if isinstance(source, ArraySource) else source.fingerprint()
    folder = Path(cache_dir) / fingerprint[:16]
    if not (folder / "index.npy").exists():
        _build_cache(source, folder)
    return CachedImages(folder)


def _should_cache(source: FileSource, policy: str, limit_gb: float) -> bool:
    if policy != "auto":
        return policy == "always"
    decoded_bytes = sum(int(np.prod(header_shape(p, source.channels))) for p in source.paths)
    return decoded_bytes <= limit_gb * 2**30


def _build_cache(source: ArraySource | FileSource, folder: Path) -> None:
    """Write the store into a temporary folder, then rename it into place."""
    tmp = temporary_dir(folder)
    try:
        if isinstance(source, ArraySource):
            _write_arrays(tmp, source.images)
        else:
            _write_files(tmp, source)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "index.npy").exists():  # another process may have built it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_arrays(folder: Path, images: np.ndarray) -> None:
    n, height, width, channels = images.shape
    offsets = np.arange(n, dtype=np.int64) * height * width * channels
    index = np.column_stack([offsets, np.tile([height, width, channels], (n, 1))]).astype(np.int64)
    np.save(folder / "pixels.npy", np.ascontiguousarray(images).reshape(-1))
    np.save(folder / "index.npy", index)


def _write_files(folder: Path, source: FileSource) -> None:
    shapes = np.array([header_shape(p, source.channels) for p in source.paths], dtype=np.int64).reshape(-1, 3)
    sizes = shapes.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pixels = np.lib.format.open_memmap(folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(int(sizes.sum()),))

    def fill(i: int) -> None:
        image = decode(source.paths[i], source.channels)
        if image.shape != tuple(shapes[i]):
            raise PipelineError(f"image file {source.paths[i]} decodes to {image.shape}, header says {shapes[i]}")
        pixels[offsets[i] : offsets[i] + sizes[i]] = image.reshape(-1)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(
            tqdm(pool.map(fill, range(len(source))), total=len(source), desc="decode images", unit="img", disable=None)
        )
    pixels.flush()
    np.save(folder / "index.npy", np.column_stack([offsets, shapes]))
