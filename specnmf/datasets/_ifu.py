"""A simulated integral-field (IFU) cube with known truth.

Three smooth non-negative spectral components (a blue continuum, a red
continuum and an emission-line spectrum) are mixed by Gaussian "blob" maps on
a (ny, nx) grid of spaxels, and heteroscedastic Gaussian noise is added.  The
outskirts of the blobs are faint, so the noise drives many pixels negative,
which is the regime specnmf is built for.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

__all__ = ["Bunch", "make_ifu_cube"]

# rest wavelengths (Angstrom) and relative strengths of the simulated emission lines
_LINES = ((4861.3, 0.35), (4958.9, 0.3), (5006.8, 0.9), (6548.0, 0.15),
          (6562.8, 1.0), (6583.5, 0.45), (6716.4, 0.2), (6730.8, 0.15))


class Bunch(dict):
    """A dict whose keys are also attributes (as ``sklearn.utils.Bunch``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def __dir__(self):
        return list(self.keys())


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return int(value)


def _absorption(wavelength, lines, width):
    depth = np.zeros_like(wavelength)
    for centre, strength in lines:
        depth += strength * np.exp(-0.5 * ((wavelength - centre) / width) ** 2)
    return np.exp(-depth)


def _smoothstep(x, lo, hi):
    """0 below ``lo``, 1 above ``hi``, a smooth (C1) cubic ramp between."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ifu_templates(wavelength):
    """The three true component spectra, each scaled to a maximum of 1.

    Each is exactly 0 over part of the range (the blue continuum in the red,
    the red continuum in the blue, the gas between its lines): together with
    the maps' spaxels of their own this makes the factorisation unique up to
    scale, so fitted maps can be compared with the true ones.
    """
    x = (wavelength - wavelength.min()) / np.ptp(wavelength)
    dl = float(np.median(np.diff(wavelength)))
    # hot, young population: blue continuum fading to the red, Balmer absorption
    blue = (1.0 - _smoothstep(x, 0.15, 0.8)) * (1.0 - 0.3 * x) \
        * _absorption(wavelength, ((4861.3, 0.4), (6562.8, 0.3)), max(4.0 * dl, 8.0))
    # old population: red continuum rising from the blue, metal lines (Mg b,
    # Fe, Na D) that the blue component lacks
    red = _smoothstep(x, 0.05, 0.7) * (0.8 + 0.2 * x) \
        * _absorption(wavelength, ((5175.0, 0.35), (5270.0, 0.2), (5335.0, 0.15),
                                   (5893.0, 0.3)), max(4.0 * dl, 10.0))
    # ionised gas: emission lines only, two pixels wide so that they are
    # resolved on any grid; lines outside the range are dropped, tails kept
    gas = np.zeros_like(wavelength)
    for centre, strength in _LINES:
        profile = np.exp(-0.5 * ((wavelength - centre) / (2.0 * dl)) ** 2)
        gas += strength * np.where(profile > 1e-6, profile, 0.0)
    templates = np.stack([blue, red, gas])
    peak = templates.max(axis=1, keepdims=True)
    if np.any(peak <= 0):
        raise ValueError("wavelength_range holds none of the simulated emission lines; "
                         "include some of 4861-6731 Angstrom")
    return templates / peak


def _blob(yy, xx, y0, x0, sy, sx, theta=0.0, cut=2.5):
    """A Gaussian blob truncated to exactly 0 beyond ``cut`` standard deviations.

    The exact zeros give every component spaxels of its own, which makes the
    factorisation unique up to scale (a smooth Gaussian tail everywhere would
    let components trade flux without changing the cube).
    """
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - y0, xx - x0
    u = (c * dx + s * dy) / sx
    v = (-s * dx + c * dy) / sy
    floor = np.exp(-0.5 * cut * cut)
    return np.clip(np.exp(-0.5 * (u * u + v * v)) - floor, 0.0, None) / (1.0 - floor)


def _ifu_maps(ny, nx, rng):
    """Coefficient maps of shape (ny, nx, 3): smooth, non-negative, overlapping.

    Each component has spaxels of its own (the red bulge on one side, the
    blue disc on the other, gas knots in and beyond the disc), so the
    factorisation is identifiable up to scale.
    """
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    scale = min(ny, nx)
    # red, old "bulge": compact, left of centre
    red = 1.2 * _blob(yy, xx, cy - 0.05 * ny, cx - 0.22 * nx, 0.1 * scale, 0.1 * scale)
    # blue "disc": elongated, tilted, right of centre
    blue = 0.8 * _blob(yy, xx, cy + 0.05 * ny, cx + 0.15 * nx, 0.1 * scale, 0.25 * scale,
                       theta=1.0)
    # gas: compact star-forming knots, two in the disc and two beyond the
    # stellar light (so that gas also has spaxels of its own); positions jitter
    gas = np.zeros((ny, nx))
    for fy, fx in ((0.7, 0.7), (0.4, 0.6), (0.88, 0.15), (0.1, 0.25)):
        y0 = (fy + rng.uniform(-0.03, 0.03)) * (ny - 1)
        x0 = (fx + rng.uniform(-0.03, 0.03)) * (nx - 1)
        gas += rng.uniform(0.6, 1.2) * _blob(yy, xx, y0, x0, 0.06 * scale, 0.06 * scale)
    return np.stack([blue, red, gas], axis=-1)


def make_ifu_cube(ny=30, nx=30, n_wave=300, *, snr=5.0, wavelength_range=(4500.0, 7000.0),
                  random_state=None):
    """Simulate an IFU cube with three known components.

    The cube is ``truth + noise`` with ``truth[y, x] = sum_k maps[y, x, k] *
    templates[k]``.  The noise is Gaussian, with a standard deviation that
    varies along wavelength (brighter "sky" near both ends) and is the same
    for every spaxel, so faint spaxels have signal-to-noise well below 1 and
    many negative pixels.

    Parameters
    ----------
    ny, nx : int, default=30
        Spatial size of the cube (spaxels).
    n_wave : int, default=300
        Number of wavelength pixels, at least 10.
    snr : float, default=5.0
        Signal-to-noise ratio of the *mean* truth pixel: the typical noise
        level is ``mean(truth) / snr``.
    wavelength_range : (float, float), default=(4500.0, 7000.0)
        First and last wavelength (Angstrom) of the linear grid.
    random_state : int, numpy.random.Generator or None
        Seed of the noise and of the positions of the emission-line knots.

    Returns
    -------
    Bunch
        ``cube`` of shape (ny, nx, n_wave): noisy flux (may be negative);
        ``ivar`` of shape (ny, nx, n_wave): inverse variance of the noise;
        ``truth`` of shape (ny, nx, n_wave): the noiseless cube;
        ``templates`` of shape (3, n_wave): true component spectra (max 1 each,
        order blue continuum, red continuum, emission lines);
        ``maps`` of shape (ny, nx, 3): true coefficient maps;
        ``wavelength`` of shape (n_wave,): Angstrom;
        ``component_names``: ``("blue_continuum", "red_continuum", "emission_lines")``.

    Examples
    --------
    >>> from specnmf.datasets import make_ifu_cube
    >>> sim = make_ifu_cube(8, 10, 50, random_state=0)
    >>> sim.cube.shape, sim.maps.shape, sim.templates.shape
    ((8, 10, 50), (8, 10, 3), (3, 50))
    """
    from ..init import check_random_state

    ny = _check_int(ny, "ny", 1)
    nx = _check_int(nx, "nx", 1)
    n_wave = _check_int(n_wave, "n_wave", 10)
    if isinstance(snr, bool) or not isinstance(snr, Real) or not np.isfinite(snr) or snr <= 0:
        raise ValueError(f"snr must be a positive finite number; got {snr!r}")
    lo, hi = (float(v) for v in wavelength_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"wavelength_range must be (low, high) with 0 < low < high; "
                         f"got {wavelength_range!r}")
    rng = check_random_state(random_state)

    wavelength = np.linspace(lo, hi, n_wave)
    templates = _ifu_templates(wavelength)
    maps = _ifu_maps(ny, nx, rng)
    truth = maps @ templates
    x = (wavelength - wavelength.mean()) / np.ptp(wavelength)
    sigma_wave = (float(truth.mean()) / snr) * (0.8 + 0.8 * x * x)
    sigma = np.broadcast_to(sigma_wave, truth.shape)
    cube = truth + rng.normal(size=truth.shape) * sigma
    ivar = np.ascontiguousarray(1.0 / sigma**2)
    return Bunch(cube=cube, ivar=ivar, truth=truth, templates=templates, maps=maps,
                 wavelength=wavelength,
                 component_names=("blue_continuum", "red_continuum", "emission_lines"))
