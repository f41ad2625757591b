"""What the benchmark scripts share: the machine's description, and running pipeline stages as
`make` would, timed and with their peak memory."""

import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def init(name: str, scratch: Path) -> tuple[Path, str]:
    """`python -m pipeline init data/<name>` in `scratch`: the config it wrote, and what it
    found (its first line without the prefix)."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "init", f"data/{name}"], cwd=scratch, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(done.stderr.strip())
    found = re.sub(r"^init: data/\S+: ", "", done.stdout.splitlines()[0])
    return scratch / "configs" / f"{name}.yaml", found


def machine() -> str:
    """The machine a row ran on: CPU architecture and cores, and the GPU when there is one."""
    import torch

    described = f"{platform.machine()}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        described += f", {torch.cuda.get_device_name()}"
    return described


# A child forked from this process counts this process's pages (torch's among them) in its peak
# RSS until it execs, and Linux keeps that peak across the exec: a small Python in between starts
# the stage and reports the stage's own peak.
_MEASURED = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, status, usage = os.wait4(p.pid, 0); "
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); sys.exit(os.waitstatus_to_exitcode(status) % 256)"
)


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_gb: float  # the stage process's own peak resident memory


def stage(
    name: str,
    config: Path,
    overrides: list[str],
    cwd: Path,
    show: tuple[str, ...] = (),
    log: Path | None = None,
    code: Path | None = None,
) -> Run:
    """`python -m pipeline NAME -c CONFIG OVERRIDES` in `cwd`. Only the stages named in `show`
    print their output; `log` keeps it in a file instead. `code`: a folder holding another
    version's `pipeline` package to run in place of this one."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(code)} if code else None
    command = [sys.executable, "-m", "pipeline", name, "-c", str(config), *overrides]
    with tempfile.NamedTemporaryFile("r") as peak, open(log, "w") if log else contextlib.nullcontext() as kept:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURED, peak.name, *command],
            cwd=cwd,
            stdout=kept or (None if name in show else subprocess.DEVNULL),
            stderr=subprocess.STDOUT if kept else subprocess.PIPE,
            env=env,
            text=True,
        )
        if done.returncode:
            said = (done.stderr or "").strip().splitlines()[-1:] or [f"see {log}"]
            raise RuntimeError(f"{' '.join(command[2:4])} {' '.join(overrides)}: exit {done.returncode}: {said[0]}")
        return Run(time.perf_counter() - start, int(peak.read()) / 2**20)  # ru_maxrss: KiB on Linux
