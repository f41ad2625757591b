"""The house's rules, measured from the imports with ast: every import counts, at the top of a
module or inside a function, so a lazy import is a dependency like any other."""

import ast
import functools
import re
from pathlib import Path

from pipeline.stage_table import INIT_ENTRY, STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_FLOORS, MAX_LINES = 7, 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement reaches, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def project_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def graph() -> dict[str, frozenset[str]]:
    """module -> the project modules it imports (a package's own __init__ left out of its members')."""
    edges = {}
    for module, path in MODULES.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for name in imported(node, module, path.name == "__init__.py"):
                found = project_module(name) if name.startswith("pipeline") else None
                if found and found != module and not module.startswith(found + "."):
                    targets.add(found)
        edges[module] = frozenset(targets)
    return edges


def floors() -> dict[str, int]:
    """A module's floor: 1 for one that imports nothing of the project, else one above its highest import."""
    edges, found, visiting = graph(), {}, set()

    def floor(module: str) -> int:
        if module not in found:
            assert module not in visiting, f"an import circle runs through {module}"
            visiting.add(module)
            found[module] = 1 + max((floor(m) for m in edges[module]), default=0)
            visiting.discard(module)
        return found[module]

    for module in edges:
        floor(module)
    return found


def test_no_import_circles():
    floors()


def test_at_most_seven_floors_of_imports():
    found = floors()
    highest = max(found, key=found.get)
    assert found[highest] <= MAX_FLOORS, f"{highest} is on floor {found[highest]}"


def test_no_stage_imports_another_stage():
    stages = {m for m in MODULES if m.startswith("pipeline.stages.")}
    crossing = {m: sorted(graph()[m] & stages) for m in stages if graph()[m] & stages}
    assert not crossing, f"what two stages share belongs a layer below: {crossing}"


def test_nothing_below_the_cli_imports_a_stage():
    above = {"pipeline.cli", "pipeline.__main__"}
    importers = {m for m, targets in graph().items() if m not in above and not m.startswith("pipeline.stages.")}
    reaching = {m for m in importers if any(t.startswith("pipeline.stages.") for t in graph()[m])}
    assert not reaching


def test_no_module_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_every_stage_entry_is_a_stage_module_and_make_spells_the_table():
    entries = [stage.entry for stage in STAGES.values()] + [INIT_ENTRY]
    for entry in entries:
        module, _, function = entry.partition(":")
        assert module.startswith("pipeline.stages.") and module in MODULES, entry
        assert f"def {function}(" in MODULES[module].read_text(), entry
    makefile = (PACKAGE.parent / "Makefile").read_text()
    assert re.search(r"^STAGES := (.*)$", makefile, re.M).group(1).split() == list(STAGES)


def test_only_the_study_module_names_optuna_privately():
    private = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = imported(node, module, path.name == "__init__.py")
            if any(n.startswith("optuna") and any(p.startswith("_") for p in n.split(".")) for n in names):
                private.add(module)
    assert private == {"pipeline.study"}
