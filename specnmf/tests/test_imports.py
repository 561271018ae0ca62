"""The package's import graph: no cycle, and every engine module imports on its own.

A cycle (module A imports B, which imports A back, at module level or inside a
function) makes the result of an import depend on which module a user imports
first, and hides layering mistakes.  The graph is read from the sources (the
``import`` statements anywhere in a module, lazy ones included), so the test
does not depend on what happens to be imported already.  Imports under
``if TYPE_CHECKING:`` are left out: they never run.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import specnmf

PKG = Path(specnmf.__file__).resolve().parent
ROOT = PKG.parent


def _modules(package_dir):
    """``{dotted name: path}`` of the modules of a package, its tests left out."""
    out = {}
    for path in package_dir.rglob("*.py"):
        if "tests" in path.relative_to(package_dir).parts:
            continue
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _graph(package_dir):
    modules = _modules(package_dir)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name, path, modules):
    """The package's modules that ``name`` imports (a submodule's parents are not edges:
    Python has imported them before the submodule runs)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit_statement(stmt)
            else:
                visit_statement(child)

    def visit_statement(node):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            target = node.module
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:   # from package import module
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_scan_sees_lazy_imports_and_finds_a_cycle(tmp_path):
    # the engine and its dask module once imported each other, one of them lazily
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from . import c\ndef f():\n    from .a import g\n")
    (pkg / "c.py").write_text("from pkg import b\n")
    graph = _graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_the_package_has_no_import_cycle():
    graph = _graph(PKG)
    assert "specnmf.engine.base" in graph["specnmf.engine.dask"]
    assert "specnmf.engine.dask" in graph["specnmf.engine"]
    cycles = _cycles(graph)
    detail = {m: sorted(graph[m] & set(c)) for c in cycles for m in c}
    assert cycles == [], f"import cycles: {cycles}; edges inside them: {detail}"


@pytest.mark.parametrize("module", ["specnmf.engine", "specnmf.engine.base", "specnmf.engine.memory",
                                    "specnmf.engine.streamed", "specnmf.engine.dask",
                                    "specnmf.engine.factory", "specnmf.protocols"])
def test_each_engine_module_imports_first_in_a_fresh_interpreter(module):
    # first in a process, so that no other module has prepared its imports
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"import sys, {module}; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]   # dask is imported only when a DaskEngine is built
