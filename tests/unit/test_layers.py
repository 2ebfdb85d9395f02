"""Imports point inward only (docs/architecture.md): the kernel imports nothing above it, the
libraries only the kernel, the coordinator never the node agent or MPyC, the node agent never the
coordinator, and nothing imports the outermost layer (the CLI and the demo).

Read from the source with `ast`, so an import inside a function counts as much as one at the top
of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tessera", "smpc", "synth", "api", "node_agent", "cli", "demo")
# what each package may import of the project's packages (itself aside)
ALLOWED = {
    "tessera": set(),
    "smpc": {"tessera"},
    "synth": {"smpc", "tessera"},
    "api": {"smpc", "synth", "tessera"},
    "node_agent": {"smpc", "synth", "tessera"},
    "cli": {"api", "node_agent", "smpc", "synth", "tessera", "demo"},
    "demo": {"api", "node_agent", "smpc", "synth", "tessera", "cli"},
}
FOREIGN = {"api": {"mpyc"}, "tessera": {"mpyc", "torch", "sdv", "fastapi", "sqlalchemy"}}


def imports(package: str) -> dict[str, set[str]]:
    """Each module of `package` (a path) and the top-level names it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_inward(package: str) -> None:
    forbidden = (set(PACKAGES) - {package} - ALLOWED[package]) | FOREIGN.get(package, set())
    wrong = {
        module: sorted(names & forbidden)
        for module, names in imports(package).items()
        if names & forbidden
    }
    assert not wrong, f"{package} imports what is above it: {wrong}"


def test_the_kernel_holds_no_command_line_or_demo() -> None:
    assert not (ROOT / "tessera" / "cli").exists() and not (ROOT / "tessera" / "demo").exists()
    assert (ROOT / "cli" / "main.py").exists() and (ROOT / "demo" / "scenario.py").exists()
