r"""The Nearly-NMF paper's quasar preprocessing (Green & Bailey 2024, Sec. III.B).

Observed spectra cover a fixed *observed* wavelength range, i.e. a different
*rest-frame* range for each redshift.  Templates live on one common rest-frame
grid, so each spectrum is de-redshifted onto that grid with weight 0 wherever
the grid is not observed (:func:`to_rest_frame`), scaled so that spectral
shape rather than brightness varies (:func:`renormalize`), and the sparsely
covered grid edges are cut (:func:`trim`).  :func:`data_fractions` reports how
much of the result is missing and how much of the rest is negative.

All arrays follow specnmf's orientation: flux and ivar of shape
``(n_spectra, n_pixels)``, wavelengths of shape ``(n_pixels,)`` in Angstrom,
``ivar == 0`` for missing pixels.  Inputs are never modified.

Example
-------
>>> import numpy as np
>>> from specnmf.preprocess import rest_frame_grid, to_rest_frame, data_fractions
>>> wave = 10 ** np.arange(np.log10(3600), np.log10(10000), 1e-4)
>>> flux = np.ones((3, wave.size)); ivar = np.ones_like(flux)
>>> rest = rest_frame_grid(3600, 10000, 0.0, 4.0)
>>> rflux, rivar = to_rest_frame(wave, flux, ivar, np.array([0.0, 1.0, 3.0]), rest)
>>> rflux.shape == (3, rest.size), round(data_fractions(rflux, rivar)["missing"], 2)
(True, 0.61)
"""

from __future__ import annotations

import logging
from numbers import Integral, Real

import numpy as np

logger = logging.getLogger("specnmf")

__all__ = ["rest_frame_grid", "to_rest_frame", "to_observed_frame", "renormalize", "trim",
           "rebin", "data_fractions"]

# rows handled at once by the vectorised regridding: bounds the (rows, pixels)
# temporaries to ~ 64 MB whatever the number of spectra
_CHUNK_ELEMENTS = 1 << 23


