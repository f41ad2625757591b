"""What a Kaggle code competition's bundle is made of: the project's wheel and package.wheels
built for `pip --no-index`, the dataset and kernel metadata, and the inference notebook that
calls offline.submit; and the dataset, kernel and competition slugs the package, rehearse and
push stages share."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.records import Bundle

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SOURCE_FILES = ("pyproject.toml", "README.md")  # what the wheel's build reads besides pipeline/
OWNER_PLACEHOLDER = "your-kaggle-username"  # `make push` refuses it: set package.owner


def build_wheels(requirements: list[str], folder: Path) -> list[str]:
    """The project's own wheel, and one per package.wheels requirement (no dependencies: the
    notebook installs exactly these); their file names."""
    if not (PROJECT_ROOT / "pyproject.toml").exists():
        raise PipelineError(f"make package builds the project's wheel from its source tree; {PROJECT_ROOT} has none")
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as source:  # setuptools builds in the tree: a copy keeps ours clean
        for name in SOURCE_FILES:
            shutil.copy(PROJECT_ROOT / name, source)
        caches = shutil.ignore_patterns("__pycache__")
        shutil.copytree(PROJECT_ROOT / "pipeline", Path(source) / "pipeline", ignore=caches)
        _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder), source)
    if requirements:
        _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(folder), *requirements)
    return sorted(p.name for p in folder.glob("*.whl"))


def _pip(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if run.returncode:
        last = (run.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise PipelineError(f"pip {args[0]} for the package failed: {last}")


def dataset_slug(cfg: C.Config) -> str:
    return cfg.package.dataset or f"{cfg.competition.name}-models"


def kernel_slug(cfg: C.Config) -> str:
    return cfg.package.kernel or f"{cfg.competition.name}-inference"


def competition_slug(cfg: C.Config) -> str:
    return cfg.competition.kaggle or cfg.competition.name


def _owner(cfg: C.Config) -> str:
    return cfg.package.owner or OWNER_PLACEHOLDER


def dataset_metadata(cfg: C.Config) -> dict:
    return {
        "title": f"{cfg.competition.name} models",
        "id": f"{_owner(cfg)}/{dataset_slug(cfg)}",
        "licenses": [{"name": "CC0-1.0"}],
    }


def kernel_metadata(cfg: C.Config) -> dict:
    """Kaggle's kernel-metadata.json: the competition and the dataset as sources, internet off."""
    accelerator = cfg.package.accelerator
    return {
        "id": f"{_owner(cfg)}/{kernel_slug(cfg)}",
        "title": kernel_slug(cfg),  # Kaggle derives the slug from the title
        "code_file": f"{kernel_slug(cfg)}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": cfg.package.private,
        "enable_gpu": accelerator.startswith("Nvidia"),
        "enable_tpu": accelerator.startswith("Tpu"),
        "enable_internet": False,
        "dataset_sources": [f"{_owner(cfg)}/{dataset_slug(cfg)}"],
        "competition_sources": [competition_slug(cfg)],
        "kernel_sources": [],
        "model_sources": [],
    }


def notebook(cfg: C.Config, wheels: list[str], bundle: Bundle) -> nbformat.NotebookNode:
    """Install the bundled wheels offline, then predict with offline.submit."""
    stated = bundle.stated
    setup = f"""import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Kaggle's tree; `make rehearse` points this at its own copy of it
KAGGLE = Path(os.environ.get("PIPELINE_KAGGLE_ROOT", "/kaggle"))
DATASET = KAGGLE / "input" / {dataset_slug(cfg)!r}
COMPETITION = KAGGLE / "input" / {competition_slug(cfg)!r}
WHEELS = {wheels!r}
missing = [w for w in WHEELS if not (DATASET / "wheels" / w).exists()]
if missing:
    raise FileNotFoundError(f"wheel {{missing[0]}} is not in {{DATASET / 'wheels'}}")
subprocess.run(
    [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *(str(DATASET / "wheels" / w) for w in WHEELS)],
    check=True,
)"""
    predict_cell = """from pipeline.kaggle import offline

offline.submit(DATASET, COMPETITION, KAGGLE / "working" / "submission.csv")"""
    intro = (
        f"# {cfg.competition.name}: inference\n\n"
        f"Made by `make package`: {stated.models} models ({stated.experiment}), "
        f"CV {stated.metric} {stated.score:.5f} ± {stated.std:.5f} ({stated.method})."
    )
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells = [
        nbformat.v4.new_markdown_cell(intro),
        nbformat.v4.new_code_cell(setup),
        nbformat.v4.new_code_cell(predict_cell),
    ]
    return book
