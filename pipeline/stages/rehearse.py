"""`make rehearse`: the packaged notebook run here as Kaggle runs it, before anything is uploaded.

- In a tree shaped like Kaggle's: input/<competition> (the local competition folder),
  input/<dataset> (package/<name>/dataset), working/.
- In an environment holding only the Kaggle image (package.kaggle_image and what those need,
  at this machine's versions) and what the notebook installs from the bundle's wheels: a
  package the image lacks fails here as it would there.
- With the network cut for the kernel: it runs in a network namespace of its own (`unshare
  -rn`), talking to nbclient over Unix sockets.

Then its submission.csv must equal `make predict`'s for the same models, and its run time,
projected to the hidden test (package.hidden_test_rows, or the public test's rows times
package.hidden_scale), must fit package.time_limit.
"""

import datetime as dt
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline import config as C
from pipeline.data import sources
from pipeline.errors import PipelineError
from pipeline.files import tree_sha256, write_text
from pipeline.kaggle.bundle import competition_slug, dataset_slug, kernel_slug
from pipeline.kaggle.submission import read_submission
from pipeline.paths import PackageFiles, Paths


@dataclass(frozen=True)
class Timing:
    install: float  # seconds: the cell installing the wheels
    predict: float  # seconds: the cell predicting the test images
    wall: float  # seconds: the whole notebook, the kernel's start included


def run(cfg: C.Config) -> None:
    files = Paths.of(cfg).package
    if not files.expected_submission.exists():
        raise PipelineError(f"{files.root} holds no package: run `make package` first")
    check_network_cut()
    files.rehearsal.unlink(missing_ok=True)  # `make push` uploads only what passed its last rehearsal
    with tempfile.TemporaryDirectory(prefix="rehearsal-") as scratch:  # in /tmp: Unix socket paths stay short
        scratch = Path(scratch)
        kaggle = kaggle_tree(scratch / "kaggle", cfg, files)
        python = image_environment(scratch / "env", cfg.package.kaggle_image)
        timing = execute(files.notebook(kernel_slug(cfg)), kaggle, python, scratch, cfg.package.time_limit)
        rows = compare(kaggle / "working" / "submission.csv", files.expected_submission)
    projected = project(cfg, timing)
    line = f"rehearsal: submission.csv equals make predict's ({rows} rows); {check_time(cfg, projected, timing)}"
    record = {**asdict(timing), **asdict(projected), "submission_rows": rows, "summary": line}
    record["files"] = tree_sha256(files.root, leave_out=(files.rehearsal,))
    write_text(files.rehearsal, json.dumps(record))
    print(line)


def check_network_cut() -> None:
    """`unshare -rn` works here, or one line saying why not and what would make it: the notebook
    is never run with the network on instead."""
    if shutil.which("unshare") is None:
        raise PipelineError("the rehearsal cuts the notebook's network with `unshare -rn`, which is not on PATH")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        raise PipelineError(
            f"the rehearsal cuts the notebook's network in a user namespace (`unshare -rn`), which this machine"
            f" refuses ({why}): allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1;"
            " Ubuntu 24.04: kernel.apparmor_restrict_unprivileged_userns=0; Docker: --security-opt"
            " seccomp=unconfined --security-opt apparmor=unconfined) or rehearse elsewhere; the notebook never runs"
            " with the network on"
        )


@dataclass(frozen=True)
class Projection:
    public_rows: int
    hidden_rows: int
    seconds: float  # the notebook's run time on the hidden test: the prediction cell scaled by rows


def project(cfg: C.Config, timing: Timing) -> Projection:
    public = len(sources.read(cfg).test.table)
    hidden = cfg.package.hidden_test_rows or round(public * cfg.package.hidden_scale)
    return Projection(public, hidden, timing.wall - timing.predict + timing.predict * hidden / public)


def check_time(cfg: C.Config, projected: Projection, timing: Timing) -> str:
    """The run time projected to the hidden test, refused over package.time_limit; the figures."""
    figures = (
        f"{timing.wall:.0f} s offline here ({timing.install:.0f} s installing the wheels, {timing.predict:.0f} s "
        f"predicting {projected.public_rows} test images); projected to {projected.hidden_rows} hidden test "
        f"images: {_hours(projected.seconds)}"
    )
    if projected.seconds > C.seconds(cfg.package.time_limit):
        raise PipelineError(f"the notebook would run over package.time_limit={cfg.package.time_limit}: {figures}")
    return f"{figures}, within {cfg.package.time_limit}"


