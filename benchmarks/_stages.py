"""Running pipeline stages from a benchmark script, as `make` would, timed."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str, config: Path, overrides: list[str], cwd: Path, show: tuple[str, ...] = ()) -> float:
    """`python -m pipeline NAME -c CONFIG OVERRIDES` in `cwd`; its wall-clock seconds. Only the
    stages named in `show` print their output."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", name, "-c", str(config), *overrides],
        cwd=cwd,
        check=True,
        stdout=None if name in show else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start
