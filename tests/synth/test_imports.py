"""The generator's module graph: `synth/` imports none of the other project packages, and its
modules import one another without a cycle (counting imports inside functions too, so a cycle
cannot hide behind a local import; imports under `if TYPE_CHECKING:` never run and do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import synth

PACKAGE = "synth"
ROOT = Path(synth.__file__).resolve().parent
OTHER_PACKAGES = ("model", "service", "indexer", "storage", "cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at any depth, except the body of `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def resolve(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Absolute names of the modules an import statement loads (for `from M import x`: M.x where
    that is a module, else M)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = importer.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


FILES = sorted(ROOT.rglob("*.py"))
MODULES = {module_name(p): p for p in FILES}


def import_graph() -> dict[str, set[str]]:
    """Module -> every absolute module name it imports at run time."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in runtime_imports(tree):
            targets.update(resolve(node, name, path.name == "__init__.py"))
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def internal_graph() -> dict[str, set[str]]:
    return {m: {t for t in targets if t in MODULES} for m, targets in import_graph().items()}


def test_the_graph_sees_every_module_and_its_imports() -> None:
    graph = internal_graph()
    assert {"synth", "synth.world", "synth.generate", "synth.raster", "synth.objects"} <= set(graph)
    # `from synth import layout as L` and `from synth.world import World` are both edges.
    assert {"synth.layout", "synth.world", "synth.raster"} <= graph["synth.objects"]
    assert {"synth.buildings", "synth.vegetation", "synth.objects"} <= graph["synth.generate"]


def test_cycle_finder_reports_cycles_through_local_imports() -> None:
    source = "import synth.a\ndef f():\n    from synth import b\nif TYPE_CHECKING:\n    import synth.c\n"
    names = [n for node in runtime_imports(ast.parse(source)) for n in resolve(node, "synth.x", False)]
    assert names == ["synth.a", "synth"]  # `synth.b` is no module here: the package is the target
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_synth_modules_import_one_another_without_a_cycle() -> None:
    assert find_cycle(internal_graph()) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_synth_imports_no_other_project_package(module: str) -> None:
    foreign = {t for t in import_graph()[module] if t.split(".")[0] in OTHER_PACKAGES}
    assert not foreign, f"{module} imports {sorted(foreign)}"


def test_world_module_holds_only_the_type() -> None:
    from synth import world

    assert internal_graph()["synth.world"] <= {"synth.geo"}
    assert not hasattr(world, "generate_world")
