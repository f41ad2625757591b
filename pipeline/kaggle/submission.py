"""Submission files: built in the competition's format, checked against the sample submission
before anything is written, recorded in submissions/ledger.csv; scored locally where the
competition folder holds a solution; uploaded with the Kaggle CLI."""

import contextlib
import datetime as dt
import fcntl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import tables, tasks
from pipeline.config import Config
from pipeline.data import sources
from pipeline.errors import PipelineError
from pipeline.files import sha256_file, write_csv
from pipeline.paths import SUBMISSIONS, Paths
from pipeline.records import StatedCV
from pipeline.tables import read_csv
from pipeline.tasks.base import Task

LEDGER_COLUMNS = [
    "file",
    "competition",
    "utc_time",
    "cv_metric",
    "cv_score",
    "cv_std",
    "cv_method",
    "models",
    "experiment",
    "tta",
    "config_hash",
    "git_commit",
    "git_dirty",
    "sha256",
    "local_score",
    "public_score",
    "kernel",  # a code competition's submission: the kernel and its version, not a file
    "kernel_version",
]


# --- formats -----------------------------------------------------------------------------------


def submission_format(cfg: Config, task: Task, sample: pd.DataFrame | None) -> str:
    return task.submission_format(cfg, sample) if cfg.predict.format == "auto" else cfg.predict.format


def read_sample(cfg: Config) -> pd.DataFrame | None:
    if cfg.data.sample_submission is None:
        return None
    return read_submission(Path(cfg.data.dir) / cfg.data.sample_submission)


def read_submission(path: Path, **kwargs) -> pd.DataFrame:
    """A file shaped as a submission (a sample, a submission, a solution) as Kaggle reads it: an
    empty cell is empty text (a run-length code of no mask), not a missing number."""
    return read_csv(path, keep_default_na=False, **kwargs)


def build(
    cfg: Config, table: pd.DataFrame, predictions: np.ndarray, task: Task, sample: pd.DataFrame | None, sizes
) -> pd.DataFrame:
    """The submission in the competition's format, columns named as the sample names them;
    `sizes` the test images' (height, width) in their files."""
    fmt, ids = submission_format(cfg, task, sample), table["id"].to_numpy()
    return task.submission(fmt, ids, predictions, sample, sizes=sizes)


# --- validation --------------------------------------------------------------------------------


def validate(frame: pd.DataFrame, sample: pd.DataFrame | None, known_labels: list | None = None) -> pd.DataFrame:
    """The frame in the sample's row order; any broken rule is an error naming it."""
    if sample is not None:
        if list(frame.columns) != list(sample.columns):
            raise PipelineError(
                f"submission columns {list(frame.columns)} differ from the sample's {list(sample.columns)}"
            )
        frame = _in_sample_order(frame, sample)
        for column in sample.columns:
            if pd.api.types.is_numeric_dtype(sample[column]) != pd.api.types.is_numeric_dtype(frame[column]):
                raise PipelineError(
                    f"submission column {column!r} is {frame[column].dtype}, the sample's is {sample[column].dtype}"
                )
    numeric = frame.select_dtypes("number")
    bad = ~np.isfinite(numeric.to_numpy(dtype=float))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise PipelineError(
            f"submission row {row + 1}, column {numeric.columns[col]!r}: {numeric.iat[row, col]} is not a finite number"
        )
    if known_labels is not None:
        unknown = ~frame.iloc[:, 1].astype(str).isin({str(c) for c in known_labels})
        if unknown.any():
            label = tables.show(frame.iloc[:, 1][unknown].iloc[0])
            raise PipelineError(f"submission label {label} is not a known class")
    return frame


