"""Every solver runs on any array-API namespace and gives numpy's answer.

``array_api_strict`` has only what the standard defines, so a solver that
quietly relies on numpy fails here on a CPU; CuPy and PyTorch-on-CUDA run the
same checks when a GPU is present (``-m gpu``) and are skipped otherwise.
"""

import numpy as np
import pytest

from specnmf import SpectralNMF
from specnmf.solvers import SOLVERS

from .conftest import assert_float32_tracks_float64, make_toy, start_sensitivity

ALL_SOLVERS = ["nearly", "shift", "clip", "anls", "apg"]
RTOL_FLOAT64 = 1e-10
#: solvers whose iteration takes discrete decisions (APG's restart test): a float32 near-tie
#: may take the other branch, so their float32 runs are compared by objective only
DISCRETE = {"apg"}

HAS_BACKEND = "backend" in SpectralNMF(1).get_params()
needs_backend_param = pytest.mark.skipif(not HAS_BACKEND, reason="SpectralNMF has no backend yet")


@pytest.fixture(scope="module")
def toy():
    X, ivar, _ = make_toy(n=36, d=28, k=3, seed=5)
    return X, ivar


def _start(X, k=3, seed=9):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, size=(X.shape[0], k)), rng.uniform(0.1, 1.0, size=(k, X.shape[1]))


def _record_namespaces(monkeypatch, solver):
    """Spy on the solver factory: which namespace was the solver built for?"""
    import specnmf.solvers as S

    seen = []
    factory = S.SOLVERS[solver]

    def spy(xp, *args, **kwargs):
        seen.append(xp)
        return factory(xp, *args, **kwargs)

    monkeypatch.setitem(S.SOLVERS, solver, spy)
    return seen


def _compare(got, ref, dtype, spread=None, solver=None):
    """float64: tightly, entry by entry.  float32: against the float64 fit ``ref`` of
    the same start (see conftest.assert_float32_tracks_float64)."""
    assert isinstance(got.templates_, np.ndarray) and got.templates_.dtype == np.dtype(dtype)
    assert isinstance(got.coefficients_, np.ndarray)
    if dtype == "float32":
        assert_float32_tracks_float64(got, ref, spread, continuous=solver not in DISCRETE)
        return
    rtol = RTOL_FLOAT64
    assert got.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(got.chi2_, ref.chi2_, rtol=rtol)
    scale = float(np.max(ref.templates_))
    np.testing.assert_allclose(got.templates_, ref.templates_, rtol=rtol, atol=rtol * scale)
    cscale = float(np.max(ref.coefficients_))
    np.testing.assert_allclose(got.coefficients_, ref.coefficients_, rtol=rtol, atol=rtol * cscale)


def _reference(solver, X, ivar, C0, T0, dtype, **params):
    """The numpy float64 fit to compare with, and for float32 the spread of the float64
    templates under a float32-sized perturbation of the start."""
    if dtype == "float64":
        return _fit(solver, X, ivar, C0, T0, **params), None
    return start_sensitivity(lambda C, T: _fit(solver, X, ivar, C, T, **params), C0, T0)


def _fit(solver, X, ivar, C0, T0, **params):
    if solver not in SOLVERS:
        pytest.skip(f"solver {solver!r} not available yet")
    params = {"max_iter": 12, "tol": 0, "random_state": 0, **params}
    return SpectralNMF(3, solver=solver, **params).fit(X, ivar=ivar, templates=T0, coefficients=C0)


@needs_backend_param
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("solver", ALL_SOLVERS)
def test_array_api_strict_matches_numpy(toy, solver, dtype, monkeypatch):
    xps = pytest.importorskip("array_api_strict")
    X, ivar = toy
    C0, T0 = _start(X)
    ref, spread = _reference(solver, X, ivar, C0, T0, dtype)
    seen = _record_namespaces(monkeypatch, solver)
    # inputs already in the strict namespace (NaN flux where ivar == 0 included)
    Xs, ivs = xps.asarray(X), xps.asarray(ivar)
    got = _fit(solver, Xs, ivs, xps.asarray(C0), xps.asarray(T0), dtype=dtype,
               backend="array_api_strict")
    assert seen and all(xp is xps for xp in seen), "the solver did not run in array_api_strict"
    _compare(got, ref, dtype, spread, solver)


@needs_backend_param
@pytest.mark.parametrize("solver", ["nearly", "apg"])
def test_array_api_strict_with_blocks_and_penalties(toy, solver):
    pytest.importorskip("array_api_strict")
    X, ivar = toy
    C0, T0 = _start(X)
    params = dict(smoothness=0.1, sparsity=0.05, block_size=7)
    ref = _fit(solver, X, ivar, C0, T0, **params)
    got = _fit(solver, X, ivar, C0, T0, backend="array_api_strict", **params)
    assert "smoothness" in got.history_ and "sparsity" in got.history_
    np.testing.assert_allclose(got.objective_, ref.objective_, rtol=1e-10)
    _compare(got, ref, "float64")


@needs_backend_param
def test_unknown_or_missing_backend_is_a_clear_error(toy):
    X, ivar = toy
    with pytest.raises(ValueError, match="backend must be one of"):
        SpectralNMF(2, backend="jax").fit(X, ivar=ivar)
    for name, module in (("cupy", "cupy"), ("torch", "torch")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(ImportError, match="pip install"):
                SpectralNMF(2, backend=name, max_iter=1).fit(X, ivar=ivar)


# -- GPUs (skipped cleanly without the library or a CUDA device) ---------------------------------
def _cupy_with_device():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy is installed but no CUDA device is present")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"CuPy is installed but CUDA is unusable: {exc}")
    return cupy


def _torch_with_cuda():
    torch = pytest.importorskip("torch")
    pytest.importorskip("array_api_compat")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch is installed but no CUDA device is present")
    return torch


def _gpu(backend):
    """(copy to the device, is this the backend's namespace name?) for a GPU backend, or skip."""
    if backend == "cupy":
        cupy = _cupy_with_device()
        return cupy.asarray, lambda name: name.startswith("cupy")
    torch = _torch_with_cuda()
    return (lambda a: torch.asarray(a, device="cuda")), lambda name: "torch" in name


@needs_backend_param
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("solver", ALL_SOLVERS)
@pytest.mark.parametrize("backend", ["cupy", "torch"])
def test_gpu_backend_matches_numpy(toy, backend, solver, dtype, monkeypatch):
    to_device, is_backend = _gpu(backend)
    X, ivar = toy
    C0, T0 = _start(X)
    ref, spread = _reference(solver, X, ivar, C0, T0, dtype)
    seen = _record_namespaces(monkeypatch, solver)
    got = _fit(solver, to_device(X), to_device(ivar), C0, T0, dtype=dtype, backend=backend)
    assert seen and all(is_backend(getattr(xp, "__name__", "")) for xp in seen)
    _compare(got, ref, dtype, spread, solver)
