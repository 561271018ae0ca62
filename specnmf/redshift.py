r"""Redshifts from templates: a fast, exact non-negative redshift fitter.

Templates ``T`` of shape (n_components, n_rest) on a rest-frame wavelength
grid are redshifted and resampled onto the observed pixels; at each trial
redshift z the coefficients of spectrum i solve

.. math:: \chi^2_i(z) = \min_{c \ge 0} \sum_j \mathrm{ivar}_{ij}
          \Big(X_{ij} - \sum_k c_k\, A_{kj}(z)\Big)^2,

(``c`` unconstrained for PCA templates: weighted least squares), where
``A(z) = resample_templates(T, rest_wavelength, wavelength, z)``.

The resampling rule (the same as redrock's ``trapz_rebin``): the template is
the piecewise-linear function through its samples, redshifted to observed
wavelengths ``lambda_rest (1 + z)``; the value in observed pixel j is its
mean over the pixel, whose edges (:func:`pixel_edges`) are the midpoints
between pixel centres, the two outer edges half a neighbouring interval
beyond the end centres.  The template must cover every observed pixel at
every trial redshift (a clear error otherwise).

Speed (exact): when the templates and the spectra share one uniform
log10-wavelength step and every trial redshift is a whole-pixel shift
(:func:`redshift_grid` makes such grids), the resampled template at shift s
is, for every pixel but the two end ones, a fixed 3-tap average of the
template shifted by s pixels.  Every weighted Gram entry
``G_kl(s) = sum_j ivar_j A_kj(s) A_lj(s)`` and right-hand side
``b_k(s) = sum_j ivar_j X_j A_kj(s)`` for all shifts at once is then a
cross-correlation of the weights with a fixed product of templates, done by
FFT in float64 (the two end pixels are added exactly).  All (spectrum,
redshift) problems are solved with the package's batched exact NNLS
(:func:`specnmf.solvers.nnls.nnls_gram` on packed Grams).  Other grids fall back to
resampling at each redshift (the same numbers, slower).

What is exact: ``chi2 = sum ivar x^2 - 2 c.b + c^T G c`` at every trial
redshift agrees with a brute-force weighted NNLS (:func:`scipy.optimize.nnls`;
least squares for PCA) on the resampled templates to 1e-8 relative (tested,
with masked pixels and negative flux).  The FFT's absolute error (~1e-15 of
the correlated arrays' norms) is bounded a posteriori for every problem;
problems where it could move chi^2 by more than 1e-9 relative, or where a
template barely touches the observed pixels (its ``G_kk`` below 1e-7 of its
largest value), get Grams computed directly; problems whose unit-diagonal Gram
is too ill-conditioned for the normal equations (pivot below 1e-9 for NNLS,
eigenvalue below 1e-6 for least squares) are re-solved from the weighted
pixels.  (For templates collinear on the observed pixels to ~1e-11 the
least-squares chi^2 itself is not determined to 1e-8: LAPACK's drivers
disagree.)  The chi^2 and coefficients reported for the best redshift are
summed from the residuals there.

Refinement, as redrock: local minima of the coarse chi^2 curve (up to
``n_minima`` per template set, more than ``dv_min`` km/s apart) are rescanned
between their neighbouring grid points (every whole-pixel shift on the fast
path, ``n_refine`` points otherwise) and a parabola through the three best
points gives the minimum.  The best minimum over all template sets (lowest
chi^2) is the answer; it is refined once more by direct resampling at 9
points spanning one step either side, and the parabola through the best three
gives ``z`` and ``z_err`` (``chi2 = chi2_min + ((z - z0)/z_err)^2``).
``delta_chi2`` is the chi^2 of the next best minimum (of any set, more than
``dv_min`` km/s away) minus the best (``inf`` if there is none).

``zwarn`` bits (redrock's numbering, :class:`ZWarn`): ``LITTLE_COVERAGE``
(fewer than 10 observed pixels per coefficient), ``SMALL_DELTA_CHI2``
(``delta_chi2 < 9``), ``Z_FITLIMIT`` (minimum at the edge of the grid),
``NODATA`` (no observed pixel: ``z`` is NaN), ``BAD_MINFIT`` (the parabola
failed; ``z`` is the best grid point).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_spectra
from .objective import problem_chi2_from_grams, spectrum_chi2
from .solvers import gram
from .solvers.coefficients import from_pixels
from .solvers.nnls import nnls_gram

__all__ = [
    "RedshiftResult",
    "TemplateSet",
    "ZWarn",
    "fit_redshifts",
    "pixel_edges",
    "read_redrock",
    "redrock_fit",
    "redshift_grid",
    "resample_templates",
    "write_redrock",
]

logger = logging.getLogger("specnmf")

_C_KMS = 299792.458
# a whole-pixel shift must be whole to this fraction of a pixel for the FFT path
_SHIFT_TOL = 1e-9
# FFT correlations are exact to ~1e-15 of their largest value; a problem where
# some template's weighted norm G_kk is below this fraction of its largest
# value over the shifts (a template barely on the observed pixels) has its
# Gram recomputed directly (see _Scanner.repair)
_FFT_RTOL = 1e-7
# bound on the FFT correlations' absolute error relative to |a|_2 |b|_2 of the
# correlated arrays (pocketfft in float64: ~1e-16 log2(n); a wide margin)
_FFT_EPS = 1e-14
# problems whose unit-diagonal Gram has a pivot/eigenvalue below this are
# re-solved from the data (the normal equations lose too many digits)
_FRAGILE = 1e-9
# least squares (PCA): the error of chi^2 from the normal equations grows as
# 1 / (smallest eigenvalue of the unit-diagonal Gram), so the bar is higher
_FRAGILE_PCA = 1e-6


class ZWarn:
    """``zwarn`` bit flags (the same bits as redrock's ``ZWarningMask``)."""

    LITTLE_COVERAGE = 2 ** 1   #: fewer than 10 observed pixels per coefficient
    SMALL_DELTA_CHI2 = 2 ** 2  #: another minimum within delta chi^2 < 9
    Z_FITLIMIT = 2 ** 5        #: chi^2 minimum at the edge of the redshift grid
    NODATA = 2 ** 9            #: no observed pixel (ivar == 0 everywhere)
    BAD_MINFIT = 2 ** 10       #: the parabola through the minimum failed


@dataclass
class TemplateSet:
    """One class of templates (e.g. QSO, GALAXY, STAR) for :func:`fit_redshifts`.

    Attributes
    ----------
    templates : ndarray of shape (n_components, n_rest)
    wavelength : ndarray of shape (n_rest,)
        Rest-frame wavelength, strictly increasing.
    spectype, subtype : str
    method : {"NMF", "PCA"}
        NMF: non-negative coefficients (NNLS); PCA: weighted least squares.
    redshifts : ndarray or None
        The set's own trial redshifts (redrock's REDSHIFTS HDU), if any.
    igm_model : str
        Recorded for redrock (specnmf applies no IGM transmission).
    """

    templates: np.ndarray
    wavelength: np.ndarray
    spectype: str = "QSO"
    subtype: str = ""
    method: str = "NMF"
    redshifts: np.ndarray | None = None
    igm_model: str = "None"

    @property
    def fulltype(self):
        return f"{self.spectype}:::{self.subtype}" if self.subtype else self.spectype


@dataclass
class RedshiftResult:
    """Best redshift per spectrum (see :func:`fit_redshifts`).

    Attributes
    ----------
    z, z_err, chi2, delta_chi2 : ndarray of shape (n_spectra,)
    zwarn : ndarray of int64, shape (n_spectra,)
        :class:`ZWarn` bits.
    spectype, subtype : ndarray of str, shape (n_spectra,)
    coefficients : ndarray of shape (n_spectra, max n_components)
        Coefficients of the best set's templates (zero-padded).
    npixels : ndarray of shape (n_spectra,)
        Observed pixels.
    redshifts : dict
        fulltype -> the trial redshifts of that set's coarse scan.
    chi2_curve : dict or None
        fulltype -> ndarray of shape (n_spectra, n_redshifts), with
        ``return_chi2_curve=True``.
    """

    z: np.ndarray
    z_err: np.ndarray
    chi2: np.ndarray
    delta_chi2: np.ndarray
    zwarn: np.ndarray
    spectype: np.ndarray
    subtype: np.ndarray
    coefficients: np.ndarray
    npixels: np.ndarray
    redshifts: dict = field(default_factory=dict)
    chi2_curve: dict | None = None


# ---------------------------------------------------------------------------
# resampling rule
# ---------------------------------------------------------------------------
def pixel_edges(wavelength):
    """Pixel edges from pixel centres: midpoints, the outer two extrapolated.

    Parameters
    ----------
    wavelength : array-like of shape (n_pixels,)
        Strictly increasing centres (at least 2).

    Returns
    -------
    ndarray of shape (n_pixels + 1,)
    """
    c = np.asarray(wavelength, dtype=np.float64)
    e = np.empty(c.size + 1)
    e[1:-1] = 0.5 * (c[:-1] + c[1:])
    e[0] = c[0] - (c[1] - e[1])
    e[-1] = c[-1] + (c[-1] - e[-2])
    return e


def _cumulative(T, tw):
    """Integral of the piecewise-linear templates from tw[0] to each knot, (q, n)."""
    F = np.zeros(T.shape)
    np.cumsum(0.5 * (T[:, 1:] + T[:, :-1]) * np.diff(tw), axis=1, out=F[:, 1:])
    return F


def _integral_at(T, tw, F, u):
    """Integral of the templates from tw[0] to points u (any shape) -> (q, *u.shape)."""
    i = np.clip(np.searchsorted(tw, u, side="right") - 1, 0, tw.size - 2)
    h = tw[i + 1] - tw[i]
    t = u - tw[i]
    T0 = T[:, i]
    return F[:, i] + t * (T0 + 0.5 * t * (T[:, i + 1] - T0) / h)


def _check_coverage(tw, edges, redshifts, name="templates"):
    zmin, zmax = float(np.min(redshifts)), float(np.max(redshifts))
    lo, hi = edges[0] / (1.0 + zmax), edges[-1] / (1.0 + zmin)
    if lo < tw[0] or hi > tw[-1]:
        raise ValueError(
            f"{name} do not cover the observed range at every trial redshift: the observed "
            f"pixels {edges[0]:.6g}-{edges[-1]:.6g} need rest wavelengths {lo:.6g}-{hi:.6g} "
            f"for z in [{zmin:.6g}, {zmax:.6g}], but the templates span {tw[0]:.6g}-{tw[-1]:.6g}; "
            f"narrow the redshift range or use templates with a wider rest-frame range")


def resample_templates(templates, template_wavelength, wavelength, redshifts):
    """Templates redshifted and averaged over observed pixels (the module's rule).

    Parameters
    ----------
    templates : array-like of shape (n_components, n_rest)
    template_wavelength : array-like of shape (n_rest,)
        Rest-frame wavelength, strictly increasing.
    wavelength : array-like of shape (n_pixels,)
        Observed pixel centres, strictly increasing.
    redshifts : float or array-like of shape (n_redshifts,)

    Returns
    -------
    ndarray of shape (n_redshifts, n_components, n_pixels)
        (or (n_components, n_pixels) for a scalar redshift).
    """
    T = np.atleast_2d(np.asarray(templates, dtype=np.float64))
    tw = _check_wavelength(template_wavelength, "template_wavelength")
    if T.shape[1] != tw.size:
        raise ValueError(f"templates have {T.shape[1]} pixels but template_wavelength has "
                         f"{tw.size}")
    w = _check_wavelength(wavelength, "wavelength")
    scalar = np.ndim(redshifts) == 0
    z = np.atleast_1d(np.asarray(redshifts, dtype=np.float64))
    edges = pixel_edges(w)
    _check_coverage(tw, edges, z)
    F = _cumulative(T, tw)
    out = np.empty((z.size, T.shape[0], w.size))
    for m, zz in enumerate(z):
        out[m] = _rebin(T, tw, F, edges, zz)
    return out[0] if scalar else out


def _rebin(T, tw, F, edges, z):
    """(q, d) template means over the observed pixels ``edges`` at redshift z."""
    e = edges / (1.0 + z)
    Fe = _integral_at(T, tw, F, e)
    return (Fe[:, 1:] - Fe[:, :-1]) / np.diff(e)


def _check_wavelength(wavelength, name):
    w = np.asarray(wavelength, dtype=np.float64)
    if w.ndim != 1 or w.size < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 values; got shape {w.shape}")
    if not np.all(np.isfinite(w)) or w[0] <= 0 or np.any(np.diff(w) <= 0):
        raise ValueError(f"{name} must be finite, positive and strictly increasing")
    return w


def _log_grid(w):
    """(log10 of the first pixel, step) if w is uniform in log10 to 1e-9 pixel, else None."""
    lw = np.log10(w)
    step = (lw[-1] - lw[0]) / (w.size - 1)
    if step <= 0:
        return None
    dev = np.max(np.abs(lw - (lw[0] + step * np.arange(w.size)))) / step
    return (float(lw[0]), float(step)) if dev < _SHIFT_TOL * 10 else None


def redshift_grid(z_min, z_max, *, wavelength=None, template_wavelength=None, step=None):
    """Trial redshifts uniform in log10(1 + z).

    With ``wavelength`` and ``template_wavelength`` on one uniform log10 grid,
    the redshifts are whole-pixel shifts (so :func:`fit_redshifts` takes its
    FFT path): ``step`` is rounded to a whole number of pixels (default one
    pixel) and the grid is aligned with the pixels.

    Parameters
    ----------
    z_min, z_max : float
    wavelength, template_wavelength : array-like, optional
    step : float, optional
        Step in log10(1 + z); default one pixel (or 1e-4 without grids).

    Returns
    -------
    ndarray of shape (n_redshifts,)
    """
    z_min, z_max = float(z_min), float(z_max)
    if not (-1 < z_min < z_max) or not np.isfinite(z_max):
        raise ValueError(f"need -1 < z_min < z_max; got z_min={z_min!r}, z_max={z_max!r}")
    lo, hi = np.log10(1 + z_min), np.log10(1 + z_max)
    grids = None
    if wavelength is not None and template_wavelength is not None:
        go = _log_grid(_check_wavelength(wavelength, "wavelength"))
        gt = _log_grid(_check_wavelength(template_wavelength, "template_wavelength"))
        if go and gt and abs(go[1] - gt[1]) * len(template_wavelength) < _SHIFT_TOL * go[1]:
            grids = go, gt
    if grids is None:
        step = 1e-4 if step is None else float(step)
        if step <= 0:
            raise ValueError(f"step must be > 0; got {step!r}")
        return 10 ** np.arange(lo, hi + 0.5 * step, step) - 1
    (o0, dl), (t0, _) = grids
    n = 1 if step is None else max(1, round(float(step) / dl))
    # log10(1+z) = o0 - t0 - k dl for whole k (pixel 0 on template knot k)
    k_hi = int(np.floor((o0 - t0 - lo) / dl + 1e-6))
    k_lo = int(np.ceil((o0 - t0 - hi) / dl - 1e-6))
    k = np.arange(k_hi, k_lo - 1, -n)
    return 10 ** (o0 - t0 - k * dl) - 1


# ---------------------------------------------------------------------------
# template sets
# ---------------------------------------------------------------------------
def _as_sets(templates, template_wavelength, nonnegative):
    if isinstance(templates, TemplateSet):
        return [templates]
    if isinstance(templates, dict):
        out = []
        for key, val in templates.items():
            (s,) = _as_sets(val, template_wavelength, nonnegative)
            spectype, _, subtype = str(key).partition(":::")
            out.append(TemplateSet(s.templates, s.wavelength, spectype, subtype, s.method,
                                   s.redshifts, s.igm_model))
        return out
    if isinstance(templates, (list, tuple)) and templates and not np.isscalar(templates[0]) \
            and not isinstance(templates[0], (list, tuple, np.ndarray)):
        return [s for t in templates for s in _as_sets(t, template_wavelength, nonnegative)]
    if hasattr(templates, "templates_"):
        T = np.asarray(templates.templates_, dtype=np.float64)
        tw = getattr(templates, "wavelength_", None) if template_wavelength is None \
            else template_wavelength
        if tw is None:
            raise ValueError("the model has no wavelength_ (fit it with wavelength=...) and no "
                             "template_wavelength was given")
    else:
        T = np.atleast_2d(np.asarray(templates, dtype=np.float64))
        if template_wavelength is None:
            raise ValueError("template_wavelength is required when templates is an array")
        tw = template_wavelength
    tw = _check_wavelength(tw, "template_wavelength")
    if T.ndim != 2 or T.shape[1] != tw.size:
        raise ValueError(f"templates must have shape (n_components, {tw.size}); got {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError("templates must be finite")
    if nonnegative and np.any(T < 0):
        raise ValueError("templates have negative entries; pass nonnegative=False to fit them "
                         "by weighted least squares (PCA templates)")
    return [TemplateSet(T, tw, method="NMF" if nonnegative else "PCA")]


# ---------------------------------------------------------------------------
# chi^2 of a block of spectra at many redshifts
# ---------------------------------------------------------------------------
class _Scanner:
    """chi^2 of blocks of spectra against one template set at arbitrary redshifts."""

    def __init__(self, ts, wavelength):
        self.T = np.asarray(ts.templates, dtype=np.float64)
        self.tw = ts.wavelength
        self.q = self.T.shape[0]
        self.nnls = ts.method.upper() != "PCA"
        self.w = wavelength
        self.edges = pixel_edges(wavelength)
        self.F = _cumulative(self.T, self.tw)
        self.iu = gram.pairs(self.q)[:2]
        self.diag = np.flatnonzero(self.iu[0] == self.iu[1])
        self.n_repaired = 0
        self.n_fragile = 0
        go, gt = _log_grid(wavelength), _log_grid(self.tw)
        if go and gt and abs(go[1] - gt[1]) * self.tw.size < _SHIFT_TOL * go[1] \
                and wavelength.size >= 3:
            self._setup_fft(go, gt)

    # -- fast path --------------------------------------------------------
    def _setup_fft(self, go, gt):
        from scipy import fft as sfft

        (o0, dl), (t0, _) = go, gt
        self.o0, self.t0, self.dl = o0, t0, dl
        T = self.T
        r = 10.0 ** dl
        h1, h2 = 1.0 - 1.0 / r, r - 1.0
        # mean over an interior pixel centred on knot m: 3-tap average (module notes)
        U = np.zeros_like(T)
        U[:, 1:-1] = (h1 * (T[:, :-2] + 3 * T[:, 1:-1]) + h2 * (3 * T[:, 1:-1] + T[:, 2:])) \
            / (4.0 * (h1 + h2))
        self.U = U
        self.nfft = sfft.next_fast_len(self.tw.size, real=True)
        self.norm_U = np.linalg.norm(U, axis=1)
        self.norm_U2 = np.linalg.norm(U * U, axis=1)
        P = U[self.iu[0]] * U[self.iu[1]]
        self.FP = sfft.rfft(np.vstack([P, U]), self.nfft, axis=1)

    def lag_of(self, z):
        """Template knot under observed pixel 0 at redshift z, or None if not whole."""
        if not hasattr(self, "dl"):
            return None
        k = (self.o0 - np.log10(1.0 + np.asarray(z, dtype=np.float64)) - self.t0) / self.dl
        kr = np.rint(k)
        if np.all(np.abs(k - kr) < _SHIFT_TOL):
            return kr.astype(np.int64)
        return None

    def correlate(self, X, W):
        """Packed Grams and projections at every lag (nb, P + q, nfft) for a block."""
        from scipy import fft as sfft

        Wi = W.copy()
        Wi[:, 0] = 0.0
        Wi[:, -1] = 0.0
        Fw = np.conj(sfft.rfft(Wi, self.nfft, axis=1))
        Fwx = np.conj(sfft.rfft(Wi * X, self.nfft, axis=1))
        P = self.iu[0].size
        prod = np.empty((X.shape[0], P + self.q, self.FP.shape[1]), dtype=np.complex128)
        np.multiply(Fw[:, None, :], self.FP[None, :P], out=prod[:, :P])
        np.multiply(Fwx[:, None, :], self.FP[None, P:], out=prod[:, P:])
        corr = sfft.irfft(prod, self.nfft, axis=2)
        valid = corr[:, self.diag, :max(1, self.tw.size - X.shape[1] + 1)]
        self.gmax = np.max(np.abs(valid), axis=2)          # (nb, q)
        # scales of the FFT's absolute error (Cauchy-Schwarz on the correlated arrays)
        self.err_G = np.sqrt(np.linalg.norm(Wi, axis=1)[:, None] * self.norm_U2[None])  # (nb, q)
        self.err_b = np.linalg.norm(Wi * X, axis=1)[:, None] * self.norm_U[None]      # (nb, q)
        return corr

    def repair(self, Gp, b, X, W, rows, z):
        """Recompute directly the problems whose FFT Grams are not accurate enough.

        A problem (spectrum ``rows[m]`` at ``z[m]``) is recomputed when some
        template's ``G_kk`` is below ``_FFT_RTOL`` times its largest value over
        the shifts (a template almost off the observed pixels: there the FFT's
        absolute error ~1e-15 of that largest value is no longer negligible).
        """
        bad = np.flatnonzero(np.any(Gp[:, self.diag] < _FFT_RTOL * self.gmax[rows], axis=1))
        self.n_repaired += bad.size
        self._direct(Gp, b, X, W, rows, z, bad)

    def _direct(self, Gp, b, X, W, rows, z, idx):
        """Overwrite problems ``idx`` with Grams computed directly (resampling at their z)."""
        if idx.size == 0:
            return
        zb = z[idx]
        for zz in np.unique(zb):
            sel = idx[zb == zz]
            A = _rebin(self.T, self.tw, self.F, self.edges, zz)
            Gp[sel], b[sel] = gram.row_grams(W[rows[sel]], A, np, X=X[rows[sel]])

    def _ends(self, z):
        """Templates in the first and last pixel at redshifts z: (nz, q, 2)."""
        e = np.stack([self.edges[[0, 1]], self.edges[[-2, -1]]])   # (2, 2)
        u = e[None] / (1.0 + np.asarray(z, dtype=np.float64))[:, None, None]   # (nz, 2, 2)
        Fe = _integral_at(self.T, self.tw, self.F, u)     # (q, nz, 2, 2)
        A = (Fe[..., 1] - Fe[..., 0]) / (u[..., 1] - u[..., 0])
        return np.transpose(A, (1, 0, 2))

    def grams_fft(self, corr, X, W, z, lags, rows=None):
        """Packed Grams (m, P) and b (m, q) for spectra ``rows`` (default all) at z."""
        P = self.iu[0].size
        if rows is None:
            nb, nz = X.shape[0], len(lags)
            M = np.ascontiguousarray(np.transpose(np.take(corr, lags, axis=2), (0, 2, 1)))
            A = self._ends(z)                                    # (nz, q, 2)
            we = W[:, [0, -1]]                                   # (nb, 2)
            ends = np.concatenate([A[:, self.iu[0]] * A[:, self.iu[1]], A], axis=1)
            # end pixels: (nb, 2) x (2, nz * (P + q)); the flux only multiplies the b part
            wx = we * X[:, [0, -1]]
            M[:, :, :P] += (we @ np.ascontiguousarray(
                np.transpose(ends[:, :P], (2, 0, 1))).reshape(2, -1)).reshape(nb, nz, P)
            M[:, :, P:] += (wx @ np.ascontiguousarray(
                np.transpose(ends[:, P:], (2, 0, 1))).reshape(2, -1)).reshape(nb, nz, self.q)
            Gp, b = M[:, :, :P].reshape(-1, P), M[:, :, P:].reshape(-1, self.q)
            self.repair(Gp, b, X, W, np.repeat(np.arange(nb), nz), np.tile(z, nb))
            return Gp, b
        # one z-set per spectrum: corr rows r, lags (m,), z (m,)
        Gp = corr[rows, :P, lags]
        b = corr[rows, P:, lags]
        A = self._ends(z)
        we = W[rows][:, [0, -1]]
        wxe = we * X[rows][:, [0, -1]]
        Gp = Gp + np.einsum("mpe,me->mp", A[:, self.iu[0]] * A[:, self.iu[1]], we)
        b = b + np.einsum("mke,me->mk", A, wxe)
        self.repair(Gp, b, X, W, rows, np.asarray(z, dtype=np.float64))
        return Gp, b

    # -- general path -----------------------------------------------------
    def grams_direct(self, X, W, z):
        """Packed Grams (nb*nz, P) and b (nb*nz, q) by resampling at each z."""
        nb = X.shape[0]
        WX = W * X
        Gp = np.empty((nb, len(z), self.iu[0].size))
        b = np.empty((nb, len(z), self.q))
        for m, zz in enumerate(z):
            A = _rebin(self.T, self.tw, self.F, self.edges, zz)
            Gp[:, m] = gram.row_grams(W, A, np)
            b[:, m] = WX @ A.T
        return Gp.reshape(-1, self.iu[0].size), b.reshape(-1, self.q)

    def solve(self, Gp, b, S, X=None, W=None, rows=None, z=None, fft=False):
        """Coefficients (m, q) and chi^2 (m,) of the problems (S: sum ivar x^2 per problem).

        With the data (``X``, ``W``, each problem's spectrum ``rows`` and
        redshift ``z``), the problems whose Gram is too ill-conditioned for
        the normal equations (templates nearly dependent on the observed
        pixels) are re-solved from the weighted pixels (:meth:`exact`).
        With ``fft`` (Grams from :meth:`correlate`), the problems whose chi^2
        could be off by more than 1e-9 relative given the FFT's error bound
        are solved again with Grams computed directly.
        """
        G = gram.unpack(Gp, self.q, np)
        if self.nnls:
            c, fragile = nnls_gram(Gp, b, packed=True, return_fragile=True)
        else:
            c, fragile = _lstsq_gram(G, b, return_fragile=True)
        Gc = gram.gram_matvec(G, c, np)
        chi2 = problem_chi2_from_grams(S, b, Gc, c)
        bad = np.flatnonzero(fragile)
        self.n_fragile += bad.size
        if bad.size and X is not None:
            for m in bad:
                cm, chm = self.exact(X[rows[m]], W[rows[m]], z[m], from_data=True)
                c[m], chi2[m] = cm[0], chm[0]
        if fft:
            # |d chi^2| <= sum_kl |c_k c_l dG_kl| + 2 sum_k |c_k db_k| with
            # |dG_kl| <= eps sqrt(e_k e_l), |db_k| <= eps f_k (eps: FFT relative error)
            ac = np.abs(c)
            with np.errstate(over="ignore", invalid="ignore"):   # inf bound: redo
                bound = _FFT_EPS * (np.einsum("mk,mk->m", ac, self.err_G[rows]) ** 2
                                    + 2 * np.einsum("mk,mk->m", ac, self.err_b[rows]))
                redo = np.flatnonzero(~(bound <= 1e-9 * np.abs(chi2)) & ~fragile)
            if redo.size:
                self.n_repaired += redo.size
                Gr, br = Gp[redo].copy(), b[redo].copy()
                self._direct(Gr, br, X, W, rows[redo], z[redo], np.arange(redo.size))
                c[redo], chi2[redo] = self.solve(Gr, br, S[redo], X, W, rows[redo], z[redo])
        return c, chi2

    def exact(self, x, w, z, from_data=False):
        """Coefficients (m, q) and chi^2 (m,) of one spectrum at redshifts z (m,),
        with chi^2 summed from the residuals.

        ``from_data``: solve on the weighted pixels (scipy NNLS or least
        squares, templates scaled to unit norm) instead of the Grams.
        """
        z = np.atleast_1d(np.asarray(z, dtype=np.float64))
        obs = w > 0
        A = np.stack([_rebin(self.T, self.tw, self.F, self.edges, zz)[:, obs] for zz in z])
        wo, xo = w[obs], x[obs]
        if from_data:
            c = np.array([from_pixels(xo, wo, Am, nonnegative=self.nnls) for Am in A])
        else:
            G = (A * wo) @ np.transpose(A, (0, 2, 1))
            b = A @ (wo * xo)
            if self.nnls:
                c, fragile = nnls_gram(G[:, self.iu[0], self.iu[1]], b, packed=True,
                                       return_fragile=True)
            else:
                c, fragile = _lstsq_gram(G, b, return_fragile=True)
            for m in np.flatnonzero(fragile):
                c[m] = from_pixels(xo, wo, A[m], nonnegative=self.nnls)
        r = xo - np.einsum("mk,mkj->mj", c, A)
        return c, spectrum_chi2(r, wo[None, :], np)


def _lstsq_gram(G, b, return_fragile=False):
    """Least-squares solutions of G c = b (PCA templates), equilibrated to a unit diagonal.

    A template with ``G_kk == 0`` (not on the observed pixels) gets 0; a
    singular system falls back to the pseudo-inverse (minimum norm).  With
    ``return_fragile``, also which problems have a unit-diagonal Gram with an
    eigenvalue below 1e-9 (to be re-solved from the data).
    """
    d = np.diagonal(G, axis1=1, axis2=2)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    Gs = G * s[:, :, None] * s[:, None, :]
    q = G.shape[1]
    Gs[:, np.arange(q), np.arange(q)] = 1.0       # also the absent templates' (decoupled) rows
    bs = b * s
    try:
        c = np.linalg.solve(Gs, bs[..., None])[..., 0]
        ok = np.all(np.isfinite(c))
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        c = gram.gram_matvec(np.linalg.pinv(Gs, hermitian=True), bs, np)
    if return_fragile:
        return c * s, np.linalg.eigvalsh(Gs)[:, 0] < _FRAGILE_PCA
    return c * s


# ---------------------------------------------------------------------------
# the fitter
# ---------------------------------------------------------------------------
def _find_minima(y):
    """Indices of local minima (edges included), best first."""
    y = np.asarray(y)
    ok = np.r_[True, y[1:] <= y[:-1]] & np.r_[y[:-1] <= y[1:], True]
    ii = np.flatnonzero(ok)
    return ii[np.argsort(y[ii], kind="stable")]


def _parabola(z3, y3):
    """Vertex (z0, z_err, chi2_0) of the parabola through three points, or None.

    ``y = chi2_0 + ((z - z0) / z_err)^2``; None when it opens downwards or
    its vertex lies outside the three points.
    """
    (x0, x1, x2), (y0, y1, y2) = z3, y3
    m1 = (y1 - y0) / (x1 - x0)
    a = ((y2 - y1) / (x2 - x1) - m1) / (x2 - x0)
    if not a > 0:
        return None
    zv = 0.5 * (x0 + x1) - m1 / (2 * a)
    if not (x0 < zv < x2):
        return None
    return zv, 1.0 / np.sqrt(a), y0 + m1 * (zv - x0) + a * (zv - x0) * (zv - x1)


def fit_redshifts(templates, flux, *, ivar=None, wavelength=None, redshifts=None,
                  template_wavelength=None,
                  nonnegative=True, n_minima=3, dv_min=1000.0, n_refine=15, block_size=16,
                  return_chi2_curve=False, progress=None):
    r"""Best redshift of each spectrum against one or several template sets.

    Parameters
    ----------
    templates : SpectralNMF, TemplateSet, array-like, or a list/dict of these
        A fitted model (``templates_`` on the rest-frame ``wavelength_``), an
        array of shape (n_components, n_rest) with ``template_wavelength``, a
        :class:`TemplateSet` (e.g. from :func:`read_redrock`), or several
        (a dict maps ``"SPECTYPE"`` or ``"SPECTYPE:::SUBTYPE"`` to templates);
        the best class is chosen by chi^2.
    flux : array-like of shape (n_spectra, n_pixels), or a specutils Spectrum / NDData
        Observed flux; may be negative; NaN allowed where ``ivar == 0``.  Any
        array with row slicing (``np.memmap``, an HDF5 dataset) is read and
        validated ``block_size`` rows at a time.  A ``Spectrum``/``NDData``
        brings its own ``ivar`` (uncertainty, mask) and spectral axis, which is
        converted to the templates' unit (a model's ``wavelength_unit_``, else
        Angstrom, redrock's).
    ivar : array-like of shape (n_spectra, n_pixels), optional (keyword-only)
        Inverse variance; 0 marks missing pixels.  ``None``: unit weights.
    wavelength : array-like of shape (n_pixels,)
        Observed wavelength of the pixel centres (same units as the templates');
        required unless ``flux`` carries its spectral axis.
    redshifts : array-like of shape (n_redshifts,), optional
        Trial redshifts of the coarse scan, increasing; default each set's own
        (a :class:`TemplateSet` read from a redrock file).  Use
        :func:`redshift_grid` for whole-pixel shifts (the fast path).
    template_wavelength : array-like of shape (n_rest,), optional
        Rest-frame wavelength of array templates.
    nonnegative : bool, default True
        For array/model templates: NNLS coefficients (NMF); False fits by
        weighted least squares (PCA templates may be negative).  A
        :class:`TemplateSet` uses its own ``method``.
    n_minima : int, default 3
        Minima refined per template set.
    dv_min : float, default 1000
        Minima closer than this (km/s) count as one.
    n_refine : int, default 15
        Points of the refinement scan between a minimum's neighbours
        (general path; the fast path scans every whole-pixel shift there).
    block_size : int, default 16
        Spectra per block (memory ~ block_size x n_pairs x n_rest x 16 bytes).
    return_chi2_curve : bool, default False
        Keep the coarse chi^2 curves.
    progress : callable, optional
        Called as ``progress(n_done, n_spectra)`` after each block.

    Returns
    -------
    RedshiftResult

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf.redshift import fit_redshifts, redshift_grid
    >>> rest = 10 ** (3.0 + 1e-3 * np.arange(800))
    >>> T = np.exp(-0.5 * ((rest - 3000.0) / 20.0) ** 2)[None] + 0.1
    >>> obs = 10 ** (np.log10(3500.0) + 1e-3 * np.arange(300))
    >>> z = redshift_grid(0.2, 1.5, wavelength=obs, template_wavelength=rest)
    >>> x = 2 * np.interp(obs / 1.8, rest, T[0])[None]
    >>> r = fit_redshifts(T, x, ivar=np.ones_like(x), wavelength=obs, redshifts=z,
    ...                   template_wavelength=rest)
    >>> bool(abs(r.z[0] - 0.8) < 1e-3)
    True
    """
    from . import interop

    if interop.is_container(flux):
        arrays = interop.as_arrays(flux, ivar=ivar, wavelength=wavelength)
        flux, ivar, wavelength = arrays.flux, arrays.ivar, arrays.wavelength
        if wavelength is None:
            raise ValueError("flux has no spectral axis: pass wavelength=")
        if arrays.wavelength_unit is not None:
            unit = getattr(templates, "wavelength_unit_", None) or "Angstrom"
            wavelength = interop.convert_spectral(wavelength, arrays.wavelength_unit, unit)
    if wavelength is None:
        raise ValueError("wavelength (the observed pixels' wavelengths) is required")
    if ivar is None and hasattr(flux, "shape"):
        ivar = np.ones(tuple(flux.shape))
    sets = _as_sets(templates, template_wavelength, nonnegative)
    names = [s.fulltype for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"template sets need distinct spectype/subtype; got {names}")
    if not hasattr(flux, "shape") or len(flux.shape) != 2:
        flux = np.asarray(flux)
    if not hasattr(ivar, "shape"):
        ivar = np.asarray(ivar)
    if len(flux.shape) != 2 or tuple(ivar.shape) != tuple(flux.shape):
        raise ValueError(f"flux must be 2-D (n_spectra, n_pixels) and ivar of its shape; got "
                         f"{tuple(flux.shape)} and {tuple(ivar.shape)}")
    wave = _check_wavelength(wavelength, "wavelength")
    if wave.size != flux.shape[1]:
        raise ValueError(f"wavelength has {wave.size} values but flux has {flux.shape[1]} "
                         "pixels")
    for name, val in (("n_minima", n_minima), ("n_refine", n_refine), ("block_size", block_size)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name} must be a positive integer; got {val!r}")
    if n_refine < 3:
        raise ValueError(f"n_refine must be >= 3; got {n_refine!r}")
    grids = []
    for s in sets:
        z = s.redshifts if redshifts is None else redshifts
        if z is None:
            raise ValueError(f"no redshifts given and template set {s.fulltype} has none")
        z = np.asarray(z, dtype=np.float64).ravel()
        if z.size < 3 or not np.all(np.isfinite(z)) or np.any(np.diff(z) <= 0) or z[0] <= -1:
            raise ValueError("redshifts must be finite, > -1, strictly increasing, at least 3")
        _check_coverage(s.wavelength, pixel_edges(wave), z, f"templates {s.fulltype}")
        grids.append(z)
    scanners = [_Scanner(s, wave) for s in sets]
    for sc, z in zip(scanners, grids):
        sc.zlo, sc.zhi = z[0], z[-1]
    lags = [sc.lag_of(z) for sc, z in zip(scanners, grids)]
    for s, lg in zip(sets, lags):
        logger.debug("template set %s: %s path", s.fulltype, "FFT" if lg is not None else "direct")

    n = flux.shape[0]
    qmax = max(s.templates.shape[0] for s in sets)
    curves = {nm: np.empty((n, z.size)) for nm, z in zip(names, grids)} if return_chi2_curve \
        else None
    res = {"z": np.full(n, np.nan), "z_err": np.full(n, np.nan), "chi2": np.full(n, np.nan),
           "delta_chi2": np.full(n, np.inf), "zwarn": np.zeros(n, dtype=np.int64),
           "spectype": np.empty(n, dtype=object), "subtype": np.empty(n, dtype=object),
           "coefficients": np.zeros((n, qmax)), "npixels": np.zeros(n, dtype=np.int64)}
    for start in range(0, n, block_size):
        sl = slice(start, min(n, start + block_size))
        # validated block by block: flux may be a memory map or an HDF5 dataset
        X, W = check_spectra(flux[sl], ivar[sl])
        X = np.where(W > 0, X, 0.0)
        res["npixels"][sl] = (W > 0).sum(axis=1)
        cands = [[] for _ in range(sl.stop - sl.start)]
        for si, (sc, z, lg) in enumerate(zip(scanners, grids, lags)):
            found = _scan_block(sc, X, W, z, lg, n_minima, dv_min, n_refine, curves,
                                names[si], sl)
            for i, fi in enumerate(found):
                cands[i].extend(f + (si,) for f in fi)
        for i, cand in enumerate(cands):
            _choose(res, start + i, cand, sets, scanners, X[i], W[i], dv_min)
        if progress is not None:
            progress(sl.stop, n)
    for nm, sc in zip(names, scanners):
        logger.debug("redshift %s: %d problems with Grams recomputed directly (FFT error "
                     "bound), %d re-solved from the pixels (ill-conditioned)", nm,
                     sc.n_repaired, sc.n_fragile)
    res["spectype"] = res["spectype"].astype(str)
    res["subtype"] = res["subtype"].astype(str)
    return RedshiftResult(**res, redshifts=dict(zip(names, grids)), chi2_curve=curves)


def _scan_block(sc, X, W, z, lags, n_minima, dv_min, n_refine, curves, name, sl):
    """Coarse scan + refinement of one block against one template set.

    Returns, per spectrum, a list of minima ``(z, z_err, chi2, zwarn)``,
    best first: ``z`` and ``z_err`` from the parabola, ``chi2`` the lowest of
    the refinement scan (exact on its grid).
    """
    nb, nz = X.shape[0], z.size
    S = spectrum_chi2(X, W, np)                  # chi^2 of a zero model
    if lags is not None:
        corr = sc.correlate(X, W)
        Gp, b = sc.grams_fft(corr, X, W, z, lags)
    else:
        corr = None
        Gp, b = sc.grams_direct(X, W, z)
    rows_all = np.repeat(np.arange(nb), nz)
    _, chi2 = sc.solve(Gp, b, S[rows_all], X, W, rows_all, np.tile(z, nb), fft=corr is not None)
    chi2 = chi2.reshape(nb, nz)
    if curves is not None:
        curves[name][sl] = chi2
    # candidate minima of the coarse curves, and their refinement grids
    picks = []                      # (spectrum, grid index)
    for i in range(nb):
        if not np.any(W[i] > 0):
            continue
        chosen = []
        for iz in _find_minima(chi2[i]):
            if len(chosen) == 2 * n_minima:   # spares for minima merged after refinement
                break
            if any(abs(z[iz] - z[j]) / (1 + z[j]) * _C_KMS < dv_min for j in chosen):
                continue
            chosen.append(iz)
        picks.extend((i, iz) for iz in chosen)
    segs = []
    if corr is not None:
        rows, lg_all = [], []
        for i, iz in picks:
            lo, hi = max(iz - 1, 0), min(iz + 1, nz - 1)
            lg = np.arange(lags[lo], lags[hi] - 1, -1)      # increasing z
            segs.append(lg.size)
            rows.append(np.full(lg.size, i))
            lg_all.append(lg)
        if picks:
            rows, lg_all = np.concatenate(rows), np.concatenate(lg_all)
            zz_all = 10 ** (sc.o0 - sc.t0 - lg_all * sc.dl) - 1
            Gr, br = sc.grams_fft(corr, X, W, zz_all, lg_all, rows=rows)
            _, yy_all = sc.solve(Gr, br, S[rows], X, W, rows, zz_all, fft=True)
        else:
            zz_all = yy_all = np.empty(0)
    else:
        zz_l, yy_l = [], []
        for i, iz in picks:
            lo, hi = max(iz - 1, 0), min(iz + 1, nz - 1)
            zz = np.linspace(z[lo], z[hi], n_refine)
            Gr, br = sc.grams_direct(X[i:i + 1], W[i:i + 1], zz)
            _, yy = sc.solve(Gr, br, np.full(zz.size, S[i]), X, W, np.full(zz.size, i), zz)
            segs.append(zz.size)
            zz_l.append(zz)
            yy_l.append(yy)
        zz_all = np.concatenate(zz_l) if picks else np.empty(0)
        yy_all = np.concatenate(yy_l) if picks else np.empty(0)
    out = [[] for _ in range(nb)]
    start = 0
    for (i, iz), m in zip(picks, segs):
        zz, yy = zz_all[start:start + m], yy_all[start:start + m]
        start += m
        zwarn = ZWarn.Z_FITLIMIT if iz in (0, nz - 1) else 0
        j = int(np.argmin(yy))
        fit = _parabola(zz[j - 1:j + 2], yy[j - 1:j + 2]) if 0 < j < m - 1 else None
        if fit is None:
            zwarn |= ZWarn.BAD_MINFIT
            z0, zerr = zz[j], np.nan
        else:
            z0, zerr, _ = fit
        found = out[i]
        if len(found) < n_minima and not any(
                abs(z0 - f[0]) / (1 + f[0]) * _C_KMS < dv_min for f in found):
            step = (zz[min(j + 1, m - 1)] - zz[max(j - 1, 0)]) / 2
            found.append((float(z0), float(zerr), float(yy[j]), zwarn, float(step)))
    for found in out:
        found.sort(key=lambda f: f[2])
    return out


def _choose(res, i, cand, sets, scanners, x, w, dv_min):
    """Best minimum of spectrum i over all sets; exact chi^2 and coefficients at its z."""
    npix = res["npixels"][i]
    if npix == 0 or not cand:
        res["zwarn"][i] |= ZWarn.NODATA
        res["chi2"][i] = 0.0
        res["spectype"][i] = sets[0].spectype
        res["subtype"][i] = sets[0].subtype
        return
    cand.sort(key=lambda c: c[2])
    z, zerr, ch, zwarn, step, si = cand[0]
    others = [o[2] for o in cand[1:] if abs(o[0] - z) / (1 + z) * _C_KMS >= dv_min]
    delta = (min(others) - ch) if others else np.inf
    if delta < 9.0:
        zwarn |= ZWarn.SMALL_DELTA_CHI2
    q = sets[si].templates.shape[0]
    if npix < 10 * q:
        zwarn |= ZWarn.LITTLE_COVERAGE
    sc = scanners[si]
    if not zwarn & ZWarn.BAD_MINFIT:
        # sub-step refinement (by direct resampling) around the parabola's vertex
        zf = np.clip(z + step * np.linspace(-1.0, 1.0, 9), sc.zlo, sc.zhi)
        _, yf = sc.exact(x, w, zf)
        j = int(np.argmin(yf))
        fit = _parabola(zf[j - 1:j + 2], yf[j - 1:j + 2]) if 0 < j < zf.size - 1 else None
        if fit is not None:
            z, zerr = fit[0], fit[1]
    c, ch = sc.exact(x, w, z)
    c, ch = c[0], float(ch[0])
    res["z"][i], res["z_err"][i], res["chi2"][i] = z, zerr, ch
    res["delta_chi2"][i], res["zwarn"][i] = delta, zwarn
    res["coefficients"][i, :q] = c
    res["spectype"][i], res["subtype"][i] = sets[si].spectype, sets[si].subtype


# ---------------------------------------------------------------------------
# redrock template files
# ---------------------------------------------------------------------------
def write_redrock(path, model_or_templates, *, wavelength=None, spectype="QSO", subtype="",
                  igm_model="None", redshifts=None, method=None, overwrite=False):
    """Write templates as a redrock template file (``redrock.templates.Template(path)``).

    Parameters
    ----------
    path : str
    model_or_templates : SpectralNMF or array-like of shape (n_components, n_rest)
    wavelength : array-like of shape (n_rest,), optional
        Rest-frame wavelength (default the model's ``wavelength_``); must be
        uniform in log10 (written with ``LOGLAM = 1``) or in wavelength.
    spectype, subtype : str
        redrock's RRTYPE and RRSUBTYP.
    igm_model : str, default "None"
        RRIGM: the IGM transmission redrock applies ("None": none, as specnmf).
    redshifts : array-like, optional
        Written as the REDSHIFTS HDU (redrock's trial redshifts for the file).
    method : {"NMF", "PCA"}, optional
        RRMETHOD; default NMF for non-negative templates, else PCA.
    overwrite : bool, default False
    """
    from astropy.io import fits

    if hasattr(model_or_templates, "templates_"):
        T = np.asarray(model_or_templates.templates_, dtype=np.float64)
        if wavelength is None:
            wavelength = getattr(model_or_templates, "wavelength_", None)
    else:
        T = np.atleast_2d(np.asarray(model_or_templates, dtype=np.float64))
    if wavelength is None:
        raise ValueError("wavelength is required (the model has no wavelength_)")
    w = _check_wavelength(wavelength, "wavelength")
    if T.ndim != 2 or T.shape[1] != w.size:
        raise ValueError(f"templates must have shape (n_components, {w.size}); got {T.shape}")
    if method is None:
        method = "NMF" if np.all(T >= 0) else "PCA"
    method = str(method).upper()
    if method not in ("NMF", "PCA"):
        raise ValueError(f"method must be 'NMF' or 'PCA'; got {method!r}")
    if method == "NMF" and np.any(T < 0):
        raise ValueError("method='NMF' needs non-negative templates")
    if not spectype or not str(spectype).strip():
        raise ValueError("spectype must be a non-empty string (e.g. 'QSO')")
    lg = _log_grid(w)
    if lg is not None:
        crval, cdelt, loglam = lg[0], lg[1], 1
    else:
        step = (w[-1] - w[0]) / (w.size - 1)
        if np.max(np.abs(w - (w[0] + step * np.arange(w.size)))) > 1e-6 * step:
            raise ValueError("redrock templates need a wavelength grid uniform in log10 or in "
                             "wavelength; resample the templates onto one first")
        crval, cdelt, loglam = float(w[0]), float(step), 0
    from . import __version__

    hdr = fits.Header()
    hdr["CRVAL1"] = (crval, "first wavelength" + (" (log10 Angstrom)" if loglam else ""))
    hdr["CDELT1"] = (cdelt, "wavelength step")
    hdr["LOGLAM"] = (loglam, "1: CRVAL1, CDELT1 are log10(wavelength)")
    hdr["RRTYPE"] = (str(spectype).strip().upper(), "spectral type")
    hdr["RRSUBTYP"] = (str(subtype).strip().upper(), "spectral subtype")
    hdr["RRMETHOD"] = (method, "NMF: NNLS coefficients; PCA: least squares")
    hdr["RRIGM"] = (str(igm_model), "IGM model redrock applies")
    hdr["VERSION"] = (f"specnmf-{__version__}", "template version")
    hdr["INSTRUME"] = ("specnmf", "written by specnmf")
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(T, header=hdr, name="BASIS_VECTORS")]
    if redshifts is not None:
        hdus.append(fits.ImageHDU(np.asarray(redshifts, dtype=np.float64), name="REDSHIFTS"))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)


