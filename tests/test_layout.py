"""The package's shape: every registered command answers --help, and no module imports its way back to itself.

The cycle check reads every ``import`` in ``src/archer`` with ``ast``, including the ones inside functions (a lazy
import still ties two modules together; it only hides the circle until run time), and leaves out only imports
under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

from archer.cli import COMMANDS

SRC = ROOT / "src"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_registered_command_answers_help(name):
    module = importlib.import_module(COMMANDS[name][0])  # a command pointing at a missing module fails here
    assert callable(module.add_arguments) and callable(module.run)
    done = subprocess.run(
        [sys.executable, "-m", "archer.cli", name, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: archer {name}" in done.stdout


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The project modules one module imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in modules}


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (SRC / "archer").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(ast.parse(path.read_text()), package, set(files)) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles_in_the_package():
    graph = _import_graph()
    assert len(graph) > 40 and "archer.training.trainer" in graph  # the scan sees the package
    assert "archer.objective" in graph["archer.training.trainer"]  # and its imports
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle_hidden_inside_a_function():
    graph = {"a": {"b"}, "b": set(), "c": set()}
    tree = ast.parse("def f():\n    import a\n")
    graph["b"] = _imports(tree, "", set(graph))
    assert _cycles(graph) == [["a", "b"]]
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n")
    assert _imports(typed, "", set(graph)) == set()
