"""Simulated survey-like spectra for the benchmarks: masked, heteroscedastic, signed.

Like the paper's quasar set (Green & Bailey 2024, sec. III), each spectrum is
observed only over a contiguous window of the rest-frame grid (its redshift
shifts the observed range), so about 60 % of the (spectrum, pixel) matrix is
missing, and the noise drives about 10 % of the observed fluxes negative.

The templates are smooth functions of a normalised log-wavelength ``u`` in
[0, 1] (a power-law continuum plus emission lines), sampled on ``n_pixels``
points, so halving ``n_pixels`` is like rebinning the same spectra, as in the
paper's Fig. 8 d-sweep.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

__all__ = ["simulate_spectra", "start_factors"]

# fraction of pixels inside a coverage window that are masked anyway
# (cosmic rays, bad columns, sky-line residuals)
_BAD_PIXELS = 0.02
# half-width of the spread of window lengths around their mean
_WINDOW_JITTER = 0.05
# size of the subsample used to calibrate the noise level
_CALIBRATION_SAMPLE = 200_000


def _templates(n_components, n_pixels, rng):
    u = np.linspace(0.0, 1.0, n_pixels)
    T = np.empty((n_components, n_pixels))
    for k in range(n_components):
        continuum = np.exp(rng.uniform(-1.5, 1.5) * (u - 0.5))
        lines = np.zeros(n_pixels)
        for _ in range(8):
            centre = rng.uniform(0.02, 0.98)
            width = rng.uniform(0.002, 0.01)
            lines += rng.uniform(0.3, 3.0) * np.exp(-0.5 * ((u - centre) / width) ** 2)
        T[k] = continuum + lines
        T[k] /= T[k].mean()
    return T


def _coverage(n_spectra, n_pixels, observed_fraction, rng):
    """Boolean (n_spectra, n_pixels): one contiguous window per spectrum.

    The first few spectra tile the whole grid, so every pixel is observed
    at least once whenever ``n_spectra`` is at least ``ceil(1/f_min) + 1``.
    """
    f_min = max(observed_fraction - _WINDOW_JITTER, 1.0 / n_pixels)
    f = rng.uniform(f_min, min(1.0, observed_fraction + _WINDOW_JITTER), size=n_spectra)
    length = np.clip(np.round(f * n_pixels).astype(int), 1, n_pixels)
    start = rng.integers(0, n_pixels - length + 1)
    n_tiles = min(n_spectra, math.ceil(1.0 / f_min) + 1)
    if n_tiles > 1:
        # equal, shortest windows, evenly spaced: consecutive ones overlap
        length[:n_tiles] = min(n_pixels, math.ceil(f_min * n_pixels))
        start[:n_tiles] = np.round(np.linspace(0, n_pixels - length[0], n_tiles)).astype(int)
    else:
        start[0] = 0
        length[0] = n_pixels
    j = np.arange(n_pixels)
    window = (j >= start[:, None]) & (j < (start + length)[:, None])
    bad = rng.uniform(size=window.shape) < _BAD_PIXELS
    bad[:n_tiles] = False
    return window & ~bad, n_tiles


def _noise_scale(signal, sigma, negative):
    """Scale g such that the expected fraction of ``signal + g*sigma*N(0,1) < 0`` is ``negative``."""
    z = signal / sigma
    lo, hi = -12.0, 12.0                    # log g
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        frac = ndtr(-z / math.exp(mid)).mean()
        if frac < negative:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def simulate_spectra(n_spectra, n_pixels, n_components=5, *, missing=0.6, negative=0.1,
                     dtype="float64", random_state=0, return_truth=False):
    """Masked, heteroscedastic, signed spectra from a non-negative rank-``n_components`` model.

    Parameters
    ----------
    n_spectra, n_pixels : int
        Shape of the data, (n_spectra, n_pixels) as everywhere in specnmf.
    n_components : int, default=5
        Rank of the noise-free model ``coefficients @ templates``.
    missing : float, default=0.6
        Target fraction of entries with ``ivar == 0``: each spectrum is
        observed over one contiguous window of about ``1 - missing`` of the
        grid, less ~2 % isolated bad pixels.
    negative : float, default=0.1
        Target fraction of *observed* fluxes that are negative; the noise
        level is calibrated to it.
    dtype : {"float64", "float32"}, default="float64"
    random_state : int, default=0
        Seed; equal arguments give bit-identical arrays in any process.
    return_truth : bool, default=False
        Also return the noise-free factors.

    Returns
    -------
    X : ndarray of shape (n_spectra, n_pixels)
        Flux, finite everywhere; 0 where ``ivar == 0`` (as survey pipelines
        store masked pixels, and as the published code requires).
    ivar : ndarray of shape (n_spectra, n_pixels)
        Inverse variance; 0 marks missing pixels.
    coefficients : ndarray of shape (n_spectra, n_components)
        Only with ``return_truth``.
    templates : ndarray of shape (n_components, n_pixels)
        Only with ``return_truth``.
    """
    for name, value in (("n_spectra", n_spectra), ("n_pixels", n_pixels),
                        ("n_components", n_components)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1); got {missing!r}")
    if not 0.0 < negative < 0.5:
        raise ValueError(f"negative must be in (0, 0.5); got {negative!r}")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")

    rng = np.random.default_rng(random_state)
    T = _templates(n_components, n_pixels, rng)
    C = rng.gamma(2.0, 0.5 / n_components, size=(n_spectra, n_components))
    observed_fraction = (1.0 - missing) / (1.0 - _BAD_PIXELS)
    observed, _ = _coverage(n_spectra, n_pixels, min(1.0, observed_fraction), rng)

    # noise: a level per spectrum times a pixel pattern with sky-line spikes
    u = np.linspace(0.0, 1.0, n_pixels)
    pattern = 1.0 + 0.5 * u
    for centre in rng.uniform(0.0, 1.0, size=12):
        pattern += rng.uniform(1.0, 4.0) * np.exp(-0.5 * ((u - centre) / 0.003) ** 2)
    level = rng.lognormal(0.0, 0.3, size=n_spectra)

    signal = C @ T
    idx = np.flatnonzero(observed)
    if idx.size > _CALIBRATION_SAMPLE:
        idx = rng.choice(idx, size=_CALIBRATION_SAMPLE, replace=False)
    rows, cols = np.unravel_index(idx, observed.shape)
    g = _noise_scale(signal[rows, cols], level[rows] * pattern[cols], negative)

    sigma = g * level[:, None] * pattern[None, :]
    X = signal + sigma * rng.standard_normal(signal.shape)
    ivar = 1.0 / sigma**2
    X[~observed] = 0.0
    ivar[~observed] = 0.0
    X = X.astype(dt, copy=False)
    ivar = ivar.astype(dt, copy=False)
    if return_truth:
        return X, ivar, C.astype(dt), T.astype(dt)
    return X, ivar


def start_factors(n_spectra, n_pixels, n_components, *, dtype="float64", random_state=1):
    """The common start of every implementation: uniform(0, 1) factors, as in the paper's timing script.

    Returns
    -------
    coefficients : ndarray of shape (n_spectra, n_components)
    templates : ndarray of shape (n_components, n_pixels)
    """
    rng = np.random.default_rng(random_state)
    C = rng.uniform(0.0, 1.0, size=(n_spectra, n_components))
    T = rng.uniform(0.0, 1.0, size=(n_components, n_pixels))
    return C.astype(dtype), T.astype(dtype)