def read_redrock(path):
    """Read a redrock template file (PCA or NMF) as a :class:`TemplateSet`.

    The wavelength grid is rebuilt from CRVAL1/CDELT1 (and LOGLAM) as redrock
    does; REDSHIFTS, RRTYPE, RRSUBTYP, RRMETHOD (default PCA) and RRIGM are
    kept.  specnmf applies no IGM transmission (a warning says so when the
    file asks for one).
    """
    from astropy.io import fits

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with fits.open(path, memmap=False) as hdul:
        if "BASIS_VECTORS" not in hdul:
            raise ValueError(f"{path} is not a redrock template file (no BASIS_VECTORS HDU)")
        h = hdul["BASIS_VECTORS"].header
        T = np.asarray(hdul["BASIS_VECTORS"].data, dtype=np.float64)
        w = h["CRVAL1"] + h["CDELT1"] * np.arange(h["NAXIS1"], dtype=np.float64)
        if h.get("LOGLAM", 0):
            w = 10 ** w
        z = np.asarray(hdul["REDSHIFTS"].data, dtype=np.float64) if "REDSHIFTS" in hdul else None
        igm = str(h.get("RRIGM", "None"))
        ts = TemplateSet(T, w, str(h.get("RRTYPE", "")).strip().upper(),
                         str(h.get("RRSUBTYP", "")).strip().upper(),
                         str(h.get("RRMETHOD", "PCA")).strip().upper(), z, igm)
    if igm.lower() != "none":
        logger.warning("%s asks for the %s IGM model; specnmf fits the templates without IGM "
                       "transmission", path, igm)
    return ts


