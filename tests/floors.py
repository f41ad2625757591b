"""`python tests/floors.py pyproject.toml`: a pip constraints file pinning every dependency (and
the dev extra) to its floor, so the test environment is the lowest one the project allows."""

import re
import sys
import tomllib
from pathlib import Path


def floors(pyproject: str) -> dict[str, str]:
    """Package name -> its `>=` floor."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    found = (re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", r) for r in requirements)
    return {m.group(1): m.group(2) for m in found if m}


if __name__ == "__main__":
    print("\n".join(f"{name}=={version}" for name, version in floors(sys.argv[1]).items()))
