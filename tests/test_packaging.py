"""The suite runs at the floors pyproject.toml states: a floor is a version a test run has used."""

from importlib.metadata import version
from pathlib import Path

from floors import floors

ROOT = Path(__file__).resolve().parents[1]


def test_every_dependency_is_installed_at_its_floor():
    stated = floors(str(ROOT / "pyproject.toml"))
    assert {"numpy", "torch", "optuna", "requests"} <= set(stated)
    off = {name: (floor, version(name)) for name, floor in stated.items() if version(name) != floor}
    assert not off, f"installed versions differ from pyproject.toml's floors (floor, installed): {off}"
