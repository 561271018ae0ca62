"""Every fast path runs the paper's update rules: checked against the plain oracle in paper_rules.py.

The oracle is itself tied to the paper twice: it reproduces the published
doublet outputs, and its chi^2 never increases (the paper's monotonicity
theorem).  Then each way specnmf can run Nearly-NMF or Shift-NMF (compiled
fused pass, BLAS Gram form, dense form, another array namespace, data
streamed from disk, Dask) must give the oracle's iterates and chi^2 history.
"""

import numpy as np
import pytest

from specnmf import SpectralNMF
from specnmf.datasets import load_doublet

from .conftest import make_toy
from .paper_rules import PaperNMF, paper_fit

RULES = ["nearly", "shift"]
N_ITER = 15


def _start(n, d, k, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.5, (n, k)), rng.uniform(0.5, 1.5, (k, d))


@pytest.mark.parametrize("rule", RULES)
def test_oracle_reproduces_the_published_doublet_outputs(rule, doublet_reference):
    X, ivar = load_doublet()
    ref = doublet_reference
    y = -np.min(X) if rule == "shift" else 0.0        # the published minimal shift
    C, T, _ = paper_fit(X, ivar, ref["coefficients_start"], ref["templates_start"], 300,
                        rule=rule, y=y)
    templates, coefficients = ref[rule]
    assert np.allclose(T, templates)
    assert np.allclose(C, coefficients)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", range(3))
def test_oracle_chi2_never_increases(rule, seed):
    X, ivar, _ = make_toy(n=30, d=25, k=3, seed=seed)
    C0, T0 = _start(30, 25, 3, seed)
    y = max(0.0, -float(np.nanmin(np.where(ivar > 0, X, np.inf)))) if rule == "shift" else 0.0
    history = PaperNMF(X.T, ivar.T, T0.T, C0.T, rule=rule, y=y).run(40)
    assert np.all(np.diff(history) <= 1e-12 * history[:-1])


def _fit(rule, X, ivar, C0, T0, **params):
    model = SpectralNMF(C0.shape[1], solver=rule, max_iter=N_ITER, tol=0, **params)
    return model.fit(X, ivar=ivar, templates=T0, coefficients=C0)


def _assert_matches_oracle(model, X, ivar, C0, T0, rule, rtol=1e-10):
    C, T, history = paper_fit(X, ivar, C0, T0, N_ITER, rule=rule, y=model.shift_ or 0.0)
    assert model.n_iter_ == N_ITER
    np.testing.assert_allclose(model.chi2_, history, rtol=rtol)
    np.testing.assert_allclose(model.templates_, T, rtol=rtol, atol=rtol * np.max(T))
    np.testing.assert_allclose(model.coefficients_, C, rtol=rtol, atol=rtol * np.max(C))


@pytest.fixture
def toy():
    X, ivar, _ = make_toy(n=40, d=30, k=3, missing=0.3)
    return X, ivar


@pytest.mark.parametrize("rule", RULES)
def test_default_path_is_the_paper(rule, toy):
    # numpy data with numba installed: the compiled fused pass (the tests set
    # SPECNMF_NUMBA_MIN_WORK=0 so it runs on small problems too)
    X, ivar = toy
    C0, T0 = _start(*X.shape, 3)
    _assert_matches_oracle(_fit(rule, X, ivar, C0, T0), X, ivar, C0, T0, rule)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("k", [3, 9], ids=["gram-form", "dense-form"])
def test_blas_forms_are_the_paper(rule, k, toy, monkeypatch):
    # without the compiled kernels: per-spectrum Grams for small k, the dense form above
    monkeypatch.setenv("SPECNMF_DISABLE_NUMBA", "1")
    X, ivar = toy
    C0, T0 = _start(*X.shape, k)
    _assert_matches_oracle(_fit(rule, X, ivar, C0, T0), X, ivar, C0, T0, rule)


@pytest.mark.parametrize("rule", RULES)
def test_array_api_namespace_is_the_paper(rule, toy):
    pytest.importorskip("array_api_strict")
    X, ivar = toy
    C0, T0 = _start(*X.shape, 3)
    model = _fit(rule, X, ivar, C0, T0, backend="array_api_strict")
    _assert_matches_oracle(model, X, ivar, C0, T0, rule)


@pytest.mark.parametrize("rule", RULES)
def test_streamed_blocks_are_the_paper(rule, toy, tmp_path):
    # spectra read from disk a few rows at a time: the statistics of the
    # blocks add up to the full-matrix products of the paper
    X, ivar = toy
    C0, T0 = _start(*X.shape, 3)
    arrays = []
    for name, a in (("X", X), ("ivar", ivar)):
        m = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=a.dtype,
                                      shape=a.shape)
        m[:] = a
        m.flush()
        arrays.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    model = _fit(rule, arrays[0], arrays[1], C0, T0, block_size=7)
    _assert_matches_oracle(model, X, ivar, C0, T0, rule)


@pytest.mark.parametrize("rule", RULES)
def test_dask_chunks_are_the_paper(rule, toy):
    da = pytest.importorskip("dask.array")
    import dask

    X, ivar = toy
    C0, T0 = _start(*X.shape, 3)
    with dask.config.set(scheduler="synchronous"):
        model = _fit(rule, da.from_array(X, chunks=(13, -1)), da.from_array(ivar, chunks=(13, -1)),
                     C0, T0)
    _assert_matches_oracle(model, X, ivar, C0, T0, rule)


@pytest.mark.parametrize("rule", RULES)
def test_float32_tracks_the_paper(rule, toy):
    # float32 follows the float64 oracle to single-precision rounding
    X, ivar = toy
    C0, T0 = _start(*X.shape, 3)
    model = _fit(rule, X.astype(np.float32), ivar.astype(np.float32), C0.astype(np.float32),
                 T0.astype(np.float32), dtype="float32")
    C, T, history = paper_fit(X, ivar, C0, T0, N_ITER, rule=rule, y=model.shift_ or 0.0)
    np.testing.assert_allclose(model.chi2_, history, rtol=1e-4)
    assert np.max(np.abs(model.templates_ - T)) <= 1e-3 * np.max(T)