def kaggle_tree(root: Path, cfg: C.Config, files: PackageFiles) -> Path:
    """input/<competition> and input/<dataset> linked to the local folders, and working/."""
    (root / "input").mkdir(parents=True)
    (root / "working").mkdir()
    (root / "input" / competition_slug(cfg)).symlink_to(Path(cfg.data.dir).resolve())
    (root / "input" / dataset_slug(cfg)).symlink_to(files.dataset.root.resolve())
    return root


def image_environment(env: Path, image: list[str]) -> Path:
    """A virtual environment whose site-packages links only the image's distributions and what
    they require, from this interpreter's; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    for dist in required_closure(image):
        for entry in _top_level(dist):
            if not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
    return env / "bin" / "python"


def required_closure(names: list[str]) -> list[md.Distribution]:
    """The installed distributions named, and those they require on this platform; a name not
    installed here is left out (the image is what both have)."""
    found, queue = {}, list(names)
    while queue:
        name = canonicalize_name(queue.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(requirement.name)
    return list(found.values())


def _top_level(dist: md.Distribution) -> set[Path]:
    """The distribution's entries in site-packages: its packages, modules and .dist-info."""
    entries = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    return {Path(dist.locate_file(e)) for e in entries if e != "__pycache__"}


def execute(notebook: Path, kaggle: Path, python: Path, scratch: Path, limit: str) -> Timing:
    """Run the notebook in `kaggle`/working with the environment's python, network cut; a cell
    may take `limit` (a duration)."""
    book = nbformat.read(notebook, as_version=4)
    kernels = scratch / "kernels"
    (kernels / "rehearsal").mkdir(parents=True)
    spec = {
        "argv": ["unshare", "-rn", str(python), "-I", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Kaggle rehearsal",
        "language": "python",
        "env": {"PIPELINE_KAGGLE_ROOT": str(kaggle)},
    }
    (kernels / "rehearsal" / "kernel.json").write_text(json.dumps(spec))
    manager = KernelManager(
        kernel_name="rehearsal",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
        transport="ipc",  # Unix sockets: the kernel's own network namespace has no loopback to share
        ip=str(scratch / "kernel"),
    )
    working = {"metadata": {"path": str(kaggle / "working")}}
    client = NotebookClient(book, km=manager, timeout=int(C.seconds(limit)), resources=working)
    started = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as error:
        raise PipelineError(_failure(error)) from None
    except CellTimeoutError:
        raise PipelineError(f"a cell of the notebook ran over package.time_limit={limit}") from None
    except DeadKernelError as error:
        raise PipelineError(f"the notebook's kernel died: {error}") from None
    wall = time.perf_counter() - started
    code = [c for c in book.cells if c.cell_type == "code"]
    return Timing(install=_seconds(code[0]), predict=_seconds(code[-1]), wall=wall)


def _failure(error: CellExecutionError) -> str:
    if error.ename == "ModuleNotFoundError":
        return (
            f"the notebook failed offline: {error.evalue}; the Kaggle image of the rehearsal (package.kaggle_image) "
            "lacks it: add its distribution to package.wheels"
        )
    return f"the notebook failed offline: {error.ename}: {error.evalue}"


def _seconds(cell) -> float:
    times = cell.metadata["execution"]
    busy, idle = (
        dt.datetime.fromisoformat(times[k].replace("Z", "+00:00")) for k in ("iopub.status.busy", "iopub.status.idle")
    )
    return (idle - busy).total_seconds()


def compare(written: Path, expected: Path) -> int:
    """The notebook's submission against make predict's: the same rows and columns, labels equal,
    numbers within float32 noise; its row count."""
    if not written.exists():
        raise PipelineError(f"the notebook wrote no {written.name}")
    got, want = read_submission(written), read_submission(expected)
    if list(got.columns) != list(want.columns) or len(got) != len(want):
        raise PipelineError(
            f"the notebook's {written.name} has columns {list(got.columns)} and {len(got)} rows; make predict's "
            f"{list(want.columns)} and {len(want)}"
        )
    for column in want.columns:
        same = (
            np.isclose(got[column], want[column], rtol=1e-5, atol=1e-6)
            if pd.api.types.is_float_dtype(want[column])
            else got[column].astype(str) == want[column].astype(str)
        )
        if not same.all():
            row = int(np.flatnonzero(~np.asarray(same))[0])
            raise PipelineError(
                f"the notebook's {written.name} differs from make predict's in column {column!r}: {(~same).sum()} "
                f"rows, the first row {row} ({got[column].iloc[row]!r} against {want[column].iloc[row]!r})"
            )
    return len(want)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"
