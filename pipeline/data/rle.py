"""Kaggle's run-length codes for masks: "start length start length ...", starts 1-indexed into
the image's pixels flattened column by column (TGS, Severstal, SIIM: `order="column"`) or row
by row (`order="row"`, `data.rle_order`). An empty code is an empty mask. Kaggle's rule, which a
code here must keep: the pairs sorted, every number positive, no pixel in two runs.
"""

import numpy as np

from pipeline.errors import PipelineError

ORDERS = {"column": "F", "row": "C"}  # data.rle_order -> numpy's flattening order


def decode(code: object, shape: tuple[int, int], order: str, where: str) -> np.ndarray:
    """The (height, width) uint8 0/1 mask of `code` (a string, or a missing cell: empty).
    `where` names the row in an error: "train.csv line 7, column 'rle_mask'"."""
    starts, lengths = fitted_runs(code, shape, where)
    pixels = shape[0] * shape[1]
    edges = np.zeros(pixels + 1, np.int32)  # +1 where a run starts, -1 just past where it ends
    np.add.at(edges, starts - 1, 1)
    np.add.at(edges, starts - 1 + lengths, -1)
    return np.cumsum(edges[:-1]).astype(np.uint8).reshape(shape, order=ORDERS[order])


def fitted_runs(code: object, shape: tuple[int, int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """The code's runs, checked to end inside a (height, width) image."""
    starts, lengths = runs(code, where)
    pixels = shape[0] * shape[1]
    if len(starts) and starts[-1] + lengths[-1] - 1 > pixels:
        raise PipelineError(
            f"{where}: the run-length code runs past the image: its last run ends at pixel "
            f"{starts[-1] + lengths[-1] - 1}, and a {shape[0]}x{shape[1]} image has {pixels}"
        )
    return starts, lengths


def runs(code: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The starts and lengths of a code, checked against Kaggle's rule."""
    if not isinstance(code, str):
        if code is None or (isinstance(code, float) and np.isnan(code)):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        raise PipelineError(f"{where}: a run-length code is text, got {code!r}")
    try:
        numbers = np.array(code.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        word = next(w for w in code.split() if not w.isdigit())
        raise PipelineError(f"{where}: the run-length code does not parse: {word!r} is not a whole number") from None
    if len(numbers) % 2:
        raise PipelineError(f"{where}: the run-length code has {len(numbers)} numbers; it needs start, length pairs")
    starts, lengths = numbers[::2], numbers[1::2]
    if len(numbers) and min(starts.min(), lengths.min()) < 1:
        raise PipelineError(f"{where}: the run-length code holds {numbers.min()}; starts and lengths are 1 or more")
    overlapping = np.flatnonzero(starts[1:] < starts[:-1] + lengths[:-1])
    if len(overlapping):
        i = int(overlapping[0])
        raise PipelineError(
            f"{where}: the run-length code overlaps itself: the run at pixel {starts[i + 1]} starts before the "
            f"run at pixel {starts[i]} (length {lengths[i]}) ends; runs are sorted and disjoint"
        )
    return starts, lengths


def area(code: object, where: str) -> int:
    """Pixels in a code's mask: the sum of its lengths."""
    return int(runs(code, where)[1].sum())


def overlap(first: object, second: object, where: str) -> int:
    """Pixels in both codes' masks, from their runs alone (no image size needed)."""
    (a, a_length), (b, b_length) = runs(first, where), runs(second, where)
    a_end, b_end = a + a_length, b + b_length  # one past each run
    i = j = shared = 0
    while i < len(a) and j < len(b):
        shared += max(0, min(a_end[i], b_end[j]) - max(a[i], b[j]))
        if a_end[i] < b_end[j]:
            i += 1
        else:
            j += 1
    return int(shared)


def encode(mask: np.ndarray, order: str) -> str:
    """The run-length code of a (height, width) mask (nonzero: in it); "" for an empty mask."""
    flat = np.asarray(mask).astype(bool).ravel(order=ORDERS[order])
    changes = np.flatnonzero(np.diff(flat, prepend=False, append=False)) + 1  # 1-indexed run edges
    changes[1::2] -= changes[::2]
    return " ".join(map(str, changes))
