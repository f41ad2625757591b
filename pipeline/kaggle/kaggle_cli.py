"""The Kaggle CLI, the only way the pipeline talks to Kaggle: download a competition, submit a
file, read back its public score; for code competitions, upload a dataset, push a kernel and
submit a version of it. Credentials are the CLI's to find; they never reach our output. The
command lines are built by the *_args functions, which the tests parse with the installed CLI's
own parser."""

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

TIMEOUT_S = 3600


def _executable() -> str:
    """`kaggle` on PATH, else beside this Python (the project's .venv/bin, off PATH under make)."""
    beside = Path(sys.executable).parent / "kaggle"
    path = shutil.which("kaggle") or (str(beside) if os.access(beside, os.X_OK) else None)
    if path is None:
        raise PipelineError(
            "the Kaggle CLI is not installed: `pip install kaggle`, then `kaggle auth login` (or an API token)"
        )
    return path


# what a CLI that cannot reach kaggle.com says (requests' and urllib3's words)
OFFLINE = re.compile(
    r"Failed to establish a new connection|Max retries exceeded|Name or service not known|"
    r"Temporary failure in name resolution|Network is unreachable|Connection refused|ConnectionError",
    re.IGNORECASE,
)


def reachable(host: str = "www.kaggle.com") -> bool:
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return False
    return True


def _config_dirs() -> list[Path]:
    """Where the CLI (2.x) looks for kaggle.json and access_token."""
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    given = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else []
    return [*given, Path.home() / ".kaggle", xdg]


