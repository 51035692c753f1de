"""No import cycles in the three packages, counting every import a module can execute.

A cycle makes import order matter (a half-initialised module seen from the other side) and hides
which module is the lower layer. Imports moved into a function to dodge the error still form a
cycle, so the graph is built from *every* ``import`` / ``from ... import`` statement in the source
(function bodies included, found with ``ast``) plus ``importlib.import_module("literal")`` calls.
Only imports under ``if TYPE_CHECKING:`` are left out: they never run.

Edges go to the most specific module an import names: ``from pkg import sub`` where ``pkg/sub.py``
exists is an edge to ``pkg.sub``; ``from pkg import name`` otherwise is an edge to ``pkg`` (its
``__init__``). The implicit import of a parent package by ``import pkg.sub`` is not an edge, as in
any cycle checker, since a package's ``__init__`` running before its submodules is not a cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "chatterbox_t3": ROOT / "packages/t3-vllm/src/chatterbox_t3",
    "chatterbox_s3gen": ROOT / "packages/s3gen/src/chatterbox_s3gen",
    "chatterbox_vllm": ROOT / "packages/chatterbox-meta/src/chatterbox_vllm",
}


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, source in SOURCES.items():
        for path in sorted(source.rglob("*.py")):
            parts = (package, *path.relative_to(source).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except those in the body of an ``if TYPE_CHECKING:`` block."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def _imports(module: str, path: Path, known: set[str]) -> list[Edge]:
    """The modules of ``known`` that ``module`` (source at ``path``) imports at run time."""

    def deepest_known(dotted: str) -> str | None:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in known:
                return candidate
        return None

    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []
    for node in _runtime_nodes(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.append(submodule if submodule in known else source)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        for target in targets:
            resolved = deepest_known(target)
            if resolved is not None and resolved != module:
                edges.append(Edge(resolved, node.lineno))
    return edges


def import_graph() -> tuple[dict[str, list[Edge]], dict[str, Path]]:
    files = _module_files()
    known = set(files)
    return {module: _imports(module, path, known) for module, path in files.items()}, files


def strongly_connected_components(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted({e.target for e in graph[root]})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({e.target for e in graph[child]}))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
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
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _one_cycle(graph: dict[str, list[Edge]], component: list[str]) -> list[tuple[str, Edge]]:
    """A shortest cycle through the component's first module, as (module, edge taken) steps."""
    members = set(component)
    start = component[0]
    previous: dict[str, tuple[str, Edge]] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target not in members:
                    continue
                if edge.target == start:
                    steps = [(node, edge)]
                    while node != start:
                        node, step = previous[node]
                        steps.append((node, step))
                    return steps[::-1]
                if edge.target not in previous:
                    previous[edge.target] = (node, edge)
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def describe_cycles(
    graph: dict[str, list[Edge]], files: dict[str, Path], package: str
) -> list[str]:
    """The cycles that pass through a module of ``package``, each with one example path."""
    reports = []
    for component in strongly_connected_components(graph):
        if not any(m == package or m.startswith(package + ".") for m in component):
            continue
        steps = _one_cycle(graph, component)
        chain = " -> ".join(
            f"{module} ({files[module].relative_to(ROOT)}:{edge.line})" for module, edge in steps
        )
        reports.append(f"{', '.join(component)}\n    e.g. {chain} -> {steps[0][0]}")
    return reports


def test_the_checker_finds_cycles_hidden_in_functions(tmp_path: Path) -> None:
    """The checker itself: a function-level import closing a loop is reported, one under
    TYPE_CHECKING is not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import thing\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
    )
    (package / "d.py").write_text("import pkg.c\n")
    modules = {f"pkg.{p.stem}": p for p in package.glob("[!_]*.py")} | {"pkg": package / "x"}
    graph = {
        name: _imports(name, path, set(modules)) if path.exists() else []
        for name, path in modules.items()
    }
    assert strongly_connected_components(graph) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("package", sorted(SOURCES))
def test_no_import_cycles(package: str) -> None:
    # The graph spans all three packages (a cycle could run through two of them); each package
    # is reported on its own so one package's cycle does not hide another's state.
    graph, files = import_graph()
    cycles = describe_cycles(graph, files, package)
    assert not cycles, f"import cycles through {package} (function-level imports count):\n" + (
        "\n".join(cycles)
    )
