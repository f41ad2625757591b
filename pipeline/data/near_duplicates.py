"""Perceptual hashes of images and the judge of a new image against what is known: an exact copy
(sha256), a near copy of a test image (a leak), or of a training image or of what was already
kept. The scrape stage keeps only what this calls new."""

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

HASH_SIDE = 16  # a 256-bit perceptual hash: 64 bits cannot tell one handwritten 3 from another


def phash(image: Image.Image) -> bytes:
    return np.packbits(imagehash.phash(image, hash_size=HASH_SIDE).hash.ravel()).tobytes()


class Seen:
    """What a new image is compared with: sha256s, and perceptual hashes of the test images,
    the training images and what was kept so far. Judged one image at a time, in link order."""

    def __init__(self, train: list[bytes], test: list[bytes], kept: pd.DataFrame, distance: int):
        self.distance = distance
        self.sha = set(kept["sha256"])
        self.test = _hash_array(test)
        self.known = _hash_array(train + [bytes.fromhex(h) for h in kept["phash"]])

    def judge(self, sha: str, hashed: bytes) -> str:
        if sha in self.sha:
            return "duplicate"
        if _nearest(self.test, hashed) <= self.distance:
            return "test_leak"
        if _nearest(self.known, hashed) <= self.distance:
            return "near_duplicate"
        self.sha.add(sha)
        self.known = np.vstack([self.known, _hash_array([hashed])])
        return "kept"


def _hash_array(hashes: list[bytes]) -> np.ndarray:
    """(N, 32) uint8: one packed 256-bit hash per row."""
    return np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), HASH_SIDE**2 // 8)


def _nearest(hashes: np.ndarray, hashed: bytes) -> int:
    """The smallest Hamming distance from `hashed` to any of `hashes` (more than any if none)."""
    if not len(hashes):
        return HASH_SIDE**2 + 1
    return int(np.bitwise_count(hashes ^ np.frombuffer(hashed, dtype=np.uint8)).sum(axis=1).min())


def picture(array: np.ndarray) -> Image.Image:
    """(H, W, 1 or 3) uint8 -> a PIL image."""
    array = np.asarray(array)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
