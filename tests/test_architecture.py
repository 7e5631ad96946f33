"""The package's import graph keeps its shape: wings in the order data flows through a run, each
importing only the base and the wings before it, and no module importing back into a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ddpinfer"

LAYERS = ["base", "rundir", "launch", "inputs", "plan", "compute", "results", "top"]
"""Lowest first. ``base``: the shared pieces (the ``config`` package, errors, faults) at the
package root; ``rundir``: the run directory's files; ``top``: the runner and the entry points
that assemble the wings."""
TOP = {"runner", "__main__"}
BASE_PACKAGES = {"config"}
MOST_TOP_MODULES = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # ddpinfer/__init__
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] in BASE_PACKAGES:
        return "base"
    return "top" if parts[1] in TOP else "base"


def imports(path: Path, module: str) -> set[str]:
    """The ddpinfer modules ``path`` imports (``from ddpinfer.x import y`` counts as
    ``ddpinfer.x.y`` when that is a module, else ``ddpinfer.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ddpinfer"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpinfer"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    found.discard(module)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: imports(p, m) for m, p in MODULES.items()}


def test_every_module_is_in_a_known_wing():
    wings = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    known = set(LAYERS) | BASE_PACKAGES
    assert wings <= known, f"a wing the layering does not know: {wings - known}"


def test_few_modules_sit_loose_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MOST_TOP_MODULES, f"{len(loose)} modules at the top: {loose}"


def test_no_wing_imports_a_wing_after_it_in_the_flow():
    upward = [
        f"{m} ({layer(m)}) imports {d} ({layer(d)})"
        for m, deps in GRAPH.items()
        for d in deps
        if LAYERS.index(layer(d)) > LAYERS.index(layer(m))
    ]
    assert not upward, "imports that run up the flow:\n" + "\n".join(upward)


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(GRAPH.get(m, ())):
            if d not in GRAPH:
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join([*path[path.index(d) :], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
