"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import specnmf.estimator
import specnmf.objective


@pytest.mark.parametrize("module", [specnmf.estimator, specnmf.objective])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
