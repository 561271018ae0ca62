"""The examples in the docstrings run and print what they say.

Every module of the package whose docstrings have an Examples section is
listed here; ``test_every_module_with_examples_is_listed`` fails when a new
one is not (the pages of ``docs/`` are run by ``test_docs.py``).
"""

import doctest
import importlib
import pkgutil

import pytest

import specnmf

MODULES = [
    "specnmf.estimator",
    "specnmf.objective",
    "specnmf.selection",
    "specnmf.preprocess",
    "specnmf.solvers.nnls",
    "specnmf.datasets",
    "specnmf.datasets._simulate",
    "specnmf.datasets._ifu",
    "specnmf.io",
    "specnmf.ifu",
    "specnmf.interop",
    "specnmf._readers",
    "specnmf._packed",
    "specnmf.redshift",
]
#: modules whose examples need an optional package
NEEDS = {"specnmf.interop": "specutils"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_every_module_with_examples_is_listed():
    found = []
    for info in pkgutil.walk_packages(specnmf.__path__, "specnmf."):
        if ".tests" in info.name or info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # a module of an optional dependency that is not installed
            continue
        if doctest.DocTestFinder().find(module) and any(
                t.examples for t in doctest.DocTestFinder().find(module)):
            found.append(info.name)
    assert sorted(set(found) - set(MODULES)) == []
