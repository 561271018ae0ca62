"""Regularised fits through the estimator (issue 4): smoothness recovers smooth
templates better at low signal-to-noise, the objective including the
penalties never increases, and bad penalty settings are refused clearly."""

import warnings

import numpy as np
import pytest

from specnmf import SpectralNMF

scipy_optimize = pytest.importorskip("scipy.optimize")

HAS_PENALTIES = "smoothness" in SpectralNMF(1).get_params()
needs_penalties = pytest.mark.skipif(
    not HAS_PENALTIES, reason="SpectralNMF has no smoothness=/spatial= parameters yet")

SOLVERS = ["nearly", "anls", "apg"]


def smooth_problem(n=100, d=80, snr=1.0, seed=0):
    """Three smooth templates (Gaussian bumps on a flat floor), gamma
    coefficients, heteroscedastic noise at per-pixel S/N ~ ``snr`` (much of the
    flux is negative)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, d)
    templates = np.stack([np.exp(-0.5 * ((x - c) / w) ** 2) + 0.2
                          for c, w in [(0.2, 0.08), (0.5, 0.12), (0.8, 0.06)]])
    truth = rng.gamma(2.0, 1.0, size=(n, 3)) @ templates
    sigma = truth.mean() / snr * rng.uniform(0.5, 1.5, size=(n, d))
    X = truth + sigma * rng.normal(size=(n, d))
    return X, 1.0 / sigma**2, templates


def template_rms(fitted, truth):
    """RMS difference of unit-norm templates after the best one-to-one matching."""
    a = fitted / np.linalg.norm(fitted, axis=1, keepdims=True)
    b = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    cost = np.mean((a[:, None, :] - b[None, :, :]) ** 2, axis=2)
    r, c = scipy_optimize.linear_sum_assignment(cost)
    return float(np.sqrt(np.mean(cost[r, c])))


def _assert_non_increasing(values):
    values = np.asarray(values)
    slack = 1e-10 * values[0] + 1e-12         # float rounding only
    assert np.all(np.diff(values) <= slack), np.diff(values).max()


def _fit(X, ivar, solver, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # ConvergenceWarning at max_iter is fine here
        return SpectralNMF(3, solver=solver, max_iter=500, tol=1e-6, random_state=0,
                           **params).fit(X, ivar=ivar)


@needs_penalties
@pytest.mark.parametrize("solver", SOLVERS)
def test_smoothness_recovers_smooth_templates_better_at_low_snr(solver):
    X, ivar, truth = smooth_problem()
    plain = _fit(X, ivar, solver)
    smooth = _fit(X, ivar, solver, smoothness=1.0)
    err_plain = template_rms(plain.templates_, truth)
    err_smooth = template_rms(smooth.templates_, truth)
    assert err_smooth <= 0.8 * err_plain, (err_smooth, err_plain)
    _assert_non_increasing(smooth.objective_)
    # the objective is chi^2 plus the recorded penalty, and the penalty is on
    np.testing.assert_allclose(smooth.objective_,
                               smooth.chi2_ + np.asarray(smooth.history_["smoothness"]),
                               rtol=1e-12)
    assert smooth.history_["smoothness"][-1] > 0


@needs_penalties
@pytest.mark.parametrize("solver", SOLVERS)
def test_spatial_and_sparsity_fits_never_increase_the_objective(solver):
    X, ivar, _ = smooth_problem(n=24, d=30, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralNMF(3, solver=solver, max_iter=40, tol=0, random_state=0,
                            spatial=0.5, sparsity=0.1, smoothness=0.5).fit(
            X, ivar=ivar, spatial_shape=(4, 6))
    _assert_non_increasing(model.objective_)
    for name in ("chi2", "smoothness", "sparsity", "spatial"):
        assert len(model.history_[name]) == model.n_iter_ + 1


@needs_penalties
@pytest.mark.parametrize("name", ["smoothness", "sparsity", "spatial"])
def test_negative_penalty_is_rejected_naming_it(name):
    X, ivar, _ = smooth_problem(n=12, d=20)
    with pytest.raises(ValueError, match=name):
        SpectralNMF(2, **{name: -1.0}).fit(X, ivar=ivar, spatial_shape=(3, 4))


@needs_penalties
def test_spatial_without_shape_is_rejected():
    X, ivar, _ = smooth_problem(n=12, d=20)
    with pytest.raises(ValueError, match="spatial_shape"):
        SpectralNMF(2, spatial=1.0).fit(X, ivar=ivar)


@needs_penalties
def test_spatial_shape_must_match_the_number_of_spectra():
    X, ivar, _ = smooth_problem(n=12, d=20)
    with pytest.raises(ValueError, match=r"spatial_shape.*12"):
        SpectralNMF(2, spatial=1.0).fit(X, ivar=ivar, spatial_shape=(3, 5))
