"""Shared fixtures: an empca-style toy problem with heteroscedastic noise,
masked pixels and negative flux, and the paper's published doublet outputs."""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "specnmf", deadline=None, max_examples=25, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("specnmf")

DATA = Path(__file__).parent / "data"

# The tests exercise the compiled kernels on small problems too (by default they
# are used only for work that repays loading them: specnmf._kernels.MIN_WORK).
os.environ.setdefault("SPECNMF_NUMBA_MIN_WORK", "0")


def make_toy(n=40, d=30, k=3, missing=0.3, snr=3.0, seed=0):
    """Non-negative truth, heteroscedastic Gaussian noise (flux goes negative),
    and a random ~``missing`` fraction of pixels with ivar = 0 (flux NaN there)."""
    rng = np.random.default_rng(seed)
    C = rng.gamma(2.0, 1.0, size=(n, k))
    T = np.abs(rng.normal(size=(k, d))) * (rng.uniform(size=(k, d)) > 0.3)
    truth = C @ T
    sigma = truth.mean() / snr * rng.uniform(0.5, 2.0, size=(n, d))
    X = truth + rng.normal(size=(n, d)) * sigma
    ivar = 1.0 / sigma**2
    mask = rng.uniform(size=(n, d)) < missing
    ivar[mask] = 0.0
    X[mask] = np.nan
    return X, ivar, truth


class WeightedStandIn:
    """Stands in for a solver in engine tests: ``prepare_block`` is all an engine calls
    (with ``prepare_key`` and ``crops_blocks`` of ``specnmf.protocols.SolverProtocol``)."""

    crops_blocks = False

    def prepare_key(self):
        return "weighted"

    def prepare_block(self, X, ivar):
        return (X, ivar, ivar * X)


def weighted_pass(T, rows, block, C_b):
    """An engine pass function for the tests: a part that tells which rows made it
    (``2 C_b + rows.start``) and statistics (C^T (V X), chi^2, rows seen).
    Module level, so that cloudpickle ships it to Dask workers by reference."""
    X, ivar, vx = block
    resid = X - C_b @ T
    part = C_b * 2.0 + rows.start
    return part, (C_b.T @ vx, float(np.sum(ivar * resid * resid)), rows.stop - rows.start)


@pytest.fixture
def toy():
    return make_toy()


@pytest.fixture(scope="session")
def doublet_reference():
    """Published Nearly/Shift-NMF outputs, transposed to (spectra, pixels) orientation."""
    load = lambda name: np.load(DATA / f"{name}.npy", allow_pickle=False)  # noqa: E731
    return {
        "templates_start": load("W_start").T,
        "coefficients_start": load("H_start").T,
        "nearly": (load("W_nearly_truth").T, load("H_nearly_truth").T),
        "shift": (load("W_shift_truth").T, load("H_shift_truth").T),
    }


# -- comparing float32 fits ----------------------------------------------------------------
# A float32 fit is not bitwise stable across array libraries or releases (summation order,
# fused multiply-adds, vector widths differ), so float32 iterates are compared with what is
# stable: their objective, and the float64 solution within a tolerance derived from float32
# rounding and the conditioning of the iteration map, never a fixed tolerance.
EPS32 = float(np.finfo(np.float32).eps)


def start_sensitivity(fit, C0, T0, trials=3):
    """The float64 fit from (C0, T0) and how far its templates move per entry when the
    start is perturbed at float32 rounding level (the conditioning of the iteration map).

    ``fit(C, T)`` returns a fitted model.
    """
    ref = fit(C0, T0)
    spread = np.zeros_like(ref.templates_)
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        m = fit(C0 * (1 + EPS32 * rng.uniform(-1, 1, C0.shape)),
                T0 * (1 + EPS32 * rng.uniform(-1, 1, T0.shape)))
        spread = np.maximum(spread, np.abs(m.templates_ - ref.templates_))
    return ref, spread


def assert_float32_tracks_float64(got, ref, spread, *, continuous=True):
    """A float32 fit ``got`` against the float64 fit ``ref`` of the same start.

    Objective: each iteration adds rounding of relative size ~EPS32 to chi^2 (float64
    accumulation of float32 terms), so the histories agree to ``n_iter * 100 * EPS32``.
    Templates (for iteration maps that are continuous in the start): rounding in each
    iteration is amplified at most as a start perturbation is, so each entry agrees to
    ``2 * n_iter`` times the measured ``spread`` plus a rounding floor.  Solvers with
    discrete decisions (APG's per-block restart test) can take another branch on a
    near-tie, so only their objective is compared (``continuous=False``).
    """
    assert got.n_iter_ == ref.n_iter_
    n_iter = max(1, ref.n_iter_)
    rtol = n_iter * 100 * EPS32
    np.testing.assert_allclose(got.chi2_, ref.chi2_, rtol=rtol)
    if continuous:
        floor = n_iter * EPS32 * float(np.max(np.abs(ref.templates_)))
        err = np.abs(got.templates_.astype(np.float64) - ref.templates_)
        bound = 2 * n_iter * spread + floor
        assert np.all(err <= bound), (
            f"float32 templates differ from float64 by up to {err.max():.3g}; the bound from "
            f"float32 rounding and conditioning is {bound[np.argmax(err - bound)]:.3g} there")
