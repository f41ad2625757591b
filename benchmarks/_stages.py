"""What the benchmark scripts share: the machine's description, and running pipeline stages as
`make` would, timed and with their peak memory."""

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """The machine a row ran on: CPU architecture and cores, and the GPU when there is one."""
    import torch

    described = f"{platform.machine()}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        described += f", {torch.cuda.get_device_name()}"
    return described


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_gb: float  # the stage process's own peak resident memory


def stage(name: str, config: Path, overrides: list[str], cwd: Path, show: tuple[str, ...] = ()) -> Run:
    """`python -m pipeline NAME -c CONFIG OVERRIDES` in `cwd`. Only the stages named in `show`
    print their output."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", name, "-c", str(config), *overrides],
        cwd=cwd,
        stdout=None if name in show else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)  # wait4: this child's own rusage, not all children's
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, process.args)
    return Run(time.perf_counter() - start, usage.ru_maxrss / 2**20)  # ru_maxrss: KiB on Linux
