"""The SpectralUnmix workflow on top of the estimator: restarts, patience,
histories, residuals, per-component reconstructions, summaries, sequential
starts and prediction with the model's penalties."""

import warnings

import numpy as np
import pytest

from specnmf import ConvergenceWarning, SpectralNMF, chi2

from .conftest import make_toy


@pytest.fixture
def data():
    X, ivar, _ = make_toy(n=60, d=40, k=3, seed=11)
    return X, ivar


def _quiet(model, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(*args, **kw)


def test_n_init_keeps_the_best_restart(data):
    X, ivar = data
    kw = dict(solver="nearly", max_iter=30, tol=0)
    best = _quiet(SpectralNMF(3, n_init=4, random_state=3, **kw), X, ivar=ivar)
    # the restarts draw their starts from one generator seeded with random_state
    rng = np.random.default_rng(3)
    singles = [_quiet(SpectralNMF(3, random_state=rng, **kw), X, ivar=ivar).objective_[-1]
               for _ in range(4)]
    assert best.objective_[-1] == pytest.approx(min(singles), rel=1e-12)
    again = _quiet(SpectralNMF(3, n_init=4, random_state=3, **kw), X, ivar=ivar)
    np.testing.assert_array_equal(best.templates_, again.templates_)


def test_patience_needs_consecutive_small_decreases(data):
    X, ivar = data
    one = SpectralNMF(3, solver="anls", tol=1e-4, patience=1, random_state=0, max_iter=500).fit(X, ivar=ivar)
    five = SpectralNMF(3, solver="anls", tol=1e-4, patience=5, random_state=0, max_iter=500).fit(X, ivar=ivar)
    assert one.converged_ and five.converged_
    assert five.n_iter_ >= one.n_iter_ + 4
    rel = -np.diff(five.objective_) / five.objective_[:-1]
    assert np.all(rel[-5:] < 1e-4)


def test_history_holds_chi2_and_each_penalty(data):
    X, ivar = data
    model = _quiet(SpectralNMF(3, solver="apg", smoothness=0.5, sparsity=0.1, max_iter=20, tol=0,
                               random_state=0), X, ivar=ivar)
    assert set(model.history_) == {"chi2", "smoothness", "sparsity"}
    total = model.history_["chi2"] + model.history_["smoothness"] + model.history_["sparsity"]
    np.testing.assert_allclose(model.objective_, total, rtol=1e-12)
    assert model.chi2_[-1] == pytest.approx(chi2(X, model.coefficients_, model.templates_, ivar=ivar), rel=1e-9)


def test_residuals_and_component_reconstructions(data):
    X, ivar = data
    model = _quiet(SpectralNMF(3, solver="anls", max_iter=30, random_state=0), X, ivar=ivar)
    parts = model.component_reconstructions()
    assert parts.shape == (3, *X.shape)
    np.testing.assert_allclose(parts.sum(axis=0), model.inverse_transform(model.coefficients_))
    r = model.residuals(X, ivar=ivar, coefficients=model.coefficients_)
    assert np.all(r[ivar == 0] == 0)
    observed = ivar > 0
    np.testing.assert_allclose(r[observed], (X - model.coefficients_ @ model.templates_)[observed])
    pulls = model.residuals(X, ivar=ivar, coefficients=model.coefficients_, normalized=True)
    assert np.sum(pulls**2) == pytest.approx(model.chi2_[-1], rel=1e-9)


def test_summary_and_repr_are_readable(data):
    X, ivar = data
    model = SpectralNMF(3, solver="anls", smoothness=0.5, random_state=0)
    assert "not fitted" in model.summary()
    assert repr(model) == "SpectralNMF(n_components=3, random_state=0, smoothness=0.5, solver='anls')"
    _quiet(model, X, ivar=ivar, wavelength=np.linspace(4000, 5000, X.shape[1]))
    text = model.summary()
    assert "3 x 40 pixels" in text and "4000" in text and "smoothness penalty" in text
    assert f"{model.n_iter_} iterations" in text


@pytest.mark.parametrize("solver", ["nearly", "anls", "apg"])
def test_sequential_start_grows_one_template_at_a_time(data, solver):
    X, ivar = data
    model = _quiet(SpectralNMF(3, solver=solver, init="sequential", sequential_iter=10,
                               max_iter=40, random_state=0), X, ivar=ivar)
    assert np.all(model.templates_ >= 0) and np.isfinite(model.chi2_).all()
    # the first template explains the most: largest mean contribution
    contrib = model.coefficients_.mean(axis=0) * model.templates_.sum(axis=1)
    assert np.argmax(contrib) == 0


def test_transform_with_penalties_is_the_penalised_minimum(data):
    # with fixed templates, prediction minimises chi^2 + the coefficient penalties
    X, ivar = data
    model = _quiet(SpectralNMF(3, solver="anls", sparsity=2.0, max_iter=50, random_state=0), X, ivar=ivar)
    from specnmf.penalties import make_penalties

    pen = make_penalties(sparsity=2.0, ivar_scale=model.ivar_scale_)
    coef = model.transform(X, ivar=ivar)
    T = model.templates_

    def objective(C):
        return chi2(X, C, T, ivar=ivar) + sum(p.value(C, T, np) for p in pen)

    best = objective(coef)
    rng = np.random.default_rng(0)
    for _ in range(20):
        trial = np.clip(coef + rng.normal(scale=0.01, size=coef.shape), 0, None)
        assert objective(trial) >= best - 1e-9 * best
    plain = SpectralNMF.from_templates(T).transform(X, ivar=ivar)
    assert coef.sum() < plain.sum()          # the L1 penalty shrinks the coefficients


def test_from_templates_model_predicts_and_refuses_bad_input():
    T = np.abs(np.random.default_rng(0).normal(size=(2, 10)))
    model = SpectralNMF.from_templates(T, wavelength=np.arange(10.0))
    X = np.array([[1.0, 2.0], [0.5, 0.0]]) @ T
    np.testing.assert_allclose(model.transform(X), [[1.0, 2.0], [0.5, 0.0]], atol=1e-10)
    with pytest.raises(ValueError, match="non-negative"):
        SpectralNMF.from_templates(-T)
    with pytest.raises(ValueError, match="wavelength"):
        SpectralNMF.from_templates(T, wavelength=np.arange(3.0))
