"""Floors point one way: no import cycle among torchslim's modules.

The graph has an edge A -> B for every ``import B`` / ``from B import x`` in module A,
at module level or inside a function (a function-level import that dodges a cycle is still
a cycle), except under ``if TYPE_CHECKING:`` (annotations only, never run). ``from pkg import
sub`` counts as an edge to the submodule ``pkg.sub``; relative imports are resolved.
Runs in ``make lint``.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "torchslim"


def module_names(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file of the package at ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (see the module docstring)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets = [t for t in subs if t in modules] or [base]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a non-module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _edges_within(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    members = set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]


def test_torchslim_has_no_import_cycle() -> None:
    graph = import_graph(SRC)
    assert len(graph) > 60  # the whole package was read
    found = cycles(graph)
    assert not found, "import cycles (move the shared code down a floor):\n" + "\n".join(
        f"{component}: {_edges_within(graph, component)}" for component in found
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """A planted cycle through a function-level import is found; a TYPE_CHECKING import,
    a one-way import and a relative import are told apart correctly."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": """
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.high import High  # annotations only: no edge
                """,
            "pkg/high.py": "from pkg import low\nfrom . import mid\n",
            "pkg/mid.py": """
                import os

                def helper():
                    from pkg.sub.deep import thing  # the hidden back edge
                    return thing
                """,
            "pkg/sub/__init__.py": "",
            "pkg/sub/deep.py": "from ..high import x\nthing = 1\n",
        },
    )
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.low"] == set()
    assert graph["pkg.high"] == {"pkg.low", "pkg.mid"}
    assert graph["pkg.mid"] == {"pkg.sub.deep"}
    assert graph["pkg.sub.deep"] == {"pkg.high"}
    assert cycles(graph) == [["pkg.high", "pkg.mid", "pkg.sub.deep"]]
    (tmp_path / "pkg" / "mid.py").write_text("import os\n", encoding="utf-8")
    assert cycles(import_graph(tmp_path / "pkg")) == []
