"""Choosing the number of templates by held-out chi^2."""

import warnings

import numpy as np
import pytest

from specnmf import ConvergenceWarning, SpectralNMF
from specnmf.selection import select_n_components
from specnmf.solvers import SOLVERS

# the exact alternating solver converges in few iterations; fall back to the
# paper's multiplicative rule where it is not available
FAST = ({"solver": "anls", "max_iter": 100} if "anls" in SOLVERS
        else {"solver": "nearly", "max_iter": 500})


def simulate(n=80, d=60, k=4, missing=0.3, snr=3.0, seed=0):
    """Rank-k non-negative spectra (Gaussian lines), heteroscedastic noise at
    low SNR (negative flux), ~``missing`` of the pixels with ivar = 0 (NaN flux)."""
    rng = np.random.default_rng(seed)
    C = rng.gamma(2.0, 1.0, size=(n, k))
    x = np.arange(d)
    centres = np.linspace(0.15, 0.85, k) * d
    T = np.exp(-0.5 * ((x - centres[:, None]) / (d / (3 * k))) ** 2)
    truth = C @ T
    sigma = truth.max() / (4 * snr) * rng.uniform(0.5, 1.5, size=(n, d))
    X = truth + rng.normal(size=(n, d)) * sigma
    ivar = 1.0 / sigma**2
    miss = rng.uniform(size=(n, d)) < missing
    ivar[miss] = 0.0
    X[miss] = np.nan
    return X, ivar


@pytest.fixture(scope="module")
def rank4():
    X, ivar = simulate()
    observed = ivar > 0
    assert 0.25 < 1 - observed.mean() < 0.35
    assert np.mean(X[observed] < 0) > 0.05  # signed data, not clipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = select_n_components(X, ivar=ivar, candidates=range(1, 7), random_state=0, **FAST)
    return X, ivar, sel


def test_selects_the_true_rank_of_masked_signed_data(rank4):
    _, _, sel = rank4
    assert sel.best_ == 4
    assert list(sel.candidates_) == [1, 2, 3, 4, 5, 6]
    # too few templates leave signal unexplained on the held-out pixels
    assert np.all(np.diff(sel.scores_[:4]) < 0)
    # and the fourth template's improvement is larger than its standard error
    assert sel.scores_[2] - sel.scores_[3] > sel.se_[2]


def test_scores_are_held_out_chi2_per_candidate_and_per_entry(rank4):
    X, ivar, sel = rank4
    n_observed = int(np.sum(ivar > 0))
    assert sel.n_heldout_ == round(0.1 * n_observed)
    assert np.allclose(sel.scores_per_entry_, sel.scores_ / sel.n_heldout_)
    # a correct model predicts held-out pixels to about their noise level
    assert 0.7 < sel.scores_per_entry_[3] < 2.0
    # training chi^2 keeps falling with more templates; held-out chi^2 does not
    assert np.all(np.diff(sel.train_chi2_) < 0)
    assert sel.se_[np.argmin(sel.scores_)] == 0
    assert "best n_components = 4" in sel.table()


def test_one_standard_error_rule_prefers_the_smaller_of_equivalent_ranks(rank4):
    _, _, sel = rank4
    i_min = int(np.argmin(sel.scores_))
    within = sel.scores_ - sel.scores_[i_min] <= sel.se_
    assert sel.best_ == sel.candidates_[np.flatnonzero(within)[0]]
    assert sel.best_ <= sel.candidates_[i_min]


def test_callers_arrays_are_not_modified_and_results_are_reproducible():
    X, ivar = simulate(n=30, d=24, k=2, seed=3)
    X0, ivar0 = X.copy(), ivar.copy()
    kw = dict(candidates=[1, 2, 3], random_state=7, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = select_n_components(X, ivar=ivar, **kw)
        b = select_n_components(X, ivar=ivar, **kw)
    assert np.array_equal(X, X0, equal_nan=True) and np.array_equal(ivar, ivar0)
    assert np.array_equal(a.scores_, b.scores_) and a.best_ == b.best_


def test_keep_models_and_min_rule():
    X, ivar = simulate(n=30, d=24, k=2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = select_n_components(X, ivar=ivar, candidates=[3, 1, 2], random_state=0, rule="min",
                                  keep_models=True, **FAST)
    assert list(sel.candidates_) == [1, 2, 3]
    assert sel.best_ == sel.candidates_[np.argmin(sel.scores_)]
    assert [m.n_components for m in sel.models_] == [1, 2, 3]
    assert all(isinstance(m, SpectralNMF) for m in sel.models_)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"candidates": []}, ValueError, "empty"),
    ({"candidates": [0, 1]}, ValueError, r"\[1, 10\]"),
    ({"candidates": [1, 11]}, ValueError, "candidates"),
    ({"candidates": [1.5]}, TypeError, "integers"),
    ({"holdout": 0.0}, ValueError, "holdout"),
    ({"holdout": 0.9}, ValueError, "holdout"),
    ({"rule": "best"}, ValueError, "rule"),
])
def test_bad_arguments_are_named(kwargs, exc, match):
    X = np.abs(np.random.default_rng(0).normal(size=(12, 10)))
    with pytest.raises(exc, match=match):
        select_n_components(X, **kwargs)
