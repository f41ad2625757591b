"""Reading the competition's CSV tables, and naming their rows and cells in errors.

Line numbers in errors are the CSV's own (the header is line 1).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError


def line(index: int) -> int:
    """The CSV line of a 0-based data row (line 1 is the header)."""
    return index + 2


def read_csv(path: Path, *, rows_required: bool = True, **kwargs) -> pd.DataFrame:
    """A competition table; one without rows is an error unless `rows_required` is off."""
    if not path.is_file():
        raise PipelineError(f"{path} does not exist")
    try:
        frame = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise PipelineError(f"{path} cannot be read as CSV: {str(exc).strip().splitlines()[-1]}") from None
    if frame.empty and rows_required:
        raise PipelineError(f"{path} has a header but no rows")
    return frame


def show(value) -> str:
    """repr() of a table cell as the user wrote it: 99, not np.int64(99)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PipelineError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {list(frame.columns)[:8]}..."
        )
