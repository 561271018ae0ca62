"""specnmf as a scikit-learn citizen: its conventions, its estimator checks, and
``ivar`` routed through Pipeline / GridSearchCV / cross_validate."""

import warnings

import numpy as np
import pytest

from specnmf import SpectralNMF, chi2

from .conftest import make_toy

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_validate  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

SOLVERS = ["nearly", "shift", "clip", "anls", "apg"]


@pytest.mark.slow
@pytest.mark.parametrize("solver", SOLVERS)
def test_check_estimator_passes(solver):
    # every check passes, with no expected failures; the only one not run here is
    # the array-API input check, which scikit-learn skips unless SCIPY_ARRAY_API=1
    # was set before scipy was imported (run by the test below)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(SpectralNMF(2, solver=solver, random_state=0), on_fail=None,
                        on_skip=None, callback=lambda estimator, check_name, exception, status,
                        expected_to_fail, expected_to_fail_reason: results.append(
                            (check_name, status, exception)))
    failed = [(name, str(exc)[:200]) for name, status, exc in results if status == "failed"]
    assert not failed
    skipped = {name for name, status, _ in results if status == "skipped"}
    assert skipped <= {"check_array_api_input"}
    assert len(results) > 40


@pytest.mark.parametrize("method", ["fit", "fit_transform", "score"])
def test_ivar_passed_as_y_is_a_clear_error(method):
    X, ivar, _ = make_toy(n=12, d=10)
    model = SpectralNMF(2, max_iter=3, random_state=0)
    if method == "score":
        model.fit(X, ivar=ivar)
    with pytest.raises(TypeError, match="ivar=ivar"):
        getattr(model, method)(X, ivar)


def test_y_is_ignored_and_ivar_is_keyword_only():
    X, ivar, _ = make_toy(n=12, d=10)
    a = SpectralNMF(2, max_iter=5, tol=0, random_state=0).fit(X, np.arange(12), ivar=ivar)
    b = SpectralNMF(2, max_iter=5, tol=0, random_state=0).fit(X, ivar=ivar)
    np.testing.assert_array_equal(a.templates_, b.templates_)
    with pytest.raises(TypeError):
        a.transform(X, ivar)   # positional ivar is not accepted
    with pytest.raises(TypeError):
        chi2(X, ivar, a.coefficients_, a.templates_)


def test_fit_transform_equals_fit_then_transform():
    X, ivar, _ = make_toy(n=30, d=25, seed=2)
    model = SpectralNMF(3, solver="nearly", max_iter=20, tol=0, random_state=0)
    coef = model.fit_transform(X, ivar=ivar)
    np.testing.assert_allclose(coef, model.transform(X, ivar=ivar))


def test_requests_survive_clone_and_are_validated():
    model = SpectralNMF(2).set_fit_request(ivar=True).set_score_request(ivar="weights")
    copy = clone(model)
    routing = copy.get_metadata_routing()
    assert routing.fit.requests["ivar"] is True
    assert routing.score.requests["ivar"] == "weights"
    assert routing.transform.requests["ivar"] is None
    with pytest.raises(ValueError, match="set_fit_request"):
        SpectralNMF(2).set_fit_request(ivar=3)


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def _weighted():
    """Spectra whose noise differs wildly between pixels: a fit that ignores ivar
    gives visibly different templates."""
    X, ivar, _ = make_toy(n=40, d=30, k=3, seed=4)
    return X, ivar


def test_pipeline_routes_ivar_to_fit_and_transform(routing):
    X, ivar = _weighted()
    step = (SpectralNMF(3, solver="anls", max_iter=30, tol=0, random_state=0)
            .set_fit_request(ivar=True).set_transform_request(ivar=True))
    pipe = Pipeline([("nmf", step)]).fit(X, ivar=ivar)
    direct = SpectralNMF(3, solver="anls", max_iter=30, tol=0, random_state=0).fit(X, ivar=ivar)
    np.testing.assert_allclose(pipe.named_steps["nmf"].templates_, direct.templates_)
    np.testing.assert_allclose(pipe.transform(X, ivar=ivar), direct.transform(X, ivar=ivar))
    # ivar that is passed but not requested is an error, not silently dropped
    plain = Pipeline([("nmf", SpectralNMF(3, max_iter=2, random_state=0))])
    with pytest.raises(Exception, match="ivar"):
        plain.fit(X, ivar=ivar)


def test_cross_validate_scores_held_out_chi2_with_routed_ivar(routing):
    X, ivar = _weighted()
    est = (SpectralNMF(3, solver="anls", max_iter=30, tol=0, random_state=0)
           .set_fit_request(ivar=True).set_score_request(ivar=True))
    cv = KFold(4, shuffle=True, random_state=0)
    res = cross_validate(est, X, cv=cv, params={"ivar": ivar}, return_estimator=True,
                         return_indices=True)
    for fitted, test, score in zip(res["estimator"], res["indices"]["test"], res["test_score"]):
        coef = fitted.transform(X[test], ivar=ivar[test])
        expected = -chi2(X[test], coef, fitted.templates_, ivar=ivar[test])
        assert score == pytest.approx(expected, rel=1e-10)
        # the weights really were used: unit weights on the same pixels score otherwise
        unit = (ivar[test] > 0).astype(float)
        assert score != pytest.approx(fitted.score(X[test], ivar=unit), rel=1e-3)


def test_grid_search_over_n_components_by_held_out_chi2(routing):
    X, ivar = _weighted()
    est = (SpectralNMF(1, solver="anls", max_iter=40, tol=0, random_state=0)
           .set_fit_request(ivar=True).set_score_request(ivar=True))
    search = GridSearchCV(est, {"n_components": [1, 2, 3]}, cv=KFold(3, shuffle=True,
                                                                        random_state=0))
    search.fit(X, ivar=ivar)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all(scores < 0)
    # more templates fit held-out spectra better (their coefficients are fitted)
    assert scores[0] < scores[1] < scores[2]
    assert search.best_params_ == {"n_components": 3}
    assert search.best_estimator_.n_features_in_ == X.shape[1]


@pytest.mark.slow
def test_check_estimator_with_array_api_dispatch_runs_every_check():
    # the array-API input check needs SCIPY_ARRAY_API=1 before scipy is imported:
    # run the whole suite once that way, in a fresh interpreter
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from sklearn.utils.estimator_checks import check_estimator\n"
        "from specnmf import SpectralNMF\n"
        "res = check_estimator(SpectralNMF(2, solver='anls', random_state=0), on_fail=None,"
        " on_skip=None)\n"
        "bad = [(r['check_name'], r['status']) for r in res if r['status'] != 'passed']\n"
        "print(len(res), bad)\n"
        "assert not bad\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SCIPY_ARRAY_API": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
