"""The layout's rules, read from the code's import graph (built with `ast`, nothing imported to build it).

- No import circles anywhere in runbook/, flows/, tasks/, deployments/ (the drill's included). Every import
  counts: at module level, inside a function (a "lazy" import is still a dependency) and under `if TYPE_CHECKING:`
  (a circle of types is still a circle: put what both sides need in a lower module, or a Protocol).
- Imports point downward, `deployments → flows → tasks → runbook`: runbook/ never imports flows/, tasks/ or
  deployments/; tasks/ never imports flows/ or deployments/; flows/ never imports deployments/.
- Flows reach vendors only through tasks/: flows/ imports nothing of runbook/clients/ but runbook/clients/types.py
  (the data types tasks return, no client). runbook/clients/ knows HTTP and nothing of Prefect.
- Commands that live outside runbook/ (deployments/up.py, deployments/drill.py) reach `runbook` as entry points of
  the group `runbook.commands`; the installed metadata must name the ones pyproject.toml declares.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runbook", "flows", "tasks", "deployments")
CLIENT_TYPES = "runbook.clients.types"


@dataclass(frozen=True)
class Edge:
    """One import: `source` imports `target` (a module of ours, or a third-party top-level name) at file:line."""

    source: str
    target: str
    line: int

    def where(self) -> str:
        """Return `path:line` of the import."""
        return f"{MODULES[self.source].relative_to(ROOT)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {
    _module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
}


def _ours(name: str) -> str | None:
    """Return the module of ours that importing `name` reaches (its longest existing prefix), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Return the dotted names an import statement asks for (`from a import b` asks for a.b, then a)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against this module's package
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    return [f"{base}.{alias.name}" for alias in node.names] or [base]


def _literal_import_module(node: ast.Call) -> str | None:
    """Return the module of `importlib.import_module("x.y")` / `__import__("x.y")` with a literal name."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def _edges() -> list[Edge]:
    edges: list[Edge] = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = _imported_names(module, node)
            elif isinstance(node, ast.Call) and (literal := _literal_import_module(node)):
                names = [literal]
            else:
                continue
            for name in names:
                target = _ours(name) or name.split(".")[0]
                if target and target != module:
                    edges.append(Edge(module, target, node.lineno))
    return edges


EDGES = _edges()


def _cycles(edges: list[Edge]) -> list[list[Edge]]:
    """Return one circle of imports per strongly connected group of modules (Tarjan), as its edges."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        if e.target in MODULES:
            graph.setdefault(e.source, {}).setdefault(e.target, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    def circle(group: set[str]) -> list[Edge]:
        start = min(group)
        paths: dict[str, list[Edge]] = {start: []}
        frontier = [start]
        while frontier:  # breadth first inside the group: the shortest way back to the start
            nxt = []
            for v in frontier:
                for w, e in sorted(graph.get(v, {}).items()):
                    if w == start:
                        return [*paths[v], e]
                    if w in group and w not in paths:
                        paths[w] = [*paths[v], e]
                        nxt.append(w)
            frontier = nxt
        raise AssertionError(f"no circle through {start}")  # pragma: no cover - a group always has one

    return [circle(g) for g in groups]


def _forbidden(edge: Edge) -> str | None:
    """Return why an import breaks the layout, or None."""
    source, target = edge.source.split(".")[0], edge.target.split(".")[0]
    if source == "runbook" and target in ("flows", "tasks", "deployments"):
        return "runbook/ is the plain core: it never imports flows/, tasks/ or deployments/"
    if source == "tasks" and target in ("flows", "deployments"):
        return "tasks/ sits below flows/ and deployments/"
    if source == "flows" and target == "deployments":
        return "flows/ sits below deployments/"
    if source == "flows" and edge.target.startswith("runbook.clients") and edge.target != CLIENT_TYPES:
        return f"flows reach vendors only through tasks/ (data types: {CLIENT_TYPES})"
    if edge.source.startswith("runbook.clients") and target == "prefect":
        return "runbook/clients knows HTTP and nothing of Prefect (tasks/ add retries and records)"
    return None


def test_the_graph_sees_every_package() -> None:
    """The check reads the code it guards (a renamed folder would otherwise pass silently)."""
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    assert any(e.source == "flows.diagnose" and e.target == "flows.diagnose_database" for e in EDGES)


def test_no_import_circles() -> None:
    """No module reaches itself through imports, however lazy."""
    circles = _cycles(EDGES)
    described = ["\n".join(f"  {e.source} → {e.target}  ({e.where()})" for e in c) for c in circles]
    assert not circles, "import circles:\n" + "\n\n".join(described)


def test_imports_point_downward() -> None:
    """runbook → nothing above it; tasks → not flows/deployments; flows → vendors only through tasks."""
    bad = [f"{e.where()}: {e.source} imports {e.target}: {why}" for e in EDGES if (why := _forbidden(e))]
    assert not bad, "\n".join(bad)


def test_the_rules_catch_what_they_forbid() -> None:
    """The checks themselves: a circle is found and each direction rule fires (on made-up edges)."""
    circle = _cycles([Edge("runbook.models", "runbook.store", 1), Edge("runbook.store", "runbook.models", 2)])
    assert [[(e.source, e.target) for e in c] for c in circle] == [
        [("runbook.models", "runbook.store"), ("runbook.store", "runbook.models")]]
    assert _forbidden(Edge("runbook.store", "flows.respond", 1))
    assert _forbidden(Edge("runbook.cli.main", "deployments.up", 1))
    assert _forbidden(Edge("tasks.vercel", "flows.code_rollback", 1))
    assert _forbidden(Edge("flows.code_rollback", "runbook.clients.vercel", 1))
    assert not _forbidden(Edge("flows.code_rollback", CLIENT_TYPES, 1))
    assert not _forbidden(Edge("deployments.up", "deployments.serve", 1))


@pytest.mark.parametrize("module", [m for m in MODULES if not m.endswith("__main__")])
def test_every_module_imports(module: str) -> None:
    """Every module imports on its own terms (a moved name re-exported wrongly fails here, not in production)."""
    importlib.import_module(module)


def test_commands_outside_runbook_are_installed_entry_points() -> None:
    """`runbook up` and `runbook drill` reach the command line through the entry points pyproject.toml declares.

    A failure here after pyproject.toml changed means the installed metadata is stale: `make install`.
    """
    from runbook.cli.main import ENTRY_POINT_GROUP, build_parser, contributed_commands

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    installed = {f"{r.__module__}:{r.__name__}" for r in contributed_commands()}
    assert installed == set(declared.values()), "stale install: run `make install` (pip install -e .)"
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"up", "drill", "intake", "check", "report", "incidents"} <= set(commands)
