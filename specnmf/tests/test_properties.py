"""Property tests of the multiplicative solvers on random signed, weighted,
masked data: the claims of Green & Bailey's appendix and the invariances any
weighted least-squares fit must have."""

import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

from specnmf import SpectralNMF, chi2
from specnmf.solvers import SOLVERS as _REGISTRY

SOLVERS = sorted(_REGISTRY)


@st.composite
def problems(draw, min_k=1, max_k=3, max_missing=0.5, min_size=3):
    """Random signed data, random weights, ~0-50 % missing, a positive start."""
    n = draw(st.integers(min_size, 12))
    d = draw(st.integers(min_size, 14))
    k = draw(st.integers(min_k, min(max_k, n, d)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    truth = rng.gamma(1.5, 1.0, size=(n, k)) @ rng.gamma(1.0, 1.0, size=(k, d))
    noise = draw(st.floats(0.05, 3.0))
    X = truth + noise * rng.normal(size=(n, d))      # negative where noise wins
    ivar = rng.uniform(0.1, 10.0, size=(n, d))
    ivar[rng.uniform(size=(n, d)) < draw(st.floats(0.0, max_missing))] = 0.0
    C0 = rng.uniform(0.1, 2.0, size=(n, k))
    T0 = rng.uniform(0.1, 2.0, size=(k, d))
    return X, ivar, C0, T0


def _fit(solver, X, ivar, C0, T0, max_iter=25, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # zero-weight rows/pixels are legal here
        return SpectralNMF(C0.shape[1], solver=solver, max_iter=max_iter, tol=0, **kw).fit(
            X, ivar=ivar, templates=T0, coefficients=C0)


def _assert_non_increasing(values):
    values = np.asarray(values)
    slack = 1e-10 * values[0] + 1e-12         # float rounding only
    assert np.all(np.diff(values) <= slack), np.diff(values).max()


@pytest.mark.parametrize("solver", SOLVERS)
@given(problem=problems())
def test_chi2_never_increases(solver, problem):
    model = _fit(solver, *problem)
    _assert_non_increasing(model.chi2_)


@pytest.mark.parametrize("solver", SOLVERS)
@given(problem=problems())
def test_factors_stay_non_negative_and_finite(solver, problem):
    model = _fit(solver, *problem)
    for a in (model.templates_, model.coefficients_):
        assert np.all(np.isfinite(a))
        assert np.all(a >= 0)


@pytest.mark.parametrize("solver", ["nearly", "shift", "anls", "apg"])
@given(problem=problems())
def test_recorded_chi2_is_the_objective_of_the_data(solver, problem):
    # the history ends at the chi^2 of the returned factors (one objective)
    X, ivar = problem[0], problem[1]
    model = _fit(solver, *problem)
    expected = chi2(X, model.coefficients_, model.templates_, ivar=ivar)
    assert model.chi2_[-1] == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(problem=problems())
def test_nearly_and_shift_identical_on_non_negative_data(problem):
    X, ivar, C0, T0 = problem
    X = np.abs(X)
    a = _fit("nearly", X, ivar, C0, T0)
    b = _fit("shift", X, ivar, C0, T0)
    assert b.shift_ == 0.0
    np.testing.assert_array_equal(a.templates_, b.templates_)
    np.testing.assert_array_equal(a.coefficients_, b.coefficients_)


@pytest.mark.parametrize("solver", SOLVERS)
@given(problem=problems(), seed=st.integers(0, 1000))
def test_flux_under_zero_weight_has_no_influence(solver, problem, seed):
    X, ivar, C0, T0 = problem
    rng = np.random.default_rng(seed)
    X2 = X.copy()
    missing = ivar == 0
    X2[missing] = rng.normal(scale=100.0, size=missing.sum())
    X2[missing & (rng.uniform(size=X.shape) < 0.3)] = np.nan
    a = _fit(solver, X, ivar, C0, T0)
    b = _fit(solver, X2, ivar, C0, T0)
    np.testing.assert_array_equal(a.templates_, b.templates_)
    np.testing.assert_array_equal(a.coefficients_, b.coefficients_)


@pytest.mark.parametrize("solver", SOLVERS)
@given(problem=problems(), scale=st.sampled_from([0.25, 2.0, 1024.0]))
def test_scaling_all_ivar_leaves_the_solution_unchanged(solver, problem, scale):
    X, ivar, C0, T0 = problem
    a = _fit(solver, X, ivar, C0, T0)
    b = _fit(solver, X, ivar * scale, C0, T0)
    np.testing.assert_allclose(a.templates_, b.templates_, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(b.chi2_, scale * a.chi2_, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
@given(data=st.data(), seed=st.integers(0, 1000))
def test_permuting_spectra_permutes_coefficients(solver, data, seed):
    # the exact (NNLS) solvers choose among equal minima where a subproblem is
    # singular (a pixel seen by fewer spectra than components), and rounding
    # order decides which; the claim is for well-posed subproblems
    well_posed = dict(max_missing=0.0, min_size=4) if solver in ("anls", "apg") else {}
    X, ivar, C0, T0 = data.draw(problems(**well_posed))
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    a = _fit(solver, X, ivar, C0, T0)
    b = _fit(solver, X[perm], ivar[perm], C0[perm], T0)
    np.testing.assert_allclose(b.coefficients_, a.coefficients_[perm], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(b.templates_, a.templates_, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_and_float64_agree(solver):
    from .conftest import make_toy

    X, ivar, _ = make_toy(seed=3)
    kw = dict(solver=solver, max_iter=50, tol=0, random_state=1)
    m64 = SpectralNMF(3, dtype="float64", **kw).fit(X, ivar=ivar)
    m32 = SpectralNMF(3, dtype="float32", **kw).fit(X, ivar=ivar)
    assert m32.templates_.dtype == np.float32 and m64.templates_.dtype == np.float64
    assert m32.coefficients_.dtype == np.float32
    np.testing.assert_allclose(m32.chi2_, m64.chi2_, rtol=1e-3)
    _assert_non_increasing(m32.chi2_ * (1 - 1e-6))  # float32 rounding: compare loosely
    assert np.all(np.diff(m32.chi2_) <= 1e-5 * m32.chi2_[0])