def _in_sample_order(frame: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    key = row_key(sample)
    ours, theirs = (tuple_keys(f, key) for f in (frame, sample))
    named = f"{key[0]!r} column" if len(key) == 1 else f"columns ({', '.join(key)})"
    if ours.duplicated().any():
        raise PipelineError(f"submission id {ours[ours.duplicated()].iloc[0]!r} appears twice")
    if set(ours) != set(theirs):
        missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        example = f"{missing[0]!r} is missing" if missing else f"{extra[0]!r} is not in the sample"
        raise PipelineError(f"submission ids differ from the sample's {named}: {example}")
    order = pd.Series(np.arange(len(frame)), index=ours.to_numpy())
    return frame.iloc[order[theirs.to_numpy()].to_numpy()].reset_index(drop=True)


def row_key(sample: pd.DataFrame) -> list[str]:
    """The columns that name a sample's rows: its first, or where an id repeats (a row per image
    and class, Severstal's), that and the column of fewest values that tells its rows apart, a
    column of numbers before one of text (the class before a placeholder answer)."""
    first = sample.columns[0]
    if not sample[first].duplicated().any():
        return [first]
    apart = [c for c in sample.columns[1:] if not sample.duplicated([first, c]).any()]
    if not apart:
        raise PipelineError(f"the sample submission's rows repeat: no column beside {first!r} tells them apart")
    return [first, min(apart, key=lambda c: (sample[c].nunique(), sample[c].dtype == object))]


def tuple_keys(frame: pd.DataFrame, key: list[str]) -> pd.Series:
    """Each row's `key` values as text: one value, or a tuple of them."""
    text = frame[key].astype(str)
    return text[key[0]] if len(key) == 1 else pd.Series(list(text.itertuples(index=False, name=None)))


# --- writing and the ledger --------------------------------------------------------------------


def validated(
    cfg: Config, table: pd.DataFrame, predictions: np.ndarray, task, *, sizes: np.ndarray | None = None
) -> pd.DataFrame:
    """The submission's rows in the competition's format, checked against its sample; `sizes`
    the test images' (height, width) in their files."""
    sample = read_sample(cfg)
    return validate(build(cfg, table, predictions, task, sample, sizes), sample, known_labels(cfg, task, sample))


def known_labels(cfg: Config, task: Task, sample: pd.DataFrame | None) -> list | None:
    """The labels a submission of one label per row may hold; None for the other formats."""
    return task.known_labels(submission_format(cfg, task, sample))


def checked_file(cfg: Config, path: str) -> pd.DataFrame:
    """The submission file at `path` checked as `make predict` checks the files it writes."""
    data = sources.read(cfg)
    task = tasks.get(cfg.competition.task).of_data(cfg, data.train.table, data.targets)
    sample = read_sample(cfg)
    return validate(read_submission(Path(path)), sample, known_labels(cfg, task, sample))


def write(
    cfg: Config,
    paths: Paths,
    table: pd.DataFrame,
    predictions: np.ndarray,
    task,
    stated: StatedCV,
    *,
    sizes: np.ndarray | None = None,
) -> Path:
    """The validated submission file and its ledger row with the CV of the models in it: both or
    neither."""
    frame = validated(cfg, table, predictions, task, sizes=sizes)
    stamp = dt.datetime.now(dt.UTC)
    with locked_ledger():
        path = _new_file(cfg.competition.name, f"{stamp:%Y%m%dT%H%M%SZ}_{stated.models}", f"_{stated.score:.5f}.csv")
        try:
            write_csv(path, frame)
            _append({**ledger_row(cfg, stated, str(path), stamp), "sha256": sha256_file(path)})
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return path


def ledger_row(cfg: Config, stated: StatedCV, file: str, stamp: dt.datetime) -> dict:
    """What every ledger row holds: the file (or kernel), when, the CV it states and how, and
    what made it."""
    return {
        "file": file,
        "competition": cfg.competition.name,
        "utc_time": stamp.isoformat(timespec="seconds"),
        "cv_metric": stated.metric,
        "cv_score": stated.score,
        "cv_std": stated.std,
        "cv_method": stated.method,
        "models": stated.models,
        "experiment": stated.experiment,
        "tta": " ".join(cfg.predict.tta) or "none",
        "config_hash": cfg.fingerprint(),
        **_git_state(),
    }


def _new_file(competition: str, stem: str, suffix: str) -> Path:
    """A name no earlier submission has: two predictions in the same second must not share a file."""
    folder = SUBMISSIONS.folder(competition)
    path, copy = folder / f"{stem}{suffix}", 1
    while path.exists():
        copy += 1
        path = folder / f"{stem}-{copy}{suffix}"
    return path


def read_ledger() -> pd.DataFrame:
    """The ledger; one with a row that is not a submission's (a merge's conflict markers, a
    hand edit) is an error naming its line."""
    if not SUBMISSIONS.ledger.exists():
        return pd.DataFrame(columns=LEDGER_COLUMNS)
    types = {"git_commit": str, "config_hash": str, "cv_method": str}
    ledger = read_csv(SUBMISSIONS.ledger, rows_required=False, dtype=types)
    ledger = ledger.reindex(columns=LEDGER_COLUMNS)  # a ledger from an older version gains the new columns
    broken = ledger["file"].isna() | pd.to_datetime(ledger["utc_time"], errors="coerce", utc=True).isna()
    if broken.any():
        row = int(np.flatnonzero(broken)[0])
        raise PipelineError(
            f"{SUBMISSIONS.ledger} line {row + 2} is not a submission's row (it starts"
            f" {str(ledger['file'].iloc[row])[:40]!r}; a merge's conflict markers?): mend the file"
        )
    return ledger


def ledger_name(file: str) -> str:
    """`file` as the ledger names it, whichever path reaches it (./x, absolute, a link); else as given."""
    target = Path(file).resolve()
    return next((name for name in read_ledger()["file"] if Path(name).resolve() == target), file)


@contextlib.contextmanager
def locked_ledger() -> Iterator[None]:
    """Hold the ledger against every other process's update (two `make predict` at once); a
    submissions/ that cannot be written is said before anything is."""
    try:
        SUBMISSIONS.root.mkdir(parents=True, exist_ok=True)
        handle = open(SUBMISSIONS.ledger_lock, "a")  # noqa: SIM115 (held for the block)
    except OSError as exc:
        raise PipelineError(
            f"{SUBMISSIONS.root}/ cannot be written ({exc.strerror}): a submission needs it for its ledger row"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def add_to_ledger(row: dict) -> None:
    with locked_ledger():
        _append(row)


def _append(row: dict) -> None:
    ledger, new = read_ledger(), pd.DataFrame([row]).reindex(columns=LEDGER_COLUMNS)
    write_csv(SUBMISSIONS.ledger, pd.concat([ledger, new], ignore_index=True) if len(ledger) else new)


def update_ledger(file: str, **values) -> None:
    with locked_ledger():
        ledger = read_ledger()
        for key, value in values.items():
            ledger[key] = ledger[key].astype(object)
            ledger.loc[ledger["file"] == file, key] = value
        write_csv(SUBMISSIONS.ledger, ledger)


def _git_state() -> dict:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain")) if commit else ""}


def ledger_row_of(path: str) -> pd.Series | None:
    ledger = read_ledger()
    mine = ledger[ledger["file"] == path]
    return mine.iloc[-1] if len(mine) else None


def newest(cfg: Config, file: str | None) -> str:
    """The named submission, or this competition's newest in the ledger."""
    if file:
        if not Path(file).is_file():
            raise PipelineError(f"submission file {file} does not exist")
        return ledger_name(file)
    ledger, where = read_ledger(), SUBMISSIONS.ledger
    mine = ledger[ledger["competition"] == cfg.competition.name]
    if mine.empty:
        raise PipelineError(f"no submission of {cfg.competition.name} in {where}: run `make predict` first")
    path = str(mine.sort_values("utc_time")["file"].iloc[-1])
    if not Path(path).exists():
        raise PipelineError(f"the newest submission in {where}, {path}, no longer exists: name one with FILE=...")
    return path
