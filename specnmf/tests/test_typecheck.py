"""The type check of the package: ``python -m mypy -p specnmf`` passes, and the
protocols (specnmf/protocols.py) leave no ``Any`` in their signatures.

mypy reads its settings from pyproject.toml (``[tool.mypy]``), so the test
runs from a source checkout; the solver, engine and penalty classes are held
to their protocols there (docs/architecture.md).
"""

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import specnmf

ROOT = Path(specnmf.__file__).resolve().parents[1]
PROTOCOLS = ROOT / "specnmf" / "protocols.py"


def test_mypy_passes_on_the_package(tmp_path_factory):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("needs a source checkout: mypy's settings are in pyproject.toml")
    # one cache per test session: a cold check takes ~20 s, a warm one ~2 s
    cache = os.environ.get("SPECNMF_MYPY_CACHE") or str(tmp_path_factory.getbasetemp() / "mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "-p", "specnmf", "--cache-dir", cache],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr


def _protocol_classes(tree):
    return [node for node in tree.body if isinstance(node, ast.ClassDef)
            and any(isinstance(b, ast.Name) and b.id == "Protocol" for b in node.bases)]


def _names(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def test_protocols_have_no_any_in_their_signatures():
    tree = ast.parse(PROTOCOLS.read_text(encoding="utf-8"))
    # no name Any anywhere: not imported, not in an alias, not in an annotation
    assert "Any" not in _names(tree)
    classes = _protocol_classes(tree)
    assert {c.name for c in classes} >= {"SolverProtocol", "EngineProtocol", "PenaltyProtocol"}
    for cls in classes:
        for node in cls.body:
            if isinstance(node, ast.FunctionDef):
                args = node.args
                params = args.posonlyargs + args.args + args.kwonlyargs
                params = [a for a in params if a.arg != "self"]
                params += [a for a in (args.vararg, args.kwarg) if a is not None]
                # an unannotated parameter or return is an implicit Any
                missing = [a.arg for a in params if a.annotation is None]
                assert not missing, f"{cls.name}.{node.name}: unannotated {missing}"
                assert node.returns is not None, f"{cls.name}.{node.name}: no return annotation"
            elif isinstance(node, ast.Assign):
                pytest.fail(f"{cls.name}: attribute without annotation at line {node.lineno}")
