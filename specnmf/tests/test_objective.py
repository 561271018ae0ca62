"""The one objective, checked against a slow loop written only here."""

import numpy as np
import pytest

from specnmf import chi2, chi2_per_spectrum, reduced_chi2


def _chi2_loops(X, ivar, C, T):
    total = 0.0
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            if ivar[i, j] > 0:
                model = sum(C[i, k] * T[k, j] for k in range(T.shape[0]))
                total += ivar[i, j] * (X[i, j] - model) ** 2
    return total


def test_chi2_matches_loop_reference(toy):
    X, ivar, _ = toy
    rng = np.random.default_rng(0)
    C, T = rng.uniform(size=(X.shape[0], 3)), rng.uniform(size=(3, X.shape[1]))
    assert chi2(X, C, T, ivar=ivar) == pytest.approx(_chi2_loops(X, ivar, C, T), rel=1e-12)
    assert chi2_per_spectrum(X, C, T, ivar=ivar).sum() == pytest.approx(chi2(X, C, T, ivar=ivar))


def test_chi2_float32_accumulates_in_float64(toy):
    X, ivar, _ = toy
    rng = np.random.default_rng(1)
    C, T = rng.uniform(size=(X.shape[0], 3)), rng.uniform(size=(3, X.shape[1]))
    ref = chi2(X, C, T, ivar=ivar)
    X32 = X.astype(np.float32)
    assert chi2(X32, C.astype(np.float32), T.astype(np.float32), ivar=ivar.astype(np.float32)) == pytest.approx(ref, rel=1e-5)


def test_unit_weights_and_reduced_chi2():
    X = np.arange(6.0).reshape(2, 3)
    C, T = np.zeros((2, 1)), np.zeros((1, 3))
    assert chi2(X, C, T, ivar=None) == pytest.approx(np.sum(X**2))
    assert reduced_chi2(X, C, T, ivar=None) == pytest.approx(np.sum(X**2) / (6 - 5))


def test_chi2_blocks_large_inputs():
    # more rows than one internal block: the blocked sum equals the plain one
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 1500))
    ivar = rng.uniform(size=X.shape)
    C, T = rng.uniform(size=(3000, 2)), rng.uniform(size=(2, 1500))
    assert chi2(X, C, T, ivar=ivar) == pytest.approx(np.sum(ivar * (X - C @ T) ** 2), rel=1e-10)
