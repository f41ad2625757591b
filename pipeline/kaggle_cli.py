"""The Kaggle CLI, the only way the pipeline talks to Kaggle: download a competition, submit a
file, read back its public score. Credentials are checked for, never read into output."""

import io
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

TIMEOUT_S = 3600


def _executable() -> str:
    path = shutil.which("kaggle")
    if path is None:
        raise PipelineError(
            "the Kaggle CLI is not installed: `pip install kaggle`, then put your API token in ~/.kaggle/kaggle.json"
        )
    return path


def _check_credentials() -> None:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    if not (folder / "kaggle.json").is_file():
        raise PipelineError(
            f"no Kaggle credentials: put your API token in {folder / 'kaggle.json'} "
            "(or set KAGGLE_USERNAME and KAGGLE_KEY)"
        )


def _scrub(text: str) -> str:
    """The CLI's words with any credential taken out."""
    for secret in (os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_USERNAME")):
        if secret:
            text = text.replace(secret, "***")
    return text


def run(*args: str) -> str:
    """`kaggle ARGS`; its stdout, or a one-line error with the CLI's last words."""
    executable = _executable()
    _check_credentials()
    try:
        result = subprocess.run([executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`kaggle {' '.join(args[:2])}` did not finish in {TIMEOUT_S} s") from None
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise PipelineError(f"`kaggle {' '.join(args[:2])}` failed: {_scrub(last)}")
    return result.stdout


def download(slug: str, folder: Path) -> None:
    """Download and unpack the competition's files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    run("competitions", "download", "-c", slug, "-p", str(folder))
    for archive in sorted(folder.glob("*.zip")):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(folder)
        archive.unlink()


def submit(slug: str, file: Path, message: str) -> None:
    run("competitions", "submit", "-c", slug, "-f", str(file), "-m", message)


def public_score(slug: str, file_name: str, wait_s: float, poll_s: float = 10.0) -> float | None:
    """The public score of our newest submission named `file_name`, polling until it is scored."""
    deadline = time.monotonic() + wait_s
    while True:
        listing = pd.read_csv(io.StringIO(run("competitions", "submissions", "-c", slug, "--csv")))
        ours = listing[listing["fileName"] == file_name]
        if len(ours) and pd.notna(ours["publicScore"].iloc[0]) and str(ours["publicScore"].iloc[0]).strip():
            return float(ours["publicScore"].iloc[0])
        if time.monotonic() + poll_s > deadline:
            return None
        time.sleep(poll_s)