def redrock_fit(template_paths, flux, *, ivar, wavelength, nminima=3):
    """Redshifts by redrock itself (``redrock.zfind``), for comparisons.

    Needs redrock (``pip install redrock``).  Each spectrum becomes a redrock
    target with one spectrum and an identity resolution matrix; the trial
    redshifts are those of each template file (its REDSHIFTS HDU, see
    :func:`write_redrock`).  Runs in this process (``mp_procs=1``).

    Parameters
    ----------
    template_paths : str or list of str
        redrock template files.
    flux, ivar : array-like of shape (n_spectra, n_pixels)
    wavelength : array-like of shape (n_pixels,)
    nminima : int, default 3

    Returns
    -------
    dict
        ``z``, ``z_err``, ``chi2``, ``delta_chi2``, ``zwarn``, ``spectype``
        (arrays of shape (n_spectra,)) and ``coefficients``.
    """
    import contextlib
    import io as _io
    import warnings

    import scipy.sparse
    from redrock.targets import DistTargetsCopy, Spectrum, Target
    from redrock.templates import DistTemplate, Template
    from redrock.zfind import zfind

    if isinstance(template_paths, (str, os.PathLike)):
        template_paths = [template_paths]
    X, W = check_spectra(flux, ivar)
    X = np.where(W > 0, X, 0.0)
    wave = _check_wavelength(wavelength, "wavelength")
    d = wave.size
    R = scipy.sparse.dia_matrix((np.ones((1, d)), [0]), shape=(d, d))
    targets = [Target(i, [Spectrum(wave, X[i].copy(), W[i].copy(), R, R.tocsr())])
               for i in range(X.shape[0])]
    # redrock prints progress to stdout; keep the caller's output clean
    with contextlib.redirect_stdout(_io.StringIO()), warnings.catch_warnings(), \
            np.errstate(all="ignore"):
        warnings.simplefilter("ignore")   # redrock's own numerical warnings
        dtarg = DistTargetsCopy(targets)
        dwave = dtarg.wavegrids()
        dtemps = [DistTemplate(Template(str(p)), dwave, mp_procs=1) for p in template_paths]
        _, zfit = zfind(dtarg, dtemps, mp_procs=1, nminima=nminima)
    best = zfit[zfit["znum"] == 0]
    best = best[np.argsort(np.asarray(best["targetid"]))]
    return {"z": np.asarray(best["z"], dtype=float),
            "z_err": np.asarray(best["zerr"], dtype=float),
            "chi2": np.asarray(best["chi2"], dtype=float),
            "delta_chi2": np.asarray(best["deltachi2"], dtype=float),
            "zwarn": np.asarray(best["zwarn"], dtype=np.int64),
            "spectype": np.asarray(best["spectype"]).astype(str),
            "coefficients": np.asarray(best["coeff"], dtype=float)}
