"""The competition's files as a dependency of the data stage: a manifest of every file in its
folder, rewritten only when one changes, so that Make re-runs the stages after an edited label,
a moved or an added image.

A table is listed by its content (sha256, computed again only when its size or time changed);
any other file by its size and time, which a copy, an edit or a move changes.
"""

import json
import os
from pathlib import Path

from pipeline.files import sha256_file, write_if_changed
from pipeline.paths import Paths

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".parquet", ".txt")
WRITTEN_BY_SCRAPE = ("extra", "extra.csv", "extra.progress.csv")  # in the folder, but the pipeline's


def refresh(paths: Paths) -> bool:
    """Rewrite the manifest if the competition's files changed; whether it did."""
    hashes = _read_hashes(paths.inputs_hashes)
    lines, hashes = manifest(paths.data, hashes, skip=paths.runs.parent)
    write_if_changed(paths.inputs_hashes, json.dumps(hashes))
    return write_if_changed(paths.inputs_stamp, "".join(f"{line}\n" for line in lines))


def manifest(folder: Path, hashes: dict, skip: Path) -> tuple[list[str], dict]:
    """A line per file under `folder` (hidden files, the scrape's own and the folder `skip`, the
    runs, left out), and the tables' hashes by path: [size, mtime_ns, sha256], reused from
    `hashes` while both match."""
    lines, kept = [], {}
    for path in files(folder, skip.resolve()):
        name, stat = path.relative_to(folder).as_posix(), path.stat()
        if path.suffix.lower() not in TABLE_SUFFIXES:
            lines.append(f"{name}\t{stat.st_size} bytes\tmtime {stat.st_mtime_ns}")
            continue
        key = [stat.st_size, stat.st_mtime_ns]
        known = hashes.get(name)
        kept[name] = [*key, known[2] if known and known[:2] == key else sha256_file(path)]
        lines.append(f"{name}\tsha256 {kept[name][2]}")
    return lines, kept


def files(folder: Path, skip: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        mine = WRITTEN_BY_SCRAPE if here == folder else ()
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in mine and (here / d).resolve() != skip)
        found += [here / n for n in sorted(names) if not n.startswith(".") and n not in mine]
    return found


def _read_hashes(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