def _secrets() -> list[str]:
    """Every credential the CLI accepts, as found here: environment variables, access_token files
    and kaggle.json keys."""
    found = [os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME")]
    for folder in _config_dirs():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found.append((folder / "access_token").read_text().strip())
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found.append(json.loads((folder / "kaggle.json").read_text()).get("key", ""))
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def _token_here() -> bool:
    """Whether a credential the CLI reads is here (its OAuth cache aside)."""
    files = [folder / name for folder in _config_dirs() for name in ("access_token", "kaggle.json")]
    return any(os.environ.get(n) for n in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")) or any(f.is_file() for f in files)


def _scrub(text: str) -> str:
    """The CLI's words with every credential taken out."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def _last_words(output: str) -> str:
    """The line that says why the CLI failed: no network when it says so, or when it asks for
    credentials that are here but kaggle.com cannot be reached to check them; about
    authentication when it says so; else its last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()] or ["no output"]
    about_credentials = [line for line in lines if "authenticat" in line.lower()]
    offline = [line for line in lines if OFFLINE.search(line)]
    if offline or (about_credentials and _token_here() and not reachable()):
        return f"kaggle.com cannot be reached from here (no network?): {(offline or about_credentials)[-1]}"
    if about_credentials:
        return f"{about_credentials[0]} (kaggle auth login, KAGGLE_API_TOKEN, ~/.kaggle/access_token or kaggle.json)"
    return lines[-1]


def run(*args: str) -> str:
    """`kaggle ARGS`; its stdout with credentials scrubbed, or a one-line error with the CLI's
    own words. Credentials are the CLI's to find and to say are missing."""
    executable = _executable()
    try:
        result = subprocess.run([executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`kaggle {' '.join(args[:2])}` did not finish in {TIMEOUT_S} s") from None
    if result.returncode != 0:
        words = _last_words(result.stderr if result.stderr.strip() else result.stdout)
        raise PipelineError(f"`kaggle {' '.join(args[:2])}` failed: {_scrub(words)}")
    return _scrub(result.stdout)


def download(slug: str, folder: Path) -> None:
    """Download and unpack the competition's files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    run(*download_args(slug, folder))
    for archive in sorted(folder.glob("*.zip")):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(folder)
        archive.unlink()


def download_args(slug: str, folder: Path) -> list[str]:
    return ["competitions", "download", "-c", slug, "-p", str(folder)]


def submit_args(slug: str, file: Path, message: str) -> list[str]:
    return ["competitions", "submit", "-c", slug, "-f", str(file), "-m", message]


def submissions_args(slug: str) -> list[str]:
    return ["competitions", "submissions", "-c", slug, "--csv"]


def submit(slug: str, file: Path, message: str) -> None:
    run(*submit_args(slug, file, message))


def public_score(slug: str, file_name: str, wait_s: float, poll_s: float = 10.0) -> float | None:
    """The public score of our newest submission named `file_name`, polling until it is scored."""
    deadline = time.monotonic() + wait_s
    while True:
        listing = submissions_table(run(*submissions_args(slug)))
        ours = listing[listing["fileName"] == file_name]
        if len(ours) and pd.notna(ours["publicScore"].iloc[0]) and str(ours["publicScore"].iloc[0]).strip():
            return float(ours["publicScore"].iloc[0])
        if time.monotonic() + poll_s > deadline:
            return None
        time.sleep(poll_s)


def submissions_table(output: str) -> pd.DataFrame:
    """`competitions submissions --csv`: the CLI may print warnings (a config readable by others,
    a newer version) before the CSV, which starts at its fileName header."""
    lines = output.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("fileName,")), None)
    if header is None:
        raise PipelineError(f"`kaggle competitions submissions` printed no CSV: {_scrub(_last_words(output))}")
    return pd.read_csv(io.StringIO("\n".join(lines[header:])))


# --- code competitions: a dataset, a kernel, a kernel version submitted ------------------------


def dataset_status_args(dataset: str) -> list[str]:
    return ["datasets", "status", dataset]


def dataset_create_args(folder: Path, *, public: bool) -> list[str]:
    """Subfolders (models/, wheels/) go up zipped; Kaggle unpacks them."""
    return ["datasets", "create", "-p", str(folder), "-r", "zip", *(["-u"] if public else [])]


def dataset_version_args(folder: Path, message: str) -> list[str]:
    return ["datasets", "version", "-p", str(folder), "-m", message, "-r", "zip"]


def kernel_push_args(folder: Path, accelerator: str) -> list[str]:
    return ["kernels", "push", "-p", str(folder), *(["--accelerator", accelerator] if accelerator != "none" else [])]


def kernel_status_args(kernel: str) -> list[str]:
    return ["kernels", "status", kernel]


def kernel_submit_args(competition: str, kernel: str, version: int, message: str) -> list[str]:
    return [
        "competitions",
        "submit",
        competition,
        "-k",
        kernel,
        "-v",
        str(version),
        "-f",
        "submission.csv",
        "-m",
        message,
    ]


def upload_dataset(
    dataset: str, folder: Path, message: str, *, public: bool, wait_s: float, poll_s: float = 15.0
) -> None:
    """A new version of the dataset, or the dataset, from `folder`; returns once Kaggle has it ready."""
    try:
        run(*dataset_status_args(dataset))
        exists = True
    except PipelineError:
        exists = False
    run(*(dataset_version_args(folder, message) if exists else dataset_create_args(folder, public=public)))
    deadline = time.monotonic() + wait_s
    while "ready" not in run(*dataset_status_args(dataset)).lower():
        if time.monotonic() + poll_s > deadline:
            raise PipelineError(f"dataset {dataset} was not ready within {wait_s:.0f} s of its upload")
        time.sleep(poll_s)


def push_kernel(folder: Path, accelerator: str) -> int:
    """The kernel pushed (Kaggle runs it); its new version number."""
    out = run(*kernel_push_args(folder, accelerator))
    found = re.search(r"Kernel version (\d+) successfully", out)
    if found is None:
        last = (out.strip() or "no output").splitlines()[-1]
        raise PipelineError(f"`kaggle kernels push` reported no new version: {_scrub(last)}")
    return int(found.group(1))


def wait_for_kernel(kernel: str, wait_s: float, poll_s: float = 60.0) -> None:
    """Until the kernel's latest run completes; an error when it fails or outlasts `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        status = run(*kernel_status_args(kernel)).strip()
        if "COMPLETE" in status.upper():
            return
        if "ERROR" in status.upper() or "CANCEL" in status.upper():
            raise PipelineError(f"kernel {kernel} did not complete: {_scrub(status.splitlines()[-1])}")
        if time.monotonic() + poll_s > deadline:
            raise PipelineError(f"kernel {kernel} was still running after {wait_s:.0f} s: {_scrub(status)}")
        time.sleep(poll_s)


def submit_kernel(competition: str, kernel: str, version: int, message: str) -> None:
    run(*kernel_submit_args(competition, kernel, version, message))
