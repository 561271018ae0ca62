"""Shared fixtures: an empca-style toy problem with heteroscedastic noise,
masked pixels and negative flux, and the paper's published doublet outputs."""

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
    """Stands in for a solver in engine tests: ``prepare_block`` is all an engine calls."""

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
