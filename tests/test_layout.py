"""The packages' import graph, read with `ast` from the source (nothing is imported): which package may
use which, and no import cycle between modules.

Every import counts, at module level or inside a function, except those under `if TYPE_CHECKING:`
(never run). An import names the module it loads: `from storage import catalog` is an edge to
storage.catalog, `from storage import Settings` one to storage (its __init__), and relative imports
are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

PACKAGES = ("model", "synth", "storage", "indexer", "service", "cli", "migrations")


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported project module
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_name(path: Path, root: Path) -> str:
    """Dotted name of a source file under `root`: a package's __init__.py is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """{dotted name: file} of every .py file of `packages` under `root`."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement below `node`, skipping the bodies of `if TYPE_CHECKING:` (not their else)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes_of(other)
            continue
        yield from _import_nodes_of(child)


def _import_nodes_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _import_nodes(node)


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(project module, line) for each import in `source`, the code of module `name`; `known` holds
    the project's module names, anything else (the standard library, third parties) is left out."""

    def longest_known(dotted: str) -> str | None:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in known:
                return candidate
        return None

    found: list[tuple[str, int]] = []
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = longest_known(alias.name)
                if target is not None:
                    found.append((target, node.lineno))
            continue
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            keep = len(package) - (node.level - 1)
            if keep <= 0:
                raise ValueError(f"{name}: relative import beyond the top-level package (line {node.lineno})")
            base = ".".join(package[:keep] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            # `from pkg import sub` loads the submodule pkg.sub when there is one
            target = longest_known(f"{base}.{alias.name}") if alias.name != "*" else None
            if target != f"{base}.{alias.name}":
                target = longest_known(base)
            if target is not None:
                found.append((target, node.lineno))
    return found


def import_graph(root: Path = REPO_ROOT, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    modules = project_modules(root, packages)
    known = set(modules)
    edges = set()
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for target, line in imported_modules(path.read_text(encoding="utf-8"), name, is_package, known):
            if target != name:
                edges.add(Edge(name, target, line))
    return sorted(edges, key=lambda e: (e.source, e.target, e.line))


def strongly_connected(nodes: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """Tarjan's strongly connected components of the directed graph (iterative)."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
        succ.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(succ):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(succ[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(succ[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _package(module: str) -> str:
    return module.split(".")[0]


@pytest.fixture(scope="module")
def graph() -> list[Edge]:
    return import_graph()


def _crossing(graph: list[Edge], sources: set[str], targets: set[str]) -> list[str]:
    return [str(e) for e in graph if _package(e.source) in sources and _package(e.target) in targets]


# --- the rules --------------------------------------------------------------------------------------


def test_graph_covers_every_package(graph: list[Edge]) -> None:
    modules = project_modules(REPO_ROOT)
    assert {_package(m) for m in modules} == set(PACKAGES)
    # every package's modules use the project (a graph read wrongly would come out empty)
    assert {_package(e.source) for e in graph} == set(PACKAGES)


def test_service_imports_neither_indexer_nor_cli(graph: list[Edge]) -> None:
    assert _crossing(graph, {"service"}, {"indexer", "cli"}) == []


def test_model_synth_and_storage_import_no_application_package(graph: list[Edge]) -> None:
    assert _crossing(graph, {"model", "synth", "storage"}, {"indexer", "service", "cli"}) == []


def test_synth_imports_nothing_from_model(graph: list[Edge]) -> None:
    assert _crossing(graph, {"synth"}, {"model"}) == []


def test_only_cli_imports_cli(graph: list[Edge]) -> None:
    assert _crossing(graph, set(PACKAGES) - {"cli"}, {"cli"}) == []


def test_no_import_cycle_between_modules(graph: list[Edge]) -> None:
    cycles = [c for c in strongly_connected(project_modules(REPO_ROOT), graph) if len(c) > 1]
    described = [
        " <-> ".join(c) + ": " + "; ".join(str(e) for e in graph if e.source in c and e.target in c)
        for c in cycles
    ]
    assert described == []


# --- the reader itself, on made-up sources ----------------------------------------------------------

KNOWN = {"storage", "storage.catalog", "storage.db", "service", "service.api", "service.api.deps", "cli"}


def test_reader_resolves_import_forms() -> None:
    source = """
import os
import storage.db
from storage import catalog, Settings
from . import health
from .. import deps, schemas
from ..deps import get_state
import cli as command_line
"""
    known = KNOWN | {"service.api.routes", "service.api.routes.health"}
    found = imported_modules(source, "service.api.routes", is_package=True, known=known)
    assert sorted(found) == [
        ("cli", 8),
        ("service.api", 6),  # schemas is no module of service.api: a name of the package
        ("service.api.deps", 6),
        ("service.api.deps", 7),
        ("service.api.routes.health", 5),
        ("storage", 4),  # Settings is a name of the package
        ("storage.catalog", 4),
        ("storage.db", 3),
    ]


def test_reader_counts_function_imports_and_skips_type_checking_only() -> None:
    source = """
from typing import TYPE_CHECKING
import typing
if TYPE_CHECKING:
    from storage.catalog import Tile
else:
    from storage import db
if typing.TYPE_CHECKING:
    import cli
def later():
    from service.api import deps
    return deps
"""
    found = imported_modules(source, "model.views", is_package=False, known=KNOWN)
    assert sorted(found) == [("service.api.deps", 11), ("storage.db", 7)]


def test_relative_import_of_a_module_resolves_against_its_package() -> None:
    found = imported_modules("from .db import make_engine\n", "storage.catalog", False, KNOWN)
    assert found == [("storage.db", 1)]
    with pytest.raises(ValueError, match="beyond the top-level package"):
        imported_modules("from ... import x\n", "storage.catalog", False, KNOWN)


def test_cycle_finder_reports_only_real_cycles() -> None:
    edges = [Edge("a", "b", 1), Edge("b", "c", 1), Edge("c", "a", 1), Edge("c", "d", 1), Edge("d", "e", 1)]
    components = strongly_connected(["a", "b", "c", "d", "e", "f"], edges)
    assert [c for c in components if len(c) > 1] == [["a", "b", "c"]]
    assert sorted(map(tuple, components)) == [("a", "b", "c"), ("d",), ("e",), ("f",)]
