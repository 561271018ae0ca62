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


def _ifu_templates(wavelength):
    """The three true component spectra, each scaled to a maximum of 1."""
    x = (wavelength - wavelength.mean()) / np.ptp(wavelength)
    # hot, young population: blue continuum declining to the red
    blue = 1.0 / (1.0 + np.exp(4.0 * (x + 0.1))) + 0.25
    # old population: red continuum, smooth and rising with a gentle curvature
    red = 0.3 + 0.7 / (1.0 + np.exp(-5.0 * (x - 0.05))) - 0.05 * np.cos(3.0 * x)
    # ionised gas: emission lines on a weak nebular continuum; line width two
    # pixels so that the lines are resolved on any grid
    dl = float(np.median(np.diff(wavelength)))
    gas = np.full_like(wavelength, 0.02)
    for centre, strength in _LINES:
        # lines outside the simulated range are dropped, their tails kept
        gas += strength * np.exp(-0.5 * ((wavelength - centre) / (2.0 * dl)) ** 2)
    templates = np.stack([blue, red, gas])
    return templates / templates.max(axis=1, keepdims=True)


def _blob(yy, xx, y0, x0, sy, sx, theta=0.0):
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - y0, xx - x0
    u = (c * dx + s * dy) / sx
    v = (-s * dx + c * dy) / sy
    return np.exp(-0.5 * (u * u + v * v))


def _ifu_maps(ny, nx, rng):
    """Coefficient maps of shape (ny, nx, 3): smooth, non-negative, overlapping."""
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    scale = min(ny, nx)
    # red, old "bulge": centred and compact
    red = 1.2 * _blob(yy, xx, cy, cx, 0.15 * scale, 0.15 * scale)
    # blue "disc": elongated, tilted, slightly off centre
    blue = 0.8 * _blob(yy, xx, cy + 0.05 * ny, cx - 0.05 * nx, 0.18 * scale, 0.38 * scale,
                       theta=0.5)
    # gas: a few compact star-forming knots placed at random along the disc
    gas = np.zeros((ny, nx))
    for _ in range(4):
        t = rng.uniform(-0.3, 0.3)
        y0 = cy + 0.05 * ny + t * scale * np.sin(0.5)
        x0 = cx - 0.05 * nx + t * scale * np.cos(0.5)
        gas += rng.uniform(0.6, 1.2) * _blob(yy, xx, y0, x0, 0.07 * scale, 0.07 * scale)
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