# -- validation -----------------------------------------------------------------
def _wavelength(wavelength, name):
    w = np.asarray(wavelength)
    if w.ndim != 1 or w.size < 2:
        raise ValueError(f"{name} must be a 1-d array of at least 2 wavelengths; got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
        raise TypeError(f"{name} must be real numbers; got dtype {w.dtype}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"{name} must be finite and > 0")
    if np.any(np.diff(w) <= 0):
        raise ValueError(f"{name} must be strictly increasing")
    return w


def _spectra(flux, ivar, n_pixels=None, names=("flux", "ivar")):
    f = np.asarray(flux)
    v = np.asarray(ivar)
    for a, nm in ((f, names[0]), (v, names[1])):
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a) or a.dtype == bool:
            raise TypeError(f"{nm} must be an array of real numbers; got dtype {a.dtype}")
    if f.ndim != 2:
        raise ValueError(f"{names[0]} must have shape (n_spectra, n_pixels); got shape {f.shape}")
    if v.shape != f.shape:
        raise ValueError(f"{names[1]} must have the shape of {names[0]} {f.shape}; got {v.shape}")
    if n_pixels is not None and f.shape[1] != n_pixels:
        raise ValueError(f"{names[0]} has {f.shape[1]} pixels but wavelength has {n_pixels}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"{names[1]} must be finite and >= 0")
    dt = np.result_type(f.dtype, np.float32) if f.dtype.kind == "f" else np.dtype(np.float64)
    bad = ~np.isfinite(f) & (v > 0)
    if bad.any():
        raise ValueError(f"{names[0]} has {int(bad.sum())} NaN/inf values where {names[1]} > 0; "
                         f"set {names[1]} = 0 there to mark them missing")
    return f, v, dt


def _pixel_count(value, name):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be an int >= 0; got {value!r}")
    return int(value)


def _log_edges(loglam):
    """Pixel edges (log10) of a grid of centres: midpoints, extrapolated at the ends."""
    mid = 0.5 * (loglam[1:] + loglam[:-1])
    return np.concatenate([[2 * loglam[0] - mid[0]], mid, [2 * loglam[-1] - mid[-1]]])


# -- grids and regridding ---------------------------------------------------------
def rest_frame_grid(obs_min, obs_max, z_min, z_max, dloglam=1e-4):
    """Common rest-frame log10 wavelength grid covering every redshift.

    The grid runs from ``obs_min / (1 + z_max)`` to ``obs_max / (1 + z_min)``
    with constant step ``dloglam`` in log10(wavelength).

    Parameters
    ----------
    obs_min, obs_max : float
        Observed wavelength range (Angstrom), ``0 < obs_min < obs_max``.
    z_min, z_max : float
        Redshift range, ``-1 < z_min <= z_max``.
    dloglam : float, default=1e-4
        Grid step in log10(wavelength) (the paper's grid: 11 427 pixels for
        3600-10000 Angstrom and 0 <= z <= 4).

    Returns
    -------
    ndarray of shape (n_rest,)
        Rest-frame wavelengths in Angstrom.
    """
    vals = {}
    for name, value in (("obs_min", obs_min), ("obs_max", obs_max), ("z_min", z_min),
                        ("z_max", z_max), ("dloglam", dloglam)):
        if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number; got {value!r}")
        vals[name] = float(value)
    if not 0 < vals["obs_min"] < vals["obs_max"]:
        raise ValueError(f"need 0 < obs_min < obs_max; got obs_min={obs_min!r}, obs_max={obs_max!r}")
    if not -1 < vals["z_min"] <= vals["z_max"]:
        raise ValueError(f"need -1 < z_min <= z_max; got z_min={z_min!r}, z_max={z_max!r}")
    if vals["dloglam"] <= 0:
        raise ValueError(f"dloglam must be > 0; got {dloglam!r}")
    lo = np.log10(vals["obs_min"] / (1 + vals["z_max"]))
    hi = np.log10(vals["obs_max"] / (1 + vals["z_min"]))
    n = int(np.floor((hi - lo) / vals["dloglam"] + 1e-9)) + 1
    return 10.0 ** (lo + vals["dloglam"] * np.arange(n))


def to_rest_frame(wavelength, flux, ivar, redshift, rest_wavelength, *, method="bin"):
    r"""De-redshift spectra onto a common rest-frame grid.

    Observed pixel j of spectrum i sits at rest wavelength
    ``wavelength[j] / (1 + redshift[i])``.

    Parameters
    ----------
    wavelength : array-like of shape (n_pixels,)
        Observed wavelengths (Angstrom), strictly increasing.
    flux, ivar : array-like of shape (n_spectra, n_pixels)
        Observed flux (may be negative) and inverse variance (0 = missing).
    redshift : array-like of shape (n_spectra,)
        Redshifts, ``> -1``.
    rest_wavelength : array-like of shape (n_rest,)
        Target rest-frame grid, strictly increasing (e.g. :func:`rest_frame_grid`).
    method : {"bin", "linear"}, default="bin"
        ``"bin"``: each observed pixel goes to the rest pixel whose log10 edges
        (midpoints between centres) contain its rest wavelength; a rest pixel
        receiving several observed pixels gets their inverse-variance-weighted
        mean and the sum of their ivar.  On a grid with the observed step this
        is nearest-pixel resampling (a shift of at most half a pixel, 35 km/s
        for the paper's grid) and keeps the noise of different rest pixels
        independent, so chi^2 stays a chi^2; on a coarser grid it is exact
        inverse-variance rebinning.  ``"linear"``: flux interpolated linearly
        in log10(wavelength) and ivar propagated, ``1 / ((1-f)^2 / ivar_a +
        f^2 / ivar_b)``; smoother, but neighbouring rest pixels share noise.
        A rest pixel needing a missing observed pixel gets weight 0.

    Returns
    -------
    flux_rest : ndarray of shape (n_spectra, n_rest)
        Rest-frame flux; 0 where not observed.
    ivar_rest : ndarray of shape (n_spectra, n_rest)
        Rest-frame inverse variance; 0 where a rest pixel is not observed.
        Both keep the input's floating precision (float32 stays float32).
    """
    w = _wavelength(wavelength, "wavelength")
    rest = _wavelength(rest_wavelength, "rest_wavelength")
    f, v, dt = _spectra(flux, ivar, n_pixels=w.size)
    z = np.asarray(redshift, dtype=np.float64)
    if z.shape != (f.shape[0],):
        raise ValueError(f"redshift must have shape ({f.shape[0]},); got {z.shape}")
    if not np.all(np.isfinite(z)) or np.any(z <= -1):
        raise ValueError("redshift must be finite and > -1")
    if method not in ("bin", "linear"):
        raise ValueError(f"method must be 'bin' or 'linear'; got {method!r}")

    n, d = f.shape
    m = rest.size
    out_f = np.zeros((n, m), dtype=dt)
    out_v = np.zeros((n, m), dtype=dt)
    logw = np.log10(w)
    logr = np.log10(rest)
    log1pz = np.log10(1.0 + z)
    step = max(1, _CHUNK_ELEMENTS // max(d, m))
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        if method == "bin":
            _bin_chunk(logw, f[sl], v[sl], log1pz[sl], logr, out_f[sl], out_v[sl])
        else:
            _linear_chunk(logw, f[sl], v[sl], log1pz[sl], logr, out_f[sl], out_v[sl])
    return out_f, out_v


def _bin_chunk(logw, f, v, log1pz, logr, out_f, out_v):
    b, d = f.shape
    m = logr.size
    steps = np.diff(logr)
    if np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        # log-uniform grid (the usual case): the bin is a floor, no search needed
        idx = np.floor((logw[None, :] - log1pz[:, None] - (logr[0] - 0.5 * steps[0]))
                       / steps[0]).astype(np.int64)
    else:
        idx = np.searchsorted(_log_edges(logr), logw[None, :] - log1pz[:, None], side="right") - 1
    keep = (idx >= 0) & (idx < m) & (v > 0)
    flat = (np.arange(b)[:, None] * m + idx)[keep]
    vk = v[keep]
    wsum = np.bincount(flat, weights=vk, minlength=b * m).reshape(b, m)
    # only observed pixels enter, so NaN flux under ivar == 0 cannot leak in
    fsum = np.bincount(flat, weights=vk * f[keep], minlength=b * m).reshape(b, m)
    has = wsum > 0
    out_f[...] = np.divide(fsum, wsum, out=np.zeros_like(fsum), where=has)
    out_v[...] = wsum


def _linear_chunk(logw, f, v, log1pz, logr, out_f, out_v):
    b = f.shape[0]
    d = logw.size
    # observed pixel coordinate of every rest pixel: rest log10 -> observed log10
    obs = logr[None, :] + log1pz[:, None]                   # (b, m)
    j = np.searchsorted(logw, obs, side="right") - 1        # left neighbour
    inside = (j >= 0) & (j < d - 1)
    # a rest pixel exactly on the last observed pixel is inside too
    last = np.isclose(obs, logw[-1], rtol=0, atol=1e-12)
    j = np.where(last, d - 2, j)
    inside |= last
    jc = np.clip(j, 0, d - 2)
    frac = (obs - logw[jc]) / (logw[jc + 1] - logw[jc])
    rows = np.arange(b)[:, None]
    va = np.asarray(v[rows, jc], dtype=np.float64)
    vb = np.asarray(v[rows, jc + 1], dtype=np.float64)
    ok = inside & (va > 0) & (vb > 0)
    fa = np.where(ok, f[rows, jc], 0.0)
    fb = np.where(ok, f[rows, jc + 1], 0.0)
    out_f[...] = np.where(ok, (1 - frac) * fa + frac * fb, 0.0)
    var = np.divide((1 - frac) ** 2, va, out=np.zeros_like(va), where=ok) + \
        np.divide(frac ** 2, vb, out=np.zeros_like(vb), where=ok)
    out_v[...] = np.divide(1.0, var, out=np.zeros_like(var), where=ok & (var > 0))


def to_observed_frame(rest_wavelength, flux_rest, redshift, wavelength):
    """Redshift rest-frame model spectra (e.g. reconstructions) onto an observed grid.

    Linear interpolation in log10(wavelength).

    Parameters
    ----------
    rest_wavelength : array-like of shape (n_rest,)
    flux_rest : array-like of shape (n_spectra, n_rest)
    redshift : array-like of shape (n_spectra,)
    wavelength : array-like of shape (n_pixels,)
        Observed grid.

    Returns
    -------
    flux : ndarray of shape (n_spectra, n_pixels)
        0 where the observed pixel falls outside the rest grid.
    covered : ndarray of bool, shape (n_spectra, n_pixels)
        Where the rest grid covers the observed pixel.
    """
    rest = _wavelength(rest_wavelength, "rest_wavelength")
    w = _wavelength(wavelength, "wavelength")
    fr = np.asarray(flux_rest, dtype=np.float64)
    if fr.ndim != 2 or fr.shape[1] != rest.size:
        raise ValueError(f"flux_rest must have shape (n_spectra, {rest.size}); got {fr.shape}")
    if not np.all(np.isfinite(fr)):
        raise ValueError("flux_rest must be finite")
    z = np.asarray(redshift, dtype=np.float64)
    if z.shape != (fr.shape[0],) or not np.all(np.isfinite(z)) or np.any(z <= -1):
        raise ValueError(f"redshift must be finite, > -1 and of shape ({fr.shape[0]},)")
    logr = np.log10(rest)
    out = np.zeros((fr.shape[0], w.size))
    covered = np.zeros((fr.shape[0], w.size), dtype=bool)
    for i in range(fr.shape[0]):
        pos = np.log10(w) - np.log10(1 + z[i])
        covered[i] = (pos >= logr[0]) & (pos <= logr[-1])
        out[i] = np.where(covered[i], np.interp(pos, logr, fr[i]), 0.0)
    return out, covered


# -- renormalisation, trimming, rebinning -----------------------------------------------
def renormalize(flux, ivar, wavelength, reference=None, *, wavelength_range=None):
    """Scale each spectrum so its median flux matches that of a reference.

    For spectrum i with observed pixels ``O_i`` (``ivar > 0``, within
    ``wavelength_range``), the scale is ``s_i = median(reference[O_i]) /
    median(flux_i[O_i])``: both medians over the *same* rest-frame pixels, so
    differences in coverage do not bias the scale.  The flux is multiplied by
    ``s_i`` and the ivar by ``1 / s_i**2`` (chi^2 is unchanged).

    Parameters
    ----------
    flux, ivar : array-like of shape (n_spectra, n_pixels)
        Rest-frame flux and inverse variance.
    wavelength : array-like of shape (n_pixels,)
        Rest-frame wavelengths.
    reference : array-like of shape (n_pixels,) or None
        Reference spectrum (e.g. one noise-free quasar or a composite).  Pixels
        where it is not finite are ignored.  ``None``: the inverse-variance
        weighted mean spectrum of ``flux`` (pixels without weight ignored).
    wavelength_range : (float, float), optional
        Only pixels in this range enter the medians.

    Returns
    -------
    flux : ndarray of shape (n_spectra, n_pixels)
        Scaled flux; 0 where ``ivar == 0`` (so NaN there does not propagate).
    ivar : ndarray of shape (n_spectra, n_pixels)
    scale : ndarray of shape (n_spectra,)
        The factors ``s_i``.  A spectrum whose median flux (or reference
        median) is not > 0, or which has no usable pixel, keeps ``s_i = 1``
        (counted in a log warning): a negative scale would flip the spectrum.
    """
    w = _wavelength(wavelength, "wavelength")
    f, v, dt = _spectra(flux, ivar, n_pixels=w.size)
    if reference is None:
        wsum = v.sum(axis=0, dtype=np.float64)
        num = np.where(v > 0, v * np.where(v > 0, f, 0.0), 0.0).sum(axis=0, dtype=np.float64)
        ref = np.full(w.size, np.nan)
        np.divide(num, wsum, out=ref, where=wsum > 0)
    else:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.shape != (w.size,):
            raise ValueError(f"reference must have shape ({w.size},); got {ref.shape}")
    use = np.isfinite(ref)
    if wavelength_range is not None:
        try:
            lo, hi = (float(x) for x in wavelength_range)
        except (TypeError, ValueError):
            raise ValueError(f"wavelength_range must be two numbers; got {wavelength_range!r}") from None
        if not lo < hi:
            raise ValueError(f"wavelength_range must have low < high; got {wavelength_range!r}")
        use &= (w >= lo) & (w <= hi)
    ref = np.where(use, ref, 0.0)
    scale = np.ones(f.shape[0])
    for i in range(f.shape[0]):
        obs = (v[i] > 0) & use
        if not obs.any():
            continue
        mf = float(np.median(f[i, obs]))
        mr = float(np.median(ref[obs]))
        if mf > 0 and mr > 0:
            scale[i] = mr / mf
    n_bad = int(np.sum(scale == 1.0))
    if n_bad:
        logger.info("renormalize: %d of %d spectra kept scale 1 (no pixel, or median <= 0, "
                    "or already matching)", n_bad, f.shape[0])
    s = scale.astype(dt)[:, None]
    out_f = np.where(v > 0, f, 0).astype(dt) * s
    out_v = v.astype(dt) / (s * s)
    return out_f, out_v, scale


def trim(wavelength, flux, ivar, low=50, high=300):
    """Cut ``low`` pixels from the blue end and ``high`` from the red end of the grid.

    The paper cuts 50 and 300 pixels of its rest-frame grid, where few
    spectra contribute (edge effects).

    Parameters
    ----------
    wavelength : array-like of shape (n_pixels,)
    flux, ivar : array-like of shape (n_spectra, n_pixels)
    low, high : int, default=50, 300

    Returns
    -------
    wavelength : ndarray of shape (n_pixels - low - high,)
    flux, ivar : ndarray of shape (n_spectra, n_pixels - low - high)
        Copies; the inputs are not modified.
    """
    w = _wavelength(wavelength, "wavelength")
    f, v, _ = _spectra(flux, ivar, n_pixels=w.size)
    low = _pixel_count(low, "low")
    high = _pixel_count(high, "high")
    if low + high >= w.size:
        raise ValueError(f"low + high = {low + high} leaves no pixel of {w.size}")
    sl = slice(low, w.size - high)
    return w[sl].copy(), f[:, sl].copy(), v[:, sl].copy()


def rebin(wavelength, flux, ivar, factor):
    """Combine each run of ``factor`` adjacent pixels (inverse-variance weighted).

    Used to lower the dimensionality of a dataset (the paper's timing runs
    halve it repeatedly).  Trailing pixels that do not fill a bin are dropped.

    Parameters
    ----------
    wavelength : array-like of shape (n_pixels,)
    flux, ivar : array-like of shape (n_spectra, n_pixels)
    factor : int >= 1

    Returns
    -------
    wavelength : ndarray of shape (n_pixels // factor,)
        Geometric mean of each bin's wavelengths.
    flux, ivar : ndarray of shape (n_spectra, n_pixels // factor)
        Weighted mean flux (0 where the bin has no weight) and summed ivar.
    """
    w = _wavelength(wavelength, "wavelength")
    f, v, dt = _spectra(flux, ivar, n_pixels=w.size)
    if isinstance(factor, bool) or not isinstance(factor, Integral) or not 1 <= factor <= w.size:
        raise ValueError(f"factor must be an int in [1, {w.size}]; got {factor!r}")
    m = w.size // factor
    cut = m * factor
    wb = 10.0 ** np.log10(w[:cut]).reshape(m, factor).mean(axis=1)
    vv = np.asarray(v[:, :cut], dtype=np.float64).reshape(-1, m, factor)
    ff = np.where(vv > 0, np.asarray(f[:, :cut], dtype=np.float64).reshape(-1, m, factor), 0.0)
    wsum = vv.sum(axis=2)
    fsum = (vv * ff).sum(axis=2)
    fb = np.divide(fsum, wsum, out=np.zeros_like(fsum), where=wsum > 0)
    return wb, fb.astype(dt), wsum.astype(dt)


def data_fractions(flux, ivar):
    """Missing and negative fractions of a dataset (the paper reports 61.1 % and 11.4 %).

    Parameters
    ----------
    flux, ivar : array-like of shape (n_spectra, n_pixels)

    Returns
    -------
    dict
        ``"missing"``: fraction of all entries with ``ivar == 0``;
        ``"negative"``: fraction of the observed entries (``ivar > 0``) with
        ``flux < 0`` (0.0 when nothing is observed).
    """
    f, v, _ = _spectra(flux, ivar)
    observed = v > 0
    n_obs = int(observed.sum())
    n_neg = int(np.sum(observed & (np.where(observed, f, 0) < 0)))
    total = f.size
    return {"missing": 1.0 - n_obs / total if total else 0.0,
            "negative": n_neg / n_obs if n_obs else 0.0}
