"""SpectralNMF: API conventions, stopping rule, starts, transform, bad input."""

import warnings

import numpy as np
import pytest
from scipy.optimize import nnls

from specnmf import ConvergenceWarning, MissingDataWarning, SpectralNMF, chi2

from .conftest import make_toy


# -- scikit-learn conventions ---------------------------------------------------
def test_get_set_params_and_clone():
    from sklearn.base import clone

    model = SpectralNMF(3, solver="shift", max_iter=7, random_state=4)
    params = model.get_params()
    assert params["n_components"] == 3 and params["solver"] == "shift"
    twin = clone(model)
    assert twin is not model and twin.get_params() == params
    assert model.set_params(max_iter=9) is model and model.max_iter == 9
    with pytest.raises(ValueError, match="invalid parameter 'bogus'"):
        model.set_params(bogus=1)
    assert "solver='shift'" in repr(model)


def test_pipeline_and_fit_returns_self(toy):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, ivar, _ = toy
    X = np.where(ivar > 0, X, 0.0)
    model = SpectralNMF(3, random_state=0, max_iter=20, tol=0)
    assert model.fit(X) is model
    assert model.n_features_in_ == X.shape[1]
    pipe = make_pipeline(FunctionTransformer(lambda a: a * 2.0), SpectralNMF(3, random_state=0, max_iter=20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        coef = pipe.fit_transform(X)
        assert coef.shape == (X.shape[0], 3)
        assert pipe.transform(X).shape == (X.shape[0], 3)


def test_fitted_attributes(toy):
    X, ivar, _ = toy
    model = SpectralNMF(3, random_state=0, max_iter=30, tol=0).fit(X, ivar=ivar)
    assert model.templates_.shape == (3, X.shape[1])
    assert model.components_ is model.templates_
    assert model.coefficients_.shape == (X.shape[0], 3)
    assert model.chi2_.shape == (model.n_iter_ + 1,) == (31,)
    np.testing.assert_array_equal(model.objective_, model.chi2_)
    assert model.converged_ is False
    assert model.fit_transform(X, ivar=ivar).shape == (X.shape[0], 3)


def test_same_seed_same_fit(toy):
    X, ivar, _ = toy
    a = SpectralNMF(2, random_state=5, max_iter=20, tol=0).fit(X, ivar=ivar)
    b = SpectralNMF(2, random_state=5, max_iter=20, tol=0).fit(X, ivar=ivar)
    c = SpectralNMF(2, random_state=6, max_iter=20, tol=0).fit(X, ivar=ivar)
    np.testing.assert_array_equal(a.templates_, b.templates_)
    assert not np.array_equal(a.templates_, c.templates_)


# -- stopping rule -------------------------------------------------------------------
def test_tol_zero_runs_exactly_max_iter(toy):
    X, ivar, _ = toy
    model = SpectralNMF(2, tol=0, max_iter=13, random_state=0).fit(X, ivar=ivar)
    assert model.n_iter_ == 13 and not model.converged_


def test_tol_stops_on_relative_decrease(toy):
    X, ivar, _ = toy
    tol = 1e-3
    model = SpectralNMF(2, tol=tol, max_iter=5000, random_state=0).fit(X, ivar=ivar)
    assert model.converged_ and model.n_iter_ < 5000
    rel = -np.diff(model.chi2_) / model.chi2_[:-1]
    assert rel[-1] < tol and np.all(rel[:-1] >= tol)


def test_max_iter_reached_warns(toy):
    X, ivar, _ = toy
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        SpectralNMF(2, tol=1e-12, max_iter=3, random_state=0).fit(X, ivar=ivar)


# -- starts ------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvda"])
def test_inits_give_decreasing_fits(toy, init):
    X, ivar, _ = toy
    model = SpectralNMF(3, init=init, random_state=0, max_iter=40, tol=0).fit(X, ivar=ivar)
    assert np.all(np.diff(model.chi2_) <= 1e-10 * model.chi2_[0])
    assert np.all(model.templates_ >= 0)


def test_custom_start_is_used_and_not_modified(toy):
    X, ivar, _ = toy
    rng = np.random.default_rng(0)
    T0 = rng.uniform(size=(2, X.shape[1]))
    C0 = rng.uniform(size=(X.shape[0], 2))
    T0c, C0c = T0.copy(), C0.copy()
    zero = SpectralNMF(2, max_iter=0).fit(X, ivar=ivar, templates=T0, coefficients=C0)
    np.testing.assert_array_equal(zero.templates_, T0)
    np.testing.assert_array_equal(zero.coefficients_, C0)
    SpectralNMF(2, max_iter=5, tol=0).fit(X, ivar=ivar, templates=T0, coefficients=C0)
    np.testing.assert_array_equal(T0, T0c)
    np.testing.assert_array_equal(C0, C0c)


@pytest.mark.parametrize("given", ["templates", "coefficients"])
def test_one_factor_given_other_initialised(toy, given):
    X, ivar, _ = toy
    rng = np.random.default_rng(1)
    start = {"templates": rng.uniform(size=(2, X.shape[1])),
             "coefficients": rng.uniform(size=(X.shape[0], 2))}[given]
    model = SpectralNMF(2, max_iter=0, random_state=0).fit(X, ivar=ivar, **{given: start})
    np.testing.assert_array_equal(getattr(model, given + "_"), start)
    # the other factor is rescaled to the data, so the start fits better than unit scale
    assert np.isfinite(model.chi2_[0])


def test_input_arrays_never_modified(toy):
    X, ivar, _ = toy
    Xc, ivarc = X.copy(), ivar.copy()
    model = SpectralNMF(2, random_state=0, max_iter=5, tol=0).fit(X, ivar=ivar)
    model.transform(X, ivar=ivar)
    np.testing.assert_array_equal(X, Xc)       # NaN at the same places too
    np.testing.assert_array_equal(ivar, ivarc)


# -- transform -----------------------------------------------------------------------------
def test_transform_is_exact_weighted_nnls(toy):
    X, ivar, _ = toy
    model = SpectralNMF(3, random_state=0, max_iter=50, tol=0).fit(X, ivar=ivar)
    coef = model.transform(X, ivar=ivar)
    assert np.all(coef >= 0)
    Xf = np.where(ivar > 0, X, 0.0)
    for i in range(X.shape[0]):
        w = np.sqrt(ivar[i])
        ref, _ = nnls((model.templates_ * w).T, Xf[i] * w)
        ours = chi2(X[i:i + 1], coef[i:i + 1], model.templates_, ivar=ivar[i:i + 1])
        best = chi2(X[i:i + 1], ref[None], model.templates_, ivar=ivar[i:i + 1])
        assert ours <= best * (1 + 1e-8) + 1e-12
    # never worse than the fitted coefficients of the same spectra
    assert chi2(X, coef, model.templates_, ivar=ivar) <= model.chi2_[-1] * (1 + 1e-10)


def test_inverse_transform(toy):
    X, ivar, _ = toy
    model = SpectralNMF(2, random_state=0, max_iter=5, tol=0).fit(X, ivar=ivar)
    np.testing.assert_allclose(model.inverse_transform(model.coefficients_),
                               model.coefficients_ @ model.templates_)


def test_transform_before_fit_raises():
    with pytest.raises(AttributeError, match="not fitted"):
        SpectralNMF(2).transform(np.ones((2, 3)))


def test_transform_wrong_width_raises(toy):
    X, ivar, _ = toy
    model = SpectralNMF(2, random_state=0, max_iter=2, tol=0).fit(X, ivar=ivar)
    with pytest.raises(ValueError, match="pixels"):
        model.transform(np.ones((3, X.shape[1] + 1)))


# -- missing data ---------------------------------------------------------------------------
def test_zero_weight_spectrum_and_pixel_warn_once_and_stay_finite(toy):
    X, ivar, _ = toy
    ivar = ivar.copy()
    ivar[4] = 0
    ivar[:, 7] = 0
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = SpectralNMF(3, random_state=0, max_iter=30, tol=0).fit(X, ivar=ivar)
    missing = [w for w in rec if issubclass(w.category, MissingDataWarning)]
    assert len(missing) == 1 and "1 spectra and 1 pixels" in str(missing[0].message)
    assert np.all(np.isfinite(model.templates_)) and np.all(np.isfinite(model.chi2_))
    assert np.all(model.coefficients_[4] == 0)
    assert np.all(model.templates_[:, 7] == 0)


def test_nan_flux_allowed_where_ivar_zero(toy):
    X, ivar, _ = toy
    assert np.isnan(X).any()
    model = SpectralNMF(2, random_state=0, max_iter=5, tol=0).fit(X, ivar=ivar)
    assert np.all(np.isfinite(model.chi2_))


# -- bad input ----------------------------------------------------------------------------------
GOOD_X = make_toy(n=8, d=6, k=2, missing=0.0)[0]


@pytest.mark.parametrize("X, ivar, exc, match", [
    (GOOD_X, np.ones((8, 5)), ValueError, "ivar must have the shape of X"),
    (GOOD_X, -np.ones((8, 6)), ValueError, "ivar must be >= 0"),
    (GOOD_X, np.full((8, 6), np.nan), ValueError, "ivar contains NaN"),
    (GOOD_X, np.full((8, 6), np.inf), ValueError, "ivar contains NaN or inf"),
    (np.where(np.eye(8, 6) > 0, np.nan, GOOD_X), None, ValueError, "NaN/inf values where ivar > 0"),
    (np.where(np.eye(8, 6) > 0, np.inf, GOOD_X), np.ones((8, 6)), ValueError, "X\\[0, 0\\]"),
    (np.ones(6), None, ValueError, "X must be 2-D"),
    (np.ones((2, 3, 4)), None, ValueError, "X must be 2-D"),
    (np.ones((0, 6)), None, ValueError, "X is empty"),
    (np.ones((8, 0)), None, ValueError, "0 feature\\(s\\)"),
    (GOOD_X + 1j, None, ValueError, "Complex data not supported"),
    (np.array([["a", "b"], ["c", "d"]]), None, TypeError, "numeric"),
    (GOOD_X, np.ones((8, 6)) + 1j, ValueError, "ivar must be real"),
    (np.array([[1.0, {"a": 1}], [2.0, 3.0]], dtype=object), None, TypeError, "must be a string or"),
])
def test_bad_data_raises(X, ivar, exc, match):
    with pytest.raises(exc, match=match):
        SpectralNMF(2, max_iter=1).fit(X, ivar=ivar)


@pytest.mark.parametrize("params, exc, match", [
    (dict(n_components=0), ValueError, "n_components"),
    (dict(n_components=7), ValueError, "min\\(n_spectra, n_pixels\\) = 6"),
    (dict(n_components=2.5), TypeError, "n_components"),
    (dict(n_components=2, solver="magic"), ValueError, "solver must be one of"),
    (dict(n_components=2, init="best"), ValueError, "init must be one of"),
    (dict(n_components=2, max_iter=-1), ValueError, "max_iter"),
    (dict(n_components=2, tol=-1.0), ValueError, "tol"),
    (dict(n_components=2, dtype="int8"), ValueError, "dtype must be"),
    (dict(n_components=2, random_state="x"), TypeError, "random_state"),
    (dict(n_components=2, solver="shift", shift=0.01), ValueError, "at least the minimal shift"),
    (dict(n_components=2, solver="nearly", shift=5.0), ValueError, "only used by solver='shift'"),
])
def test_bad_parameters_raise(params, exc, match):
    with pytest.raises(exc, match=match):
        SpectralNMF(**params).fit(GOOD_X)


@pytest.mark.parametrize("start, exc, match", [
    (dict(templates=-np.ones((2, 6))), ValueError, "templates must be non-negative"),
    (dict(coefficients=-np.ones((8, 2))), ValueError, "coefficients must be non-negative"),
    (dict(templates=np.ones((3, 6))), ValueError, "templates must have shape \\(2, 6\\)"),
    (dict(coefficients=np.ones((7, 2))), ValueError, "coefficients must have shape \\(8, 2\\)"),
    (dict(templates=np.full((2, 6), np.nan)), ValueError, "templates contains NaN"),
])
def test_bad_starts_raise(start, exc, match):
    with pytest.raises(exc, match=match):
        SpectralNMF(2, max_iter=1).fit(GOOD_X, **start)


def test_shift_larger_than_minimal_is_accepted():
    y = -GOOD_X.min()
    model = SpectralNMF(2, solver="shift", shift=2 * y, max_iter=3, tol=0, random_state=0).fit(GOOD_X)
    assert model.shift_ == 2 * y


# -- uncertainties ------------------------------------------------------------------
def test_transform_uncertainties_have_unit_pulls():
    # known templates and coefficients, Gaussian noise of the stated ivar, 40 % missing:
    # (estimate - truth) / sigma of interior coefficients has mean 0 and std 1
    rng = np.random.default_rng(7)
    n, d, k = 3000, 120, 3
    x = np.linspace(0, 1, d)
    T = np.stack([np.exp(-0.5 * ((x - c) / 0.15) ** 2) for c in (0.2, 0.5, 0.8)])
    C = rng.uniform(2.0, 6.0, size=(n, k))
    sigma_pix = rng.uniform(0.5, 2.0, size=(n, d))
    ivar = 1.0 / sigma_pix**2
    ivar[rng.uniform(size=(n, d)) < 0.4] = 0.0
    X = C @ T + rng.normal(size=(n, d)) * sigma_pix
    model = SpectralNMF.from_templates(T)
    coef, sigma, cov = model.transform(X, ivar=ivar, return_uncertainty=True, return_covariance=True)
    np.testing.assert_allclose(sigma, np.sqrt(np.diagonal(cov, axis1=1, axis2=2)))
    interior = coef > 3 * sigma
    pulls = ((coef - C) / sigma)[interior]
    assert interior.mean() > 0.95
    assert abs(pulls.mean()) < 0.1 and abs(pulls.std() - 1) < 0.1
