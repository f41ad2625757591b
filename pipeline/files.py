"""Atomic writes: a reader sees the old file or the new one, never half of one."""

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Under torchrun only rank 0 writes: the other ranks get /dev/null, which takes any write and
    keeps nothing, so the stages run the same code on every rank.
    """
    if os.environ.get("RANK", "0") != "0":
        yield Path(os.devnull)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; the renamed file should look like any other
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_dir(beside: Path) -> Path:
    """A new folder next to `beside`, to fill and then rename into place."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=beside.parent, prefix=f".{beside.name}."))
    tmp.chmod(0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def filled_into(folder: Path, last: str) -> Iterator[Path]:
    """Yield an empty folder beside `folder`; when the block succeeds, move each entry into
    `folder` (replacing what is there), `last` at the end: its presence means all arrived."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temporary_dir(folder)
    try:
        yield tmp
        for name in sorted(os.listdir(tmp), key=lambda n: n == last):
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content differs, so the file's mtime means 'changed'."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def tree_sha256(root: Path, *, leave_out: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every file under `root` (but `leave_out`) by its path relative to it: its sha256."""
    found = sorted(p for p in Path(root).rglob("*") if p.is_file() and p not in leave_out)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in found}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
