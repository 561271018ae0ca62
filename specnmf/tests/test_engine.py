"""The in-memory engine's coverage cropping: spectra that each observe one
window of pixels (rest-frame survey data) are sorted and their blocks cropped
to the pixels they observe; the answer must not change."""

import warnings

import numpy as np
import pytest

from specnmf import SpectralNMF, _kernels
from specnmf.engine import InMemory, Streamed, make_engine
from specnmf.solvers import forms


def windowed(n=300, d=400, k=3, width=0.35, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, d)
    T = np.stack([np.exp(-0.5 * ((x - c) / 0.1) ** 2) + 0.2 for c in np.linspace(0.2, 0.8, k)])
    C = rng.gamma(2.0, 1.0, size=(n, k))
    ivar = np.zeros((n, d))
    w = int(width * d)
    for i, s in enumerate(rng.integers(0, d - w, size=n)):
        ivar[i, s:s + w] = rng.uniform(1.0, 4.0, size=w)
    X = C @ T + rng.normal(size=(n, d)) / np.sqrt(np.where(ivar > 0, ivar, 1.0))
    X[ivar == 0] = np.nan
    return X, ivar


def test_windowed_data_get_small_cropped_blocks():
    X, ivar = windowed()
    engine = make_engine(X, ivar, dtype="float64")
    assert isinstance(engine, InMemory)
    assert engine.cropped_fraction(16) < 0.5 < engine.cropped_fraction(300)
    assert engine.choose_block_rows(300, 16) == 16
    # random masks leave nothing to crop: keep the large blocks
    rng = np.random.default_rng(1)
    dense = make_engine(rng.normal(size=(300, 400)), (rng.uniform(size=(300, 400)) > 0.6) * 1.0,
                        dtype="float64")
    assert dense.choose_block_rows(300, 16) == 300


@pytest.mark.parametrize("solver", ["nearly", "shift", "clip", "anls", "apg"])
def test_cropped_fit_equals_the_uncropped_fit(solver, tmp_path):
    X, ivar = windowed()
    rng = np.random.default_rng(2)
    C0, T0 = rng.uniform(0.5, 1.5, size=(X.shape[0], 3)), rng.uniform(0.5, 1.5, size=(3, X.shape[1]))
    kw = dict(solver=solver, max_iter=15, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cropped = SpectralNMF(3, **kw).fit(X, ivar=ivar, templates=T0, coefficients=C0)
        # the same data from disk are streamed in natural order, uncropped
        np.save(tmp_path / "X.npy", np.where(ivar > 0, X, 0.0))
        np.save(tmp_path / "ivar.npy", ivar)
        Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
        im = np.load(tmp_path / "ivar.npy", mmap_mode="r")
        assert isinstance(make_engine(Xm, im, dtype="float64"), Streamed)
        plain = SpectralNMF(3, block_size=300, **kw).fit(Xm, ivar=im, templates=T0, coefficients=C0)
    # only the summation order differs
    if solver in ("nearly", "shift", "clip"):
        np.testing.assert_allclose(cropped.chi2_, plain.chi2_, rtol=1e-10)
        np.testing.assert_allclose(cropped.templates_, plain.templates_, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(cropped.coefficients_, plain.coefficients_, rtol=1e-8, atol=1e-12)
    else:
        # the exact solvers pick among equal minima where a spectrum's window barely
        # overlaps a template (near-singular Gram): the objective is what is determined
        np.testing.assert_allclose(cropped.chi2_, plain.chi2_, rtol=1e-8)


@pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")
@pytest.mark.parametrize("gram_max_q", [2, 8], ids=["to-dense", "to-gram"])
def test_prepared_blocks_are_not_reused_across_forms(monkeypatch, gram_max_q):
    # a sequential start past _kernels.MAX_Q components moves one engine from the fused
    # kernel's uncropped blocks (observed spans) to cropped blocks of the other forms
    # (weighted flux): the engine must prepare them again, not index one with the other.
    # MAX_Q lowered to 2, so that two kernels are compiled rather than ten
    monkeypatch.setattr(_kernels, "MAX_Q", 2)
    monkeypatch.setattr(forms, "GRAM_MAX_Q", gram_max_q)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 300)) + 3.0
    ivar = rng.uniform(0.5, 2.0, size=X.shape)
    k = _kernels.MAX_Q + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralNMF(k, init="sequential", max_iter=3, tol=0, random_state=0).fit(
            X, ivar=ivar)
    assert model.templates_.shape == (k, 300)
    assert np.all(np.diff(model.chi2_) <= 1e-9 * model.chi2_[0])
