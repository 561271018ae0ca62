r"""Simulators for the Nearly-NMF paper's examples (Green & Bailey 2024).

* :func:`make_doublet` -- the toy problem of the paper's Introduction: a
  double Gaussian per exposure with Poisson plus Gaussian noise, so that the
  flux goes negative away from the lines.
* :func:`make_quasars` -- a stand-in for ``simqso`` (not available here):
  power-law quasar continua with broad emission lines and a Lyman-alpha
  forest, observed at 3600-10000 Angstrom on a log10 grid, with Poisson and
  Gaussian noise at a low mean signal-to-noise ratio.

Both return a :class:`SimulatedSpectra` with arrays in specnmf's orientation,
``(n_spectra, n_pixels)``, and draw all random numbers from the one
``numpy.random.Generator`` built from ``random_state``, so a seed reproduces
the data exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from ..init import check_random_state

logger = logging.getLogger("specnmf")

__all__ = ["SimulatedSpectra", "make_doublet", "make_quasars", "QUASAR_LINES"]

_C_KMS = 299_792.458
_LYA = 1215.67


@dataclass
class SimulatedSpectra:
    """Simulated spectra with their noise-free truth.

    Attributes
    ----------
    X : ndarray of shape (n_spectra, n_pixels)
        Noisy flux (may be negative).
    ivar : ndarray of shape (n_spectra, n_pixels)
        Inverse variance estimated as a survey pipeline would: ``1 / (Gaussian
        variance + Poisson variance estimated from the observed counts)``.
    truth : ndarray of shape (n_spectra, n_pixels)
        Noise-free flux, ``>= 0``.
    wavelength : ndarray of shape (n_pixels,)
        Pixel coordinate: observed wavelength in Angstrom for quasars, the
        pixel index for the doublet.
    redshift : ndarray of shape (n_spectra,) or None
        Quasar redshifts (``None`` for the doublet).
    params : dict
        Per-spectrum parameters of the truth (e.g. line heights, slopes) and
        the noise settings, for diagnostics.

    It unpacks as ``X, ivar, truth = make_doublet()``, the tuple of the
    paper's toy; the other fields are read by name.
    """

    X: np.ndarray
    ivar: np.ndarray
    truth: np.ndarray
    wavelength: np.ndarray
    redshift: np.ndarray | None = None
    params: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.X, self.ivar, self.truth))

    @property
    def shape(self):
        """``(n_spectra, n_pixels)``."""
        return self.X.shape


def _check_count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return int(value)


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


# -- the doublet ---------------------------------------------------------------
def make_doublet(n_exposures=500, n_pixels=510, *, height=25.0, variance_range=(4.0, 16.0),
                 variance_per="pixel", random_state=None):
    r"""The paper's toy problem: noisy exposures of a double Gaussian.

    Each exposure is two Gaussians of width ``20 * n_pixels / 510`` pixels
    centred at pixels ``218`` and ``318`` (for 510 pixels; scaled with
    ``n_pixels``), in photon counts.  The first line has height ``height``,
    the second ``height * s`` with ``s ~ U(1/2, 2)``, so the ratio of the two
    heights lies between 1:2 and 2:1.  These values match the bundled
    :func:`specnmf.datasets.load_doublet` data (fitted: heights 25 and
    25 x U(0.5, 2), centres 218 and 318, width 19.6).

    Noise, as in the paper: the noise-free signal is the mean of a Poisson
    draw per pixel; zero-mean Gaussian noise with a randomly chosen variance
    ``~ U(*variance_range)`` is added.  The inverse variance is
    ``1 / (Gaussian variance + Poisson counts)``: the observed counts estimate
    the Poisson variance, as a pipeline would (it never knows the truth).

    Parameters
    ----------
    n_exposures : int, default=500
        Number of spectra.
    n_pixels : int, default=510
        Number of pixels (>= 10).
    height : float, default=25.0
        Height of the first Gaussian, in counts.
    variance_range : (float, float), default=(4.0, 16.0)
        Range of the uniform Gaussian noise variances (counts^2).
    variance_per : {"pixel", "exposure"}, default="pixel"
        ``"pixel"``: an independent variance for every pixel of every exposure
        (the paper's "independent and randomly chosen variances");
        ``"exposure"``: one variance per exposure, as in the bundled file.
    random_state : int, numpy.random.Generator or None
        Seed.

    Returns
    -------
    SimulatedSpectra
        ``X``, ``ivar``, ``truth`` of shape (n_exposures, n_pixels);
        ``wavelength`` is the pixel index; ``params`` holds ``"heights"`` of
        shape (n_exposures, 2), ``"centers"``, ``"width"`` and
        ``"gaussian_variance"`` of shape (n_exposures, n_pixels).

    Examples
    --------
    >>> from specnmf.datasets._simulate import make_doublet
    >>> data = make_doublet(50, random_state=0)
    >>> data.X.shape, bool((data.X < 0).any()), bool((data.truth >= 0).all())
    ((50, 510), True, True)
    """
    n = _check_count(n_exposures, "n_exposures")
    d = _check_count(n_pixels, "n_pixels", minimum=10)
    height = _check_positive(height, "height")
    try:
        vlo, vhi = (float(v) for v in variance_range)
    except (TypeError, ValueError):
        raise ValueError(f"variance_range must be two numbers; got {variance_range!r}") from None
    if not (0 < vlo <= vhi and np.isfinite(vhi)):
        raise ValueError(f"variance_range must satisfy 0 < low <= high; got {variance_range!r}")
    if variance_per not in ("pixel", "exposure"):
        raise ValueError(f"variance_per must be 'pixel' or 'exposure'; got {variance_per!r}")
    rng = check_random_state(random_state)

    x = np.arange(d, dtype=np.float64)
    scale = d / 510.0
    centers = np.array([218.0, 318.0]) * scale
    width = 20.0 * scale
    profiles = np.exp(-0.5 * ((x[None, :] - centers[:, None]) / width) ** 2)   # (2, d)
    heights = np.empty((n, 2))
    heights[:, 0] = height
    heights[:, 1] = height * rng.uniform(0.5, 2.0, size=n)
    truth = heights @ profiles

    counts = rng.poisson(truth).astype(np.float64)
    if variance_per == "pixel":
        gvar = rng.uniform(vlo, vhi, size=(n, d))
    else:
        gvar = np.repeat(rng.uniform(vlo, vhi, size=(n, 1)), d, axis=1)
    X = counts + rng.standard_normal((n, d)) * np.sqrt(gvar)
    ivar = 1.0 / (gvar + counts)
    params = {"heights": heights, "centers": centers, "width": width, "gaussian_variance": gvar}
    return SimulatedSpectra(X, ivar, truth, x, None, params)


# -- quasars -------------------------------------------------------------------
#: Broad (and narrow [OIII]) lines: name -> (rest wavelength [A], typical
#: equivalent width [A], typical FWHM [km/s]).  Equivalent widths are rough
#: composite-spectrum values (Vanden Berk et al. 2001 scale).
QUASAR_LINES = {
    "Lyb": (1025.7, 10.0, 4000.0),
    "Lya": (1215.7, 80.0, 4000.0),
    "NV": (1240.1, 20.0, 3000.0),
    "SiIV": (1399.8, 8.0, 4500.0),
    "CIV": (1549.1, 30.0, 4500.0),
    "CIII]": (1908.7, 20.0, 5000.0),
    "MgII": (2798.8, 35.0, 4500.0),
    "Hg": (4341.7, 30.0, 3500.0),
    "Hb": (4862.7, 60.0, 4000.0),
    "[OIII]": (5008.2, 15.0, 600.0),
    "Ha": (6564.6, 250.0, 3500.0),
}


def _tau_eff(z):
    """Mean Lyman-alpha forest optical depth (Faucher-Giguere et al. 2008 power law)."""
    return 0.0018 * (1.0 + z) ** 3.92


# Absorber model: optical depth at line centre log-uniform in [0.05, 5] and a
# Gaussian profile of width (in pixels of the 1e-4 log10 grid, ~2 x 69 km/s)
# uniform in [0.7, 2.0]; on coarser grids the width is floored at 0.7 pixel
# so that no absorber falls between pixel centres.
_TAU_RANGE = (0.05, 5.0)
_SIGMA_RANGE = (0.7, 2.0)
_MIN_SIGMA_PIX = 0.7


def _absorber_sigma_range(dloglam):
    r = 1e-4 / dloglam
    return (max(_SIGMA_RANGE[0] * r, _MIN_SIGMA_PIX), max(_SIGMA_RANGE[1] * r, _MIN_SIGMA_PIX))


def _mean_absorber_width(sig_lo, sig_hi, half, n_samples=2000):
    """Mean equivalent width (pixels) of one absorber, sum_j (1 - exp(-tau_j)).

    For a Poisson set of absorbers with additive optical depth, the mean
    transmission is exp(-rate * mean width), so the absorber rate per pixel
    that gives the mean forest opacity tau_eff is tau_eff / mean width.
    Averaged over the optical depths, widths and sub-pixel centres on a fixed
    quadrature grid (deterministic).
    """
    u = (np.arange(n_samples) + 0.5) / n_samples
    tau0 = np.exp(np.log(_TAU_RANGE[0]) + u * np.log(_TAU_RANGE[1] / _TAU_RANGE[0]))
    sig = np.linspace(sig_lo, sig_hi, 8)
    phase = (np.arange(8) + 0.5) / 8 - 0.5
    x = np.arange(-half, half + 1)[None, :] - phase[:, None]                # (8, nx)
    prof = np.exp(-0.5 * (x[None, :, :] / sig[:, None, None]) ** 2)         # (8, 8, nx)
    w = (1 - np.exp(-tau0[:, None, None, None] * prof[None])).sum(-1)       # (n, 8, 8)
    return float(w.mean())


def _gaussian_lines(buf, pad, loglam_obs0, dloglam, log_center_obs, amp, sigma_dex, half):
    """Add Gaussians ``amp * exp(-0.5 ((loglam - c) / s)^2)`` to rows of ``buf`` in place.

    ``buf`` has shape (n, n_pixels + 2 * pad) with ``pad >= 2 * half``: the
    padding keeps every window in range (no masks).  ``log_center_obs``,
    ``amp``, ``sigma_dex`` have shape (n,): one line per row.  Only a window
    of ``2 * half + 1`` pixels around each centre is evaluated, which keeps
    the cost independent of the number of pixels.
    """
    n, width = buf.shape
    d = width - 2 * pad
    centre = np.rint((log_center_obs - loglam_obs0) / dloglam).astype(np.int64)
    # lines whose window misses the grid entirely contribute nothing
    amp = np.where((centre >= -half) & (centre < d + half), amp, 0.0)
    centre = np.clip(centre, -half, d - 1 + half)
    cols = centre[:, None] + np.arange(-half, half + 1)[None, :]
    u = ((loglam_obs0 - log_center_obs[:, None] + cols * dloglam)
         / sigma_dex[:, None]).astype(buf.dtype)
    vals = amp[:, None].astype(buf.dtype) * np.exp(-0.5 * u * u)
    # the (row, col) pairs of one call are unique, so a fancy-indexed += is exact
    buf[np.arange(n)[:, None], cols + pad] += vals


def make_quasars(n, *, random_state=None, snr=1.5, z_range=(0.0, 4.0),
                 wavelength_range=(3600.0, 10000.0), dloglam=1e-4, mean_counts=10.0,
                 line_scatter=0.25, forest=True, dtype="float32"):
    r"""Simulated quasar spectra with Poisson and Gaussian noise (a ``simqso`` stand-in).

    Truth, per object (rest wavelength :math:`\lambda_r = \lambda/(1+z)`):

    * continuum :math:`A\,(\lambda_r / 3000\,\mathrm{\AA})^{\alpha}` with
      slope :math:`\alpha \sim N(-1.5, 0.3)` (:math:`f_\nu \propto \nu^{-0.5}`)
      and amplitude :math:`A` log-normal (0.2 dex);
    * the emission lines of :data:`QUASAR_LINES` (Ly-beta to H-alpha) as
      Gaussians with equivalent width and FWHM scattered log-normally by
      ``line_scatter`` dex (FWHM by half that) around typical values;
    * blueward of Ly-alpha, a forest of random Lyman-alpha absorbers: a
      Poisson number of Gaussian optical-depth profiles whose rate follows the
      observed mean opacity :math:`\tau_\mathrm{eff}(z) = 0.0018 (1+z)^{3.92}`
      (stronger at higher absorber redshift); transmission ``exp(-tau)``.
      Lyman-continuum absorption and metal lines are not modelled.

    Noise, as in the paper: the truth is converted to photons with one global
    gain chosen so that a typical spectrum has ``mean_counts`` photons per
    pixel, drawn from a Poisson distribution and converted back; zero-mean
    Gaussian noise of standard deviation ``mean(truth_i) / snr`` is then added
    to spectrum i, so the mean SNR of the Gaussian noise is ``snr``.  The
    inverse variance is ``1 / (sigma_i^2 + counts / gain^2)``.

    Parameters
    ----------
    n : int
        Number of spectra.
    random_state : int, numpy.random.Generator or None
        Seed.
    snr : float, default=1.5
        Mean signal-to-noise ratio per pixel of the Gaussian noise.
    z_range : (float, float), default=(0, 4)
        Redshifts are uniform in this range.
    wavelength_range : (float, float), default=(3600, 10000)
        Observed range in Angstrom.
    dloglam : float, default=1e-4
        Step of the observed log10-wavelength grid (4437 pixels by default).
    mean_counts : float, default=10.0
        Photons per pixel of a typical spectrum (sets the Poisson noise level).
    line_scatter : float, default=0.25
        Log-normal scatter (dex) of the line equivalent widths.
    forest : bool, default=True
        Add the Lyman-alpha forest.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the returned arrays (float32 halves the memory:
        20 000 spectra take about 1 GB for flux, ivar and truth together).

    Returns
    -------
    SimulatedSpectra
        ``X``, ``ivar``, ``truth`` of shape (n, n_pixels); ``wavelength``
        (observed, Angstrom) of shape (n_pixels,); ``redshift`` of shape (n,);
        ``params`` with ``"slope"``, ``"amplitude"``, ``"ew"`` (n, n_lines),
        ``"fwhm"`` (n, n_lines), ``"sigma"`` (n,), ``"gain"``, ``"lines"``.

    Examples
    --------
    >>> from specnmf.datasets._simulate import make_quasars
    >>> q = make_quasars(20, random_state=1)
    >>> q.X.shape, q.wavelength.shape, q.redshift.shape
    ((20, 4437), (4437,), (20,))
    """
    n = _check_count(n, "n")
    snr = _check_positive(snr, "snr")
    dloglam = _check_positive(dloglam, "dloglam")
    mean_counts = _check_positive(mean_counts, "mean_counts")
    if isinstance(line_scatter, bool) or not isinstance(line_scatter, Real) or not (
            np.isfinite(line_scatter) and line_scatter >= 0):
        raise ValueError(f"line_scatter must be a finite number >= 0; got {line_scatter!r}")
    try:
        z_lo, z_hi = (float(v) for v in z_range)
    except (TypeError, ValueError):
        raise ValueError(f"z_range must be two numbers; got {z_range!r}") from None
    if not (0 <= z_lo <= z_hi and np.isfinite(z_hi)):
        raise ValueError(f"z_range must satisfy 0 <= low <= high; got {z_range!r}")
    try:
        w_lo, w_hi = (float(v) for v in wavelength_range)
    except (TypeError, ValueError):
        raise ValueError(f"wavelength_range must be two numbers; got {wavelength_range!r}") from None
    if not (0 < w_lo < w_hi and np.isfinite(w_hi)):
        raise ValueError(f"wavelength_range must satisfy 0 < low < high; got {wavelength_range!r}")
    if dtype not in ("float32", "float64", np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    dt = np.dtype(dtype)
    rng = check_random_state(random_state)

    loglam0 = np.log10(w_lo)
    d = int(np.floor((np.log10(w_hi) - loglam0) / dloglam + 1e-9)) + 1
    loglam = loglam0 + dloglam * np.arange(d)
    wavelength = 10.0 ** loglam

    z = rng.uniform(z_lo, z_hi, size=n)
    log1pz = np.log10(1.0 + z)
    slope = rng.normal(-1.5, 0.3, size=n)
    amp = 10.0 ** rng.normal(0.0, 0.2, size=n)

    # continuum, (n, d): A (lambda_r / 3000)^alpha = A 10^(alpha (loglam - log1pz - log 3000))
    # built in place in the working precision: (n, d) float64 temporaries
    # would dominate the run time and memory at survey sizes
    truth = (loglam[None, :] - np.log10(3000.0)).astype(dt) - log1pz[:, None].astype(dt)
    truth *= (np.log(10.0) * slope[:, None]).astype(dt)
    np.exp(truth, out=truth)
    truth *= amp[:, None].astype(dt)
    continuum_at = lambda lam_rest: amp * (lam_rest / 3000.0) ** slope  # noqa: E731

    names = list(QUASAR_LINES)
    ew = np.empty((n, len(names)))
    fwhm = np.empty((n, len(names)))
    sig = np.empty((n, len(names)))
    for k, name in enumerate(names):
        _, ew0, fwhm0 = QUASAR_LINES[name]
        ew[:, k] = ew0 * 10.0 ** rng.normal(0.0, line_scatter, size=n)
        fwhm[:, k] = fwhm0 * 10.0 ** rng.normal(0.0, line_scatter / 2, size=n)
    # Gaussian in log10(lambda): sigma_dex = FWHM / 2.3548 / c / ln 10
    sig = fwhm / 2.3548 / _C_KMS / np.log(10.0)
    halves = [int(np.ceil(4.5 * sig[:, k].max() / dloglam)) for k in range(len(names))]
    pad = 2 * max(halves)
    buf = np.zeros((n, d + 2 * pad), dtype=dt)
    for k, name in enumerate(names):
        lam0 = QUASAR_LINES[name][0]
        sigma_lam_rest = sig[:, k] * np.log(10.0) * lam0
        # peak flux density so that the line flux is EW * continuum (rest frame)
        peak = ew[:, k] * continuum_at(lam0) / (np.sqrt(2 * np.pi) * sigma_lam_rest)
        _gaussian_lines(buf, pad, loglam0, dloglam, np.log10(lam0) + log1pz, peak, sig[:, k],
                        halves[k])
    truth += buf[:, pad:pad + d]
    del buf

    if forest:
        truth *= _forest_transmission(n, d, loglam, z, dloglam, rng, dt)

    # photons: one global gain so that a typical (median) spectrum has mean_counts per pixel
    mean_flux = truth.mean(axis=1, dtype=np.float64)
    gain = mean_counts / float(np.median(mean_flux))
    counts = rng.poisson(truth.astype(np.float64) * gain).astype(dt)
    sigma = mean_flux / snr
    X = counts / dt.type(gain)
    X += rng.standard_normal((n, d), dtype=np.float32).astype(dt, copy=False) * sigma[:, None].astype(dt)
    var = (sigma[:, None] ** 2).astype(dt) + counts / dt.type(gain * gain)
    del counts
    ivar = np.reciprocal(var, out=var)
    params = {"slope": slope, "amplitude": amp, "ew": ew, "fwhm": fwhm, "sigma": sigma,
              "gain": gain, "lines": names, "snr": snr}
    return SimulatedSpectra(X, ivar, truth, wavelength, z, params)


def _forest_transmission(n, d, loglam, z, dloglam, rng, dt):
    """exp(-tau) of a Poisson set of Lyman-alpha absorbers, of shape (n, d).

    Absorber positions depend only on the *observed* pixel (absorber redshift
    ``lambda / 1216 - 1``), so one cumulative rate along the observed grid
    serves every spectrum: spectrum i receives absorbers blueward of its own
    Ly-alpha, ``lambda < 1216 (1 + z_i)``.
    """
    lam = 10.0 ** loglam
    z_abs = np.clip(lam / _LYA - 1.0, 0.0, None)
    sig_lo, sig_hi = _absorber_sigma_range(dloglam)
    half = int(np.ceil(3.5 * sig_hi)) + 1
    rate = _tau_eff(z_abs) / _mean_absorber_width(sig_lo, sig_hi, half)   # per pixel
    cum = np.concatenate([[0.0], np.cumsum(rate)])               # (d + 1,)
    edge = (np.log10(_LYA * (1.0 + z)) - loglam[0]) / dloglam + 0.5   # pixels blueward
    edge = np.clip(edge, 0.0, d)
    total = np.interp(edge, np.arange(d + 1), cum)
    counts = rng.poisson(total)
    owner = np.repeat(np.arange(n), counts)
    m = owner.size
    tau = np.zeros(n * d, dtype=dt)
    if m:
        # inverse-CDF sampling of positions (in pixels) under the cumulative rate
        u = rng.uniform(size=m) * total[owner]
        pos = np.interp(u, cum, np.arange(d + 1)) - 0.5
        tau0 = np.exp(rng.uniform(np.log(_TAU_RANGE[0]), np.log(_TAU_RANGE[1]), size=m))
        sig = rng.uniform(sig_lo, sig_hi, size=m)
        centre = np.rint(pos).astype(np.int64)
        # accumulate offset by offset so no (m, window) temporaries are made
        for off in range(-half, half + 1):
            col = centre + off
            ok = (col >= 0) & (col < d)
            val = tau0[ok] * np.exp(-0.5 * ((col[ok] - pos[ok]) / sig[ok]) ** 2)
            np.add.at(tau, owner[ok] * d + col[ok], val.astype(dt))
    np.negative(tau, out=tau)
    return np.exp(tau, out=tau).reshape(n, d)
