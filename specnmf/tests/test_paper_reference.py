"""The paper's solvers reproduce the published implementation's outputs."""

import numpy as np
import pytest

from specnmf import SpectralNMF
from specnmf.datasets import load_doublet


@pytest.mark.parametrize("solver", ["nearly", "shift"])
def test_reproduces_published_doublet_outputs(solver, doublet_reference):
    # 300 iterations from W_start (all ones) / H_start, as the published tests do
    X, ivar = load_doublet()
    ref = doublet_reference
    model = SpectralNMF(2, solver=solver, max_iter=300, tol=0).fit(
        X, ivar=ivar, templates=ref["templates_start"], coefficients=ref["coefficients_start"])
    templates, coefficients = ref[solver]
    assert model.n_iter_ == 300
    assert np.allclose(model.templates_, templates)
    assert np.allclose(model.coefficients_, coefficients)


def test_nearly_reference_has_exact_zeros_from_the_zero_division_rule(doublet_reference):
    # the published Nearly-NMF templates contain 308 exact zeros; reaching
    # them depends on resetting 0/0 entries to 1e-6 (see solvers.multiplicative)
    X, ivar = load_doublet()
    ref = doublet_reference
    model = SpectralNMF(2, max_iter=300, tol=0).fit(
        X, ivar=ivar, templates=ref["templates_start"], coefficients=ref["coefficients_start"])
    assert np.sum(ref["nearly"][0] == 0) == 308
    assert np.sum(model.templates_ == 0) == 308


def test_shift_default_is_minimal_shift():
    X, ivar = load_doublet()
    model = SpectralNMF(2, solver="shift", max_iter=1, tol=0, random_state=0).fit(X, ivar=ivar)
    assert model.shift_ == pytest.approx(-X.min())
