"""Named loaders for survey spectrum files (used through :mod:`specnmf.io`).

One loader per layout, as in specutils' ``io/default_loaders``: each turns a
file users download into plain arrays in specnmf's orientation, one spectrum
per row, with the layout's conventions applied once:

* ``ivar == 0`` marks missing data: pixels whose bitmask is non-zero (SDSS
  ``and_mask``, DESI ``MASK``, LAMOST ``andmask``), whose inverse variance is
  negative or non-finite, or whose flux is non-finite;
* wavelengths are in Angstrom; whether they are in air or vacuum is recorded
  in :attr:`Spectra.medium` (all three surveys use vacuum wavelengths);
* FITS data are big-endian; every array returned is a native-order copy.

=========  ===================================================  =======================
format     layout                                               wavelength
=========  ===================================================  =======================
``sdss``   SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits``: binary      ``10**loglam``, vacuum
           table ``COADD`` (``flux``, ``ivar``, ``and_mask``,
           ``loglam``)
``desi``   DESI coadd/spectra: per camera ``B_``/``R_``/``Z_``  per camera, vacuum
           ``WAVELENGTH``, ``FLUX``, ``IVAR``, ``MASK``
``lamost`` LAMOST low-resolution (DR1-DR7 image layout):       ``10**(COEFF0 + COEFF1 i)``,
           primary image rows flux, ivar, normalised flux,      vacuum
           andmask, ormask
=========  ===================================================  =======================

DESI's three cameras overlap in wavelength (B 3600-5800, R 5760-7620,
Z 7520-9824 Angstrom).  :func:`read_desi` returns one camera
(``camera="b"``) or, by default, :func:`coadd_cameras`: the cameras merged
onto one common grid, with the overlapping pixels averaged with inverse
variance weights (as ``desispec.coaddition.coadd_cameras`` does).  DESI
cameras share one grid by construction (a common 0.8 Angstrom step); cameras
on grids that do not line up are refused rather than interpolated, since
interpolation correlates the noise of neighbouring pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

__all__ = ["read_sdss", "read_desi", "read_lamost", "coadd_cameras", "ivar_from_variance"]

# FITS keywords that describe the file's structure, never carried between files
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "TFIELDS",
    "EXTNAME", "EXTVER", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "", "BSCALE",
    "BZERO", "BLANK", "THEAP", "ZIMAGE", "END",
}


@dataclass
class Spectra:
    """Spectra read from a file, in specnmf's orientation.

    Attributes
    ----------
    flux : ndarray of shape (n_spectra, n_pixels)
        Flux; may be negative; may be NaN where ``ivar == 0``.  With
        ``memmap=True`` a lazily-read array-like (``np.memmap``, FITS memmap or
        ``h5py.Dataset``) supporting ``shape``, ``dtype`` and row slicing.
    ivar : ndarray of shape (n_spectra, n_pixels)
        Inverse variance with masked pixels set to 0 (lazy with ``memmap=True``).
    wavelength : ndarray of shape (n_pixels,) or None
        Common wavelength grid, if the file has one.
    meta : dict
        Header cards of the file (FITS primary and FLUX headers, HDF5 root
        attributes), as plain ``{keyword: value}``, without structural keywords.
    path : str or None
        The file read.
    format : str or None
        The layout read: ``"image"``, ``"table"``, ``"npz"``, ``"npy"``,
        ``"hdf5"``, ``"sdss"``, ``"desi"``, ``"lamost"`` or ``"cube"``.
    wavelength_unit : str or None
        Unit of ``wavelength`` (``"Angstrom"`` for the survey layouts).
    medium : {"air", "vacuum"} or None
        Whether ``wavelength`` is in air or vacuum, when the layout says.
    flux_unit : str or None
        Unit of ``flux`` (the file's ``BUNIT``), when the file says.
    spatial_shape : tuple of int or None
        ``(ny, nx)`` when the file is an IFU cube read as one spectrum per
        spaxel (row ``y * nx + x``).
    """

    flux: object
    ivar: object
    wavelength: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    path: str | None = None
    format: str | None = None
    wavelength_unit: str | None = None
    medium: str | None = None
    flux_unit: str | None = None
    spatial_shape: tuple | None = None

    @property
    def shape(self):
        """(n_spectra, n_pixels)."""
        return tuple(self.flux.shape)


def _require(module, purpose, extra):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - astropy and h5py are test dependencies
        raise ImportError(f"{purpose} needs {module.split('.')[0]}: "
                          f"pip install 'specnmf[{extra}]'") from exc


def _require_fits():
    return _require("astropy.io.fits", "reading and writing FITS files", "fits")


def _require_h5py():
    return _require("h5py", "reading and writing HDF5 files", "io")


def _header_dict(*headers) -> dict:
    meta = {}
    for header in headers:
        if header is None:
            continue
        for card in header.cards:
            key = card.keyword
            if key in _STRUCTURAL or key.startswith(("NAXIS", "TTYPE", "TFORM", "TDIM", "TUNIT",
                                                      "TNULL", "TSCAL", "TZERO", "TDISP", "ZNAXIS")):
                continue
            value = card.value
            if isinstance(value, (bool, Integral, Real, str)):
                meta[key] = value.item() if isinstance(value, np.generic) else value
    return meta


def ivar_from_variance(variance, *, kind="variance"):
    """Inverse variance from a variance (or standard deviation) array.

    Parameters
    ----------
    variance : array-like
        The error array, of any shape.
    kind : {"variance", "sigma", "ivar", "isigma"}, default="variance"
        What the array holds: variance (ESO ``HDUCLAS3 = 'MSE'``), standard
        deviation (``'RMSE'``), inverse variance (``'INVMSE'``) or inverse
        standard deviation (``'INVRMSE'``).

    Returns
    -------
    ndarray of the shape of ``variance``, float64 (float32 stays float32)
        ``1 / variance``, and 0 where the error is zero, negative or
        non-finite (unknown error: missing data).  A new native-order array.

    Examples
    --------
    >>> import numpy as np
    >>> ivar_from_variance(np.array([4.0, 0.0, -1.0, np.nan]))
    array([0.25, 0.  , 0.  , 0.  ])
    >>> ivar_from_variance(np.array([2.0]), kind="sigma")
    array([0.25])
    """
    kinds = ("variance", "sigma", "ivar", "isigma")
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds}; got {kind!r}")
    v = np.asarray(variance)
    dt = np.float32 if v.dtype == np.float32 else np.float64
    v = v.astype(dt)  # native-order copy
    good = np.isfinite(v) & (v > 0)
    safe = np.where(good, v, 1)
    out = {"variance": lambda: 1 / safe, "sigma": lambda: 1 / safe**2,
           "ivar": lambda: safe, "isigma": lambda: safe**2}[kind]()
    return np.where(good, out, 0).astype(dt)


def _check_bad_bits(bad_bits):
    if bad_bits is not None and (isinstance(bad_bits, bool) or not isinstance(bad_bits, Integral)
                                 or bad_bits <= 0):
        raise ValueError(f"bad_bits must be None or a positive int bitmask; got {bad_bits!r}")


def _clean(flux, ivar, mask=None, bad_bits=None):
    """Native float copies with ivar = 0 wherever the pixel cannot be used."""
    flux = np.atleast_2d(np.asarray(flux)).astype(np.float64)
    ivar = ivar_from_variance(np.atleast_2d(np.asarray(ivar)).astype(np.float64), kind="ivar")
    drop = ~np.isfinite(flux)
    if mask is not None:
        mask = np.atleast_2d(np.asarray(mask))
        if mask.dtype.kind == "f":  # LAMOST stores its masks as float rows
            mask = np.where(np.isfinite(mask), mask, 1).astype(np.int64)
        drop |= (mask != 0) if bad_bits is None else (mask.astype(np.int64) & int(bad_bits)) != 0
    ivar[drop] = 0
    flux[~np.isfinite(flux)] = 0  # only where ivar == 0: keeps the data finite
    return flux, ivar


def _open(path):
    fits = _require_fits()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return fits.open(path, memmap=False, lazy_load_hdus=False)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable FITS file ({exc})") from exc


# -- SDSS / BOSS --------------------------------------------------------------
def read_sdss(path, *, hdu="COADD", bad_bits=None):
    """Read an SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` file.

    Parameters
    ----------
    path : str or path-like
    hdu : str or int, default="COADD"
        The binary table with the columns ``flux``, ``ivar``, ``and_mask``
        and ``loglam`` (one row per pixel).
    bad_bits : int or None, default=None
        Which bits of the mask make a pixel missing: ``None``, any non-zero
        bit (specutils' rule); or a bitmask of the bits to honour.

    Returns
    -------
    Spectra
        ``flux`` and ``ivar`` of shape (1, n_pixels) in the file's unit
        (``flux_unit``, 1e-17 erg/s/cm^2/Angstrom), ``wavelength = 10**loglam``
        in vacuum Angstrom.  Pixels with a non-zero ``and_mask`` (flagged in
        every exposure) get ``ivar = 0``.  Some ``and_mask`` bits are
        informational (e.g. bit 4, MANYBADCOLUMNS, flags 1755 of the 3838
        pixels of the sample file while their ``ivar`` is positive); pass
        ``bad_bits`` to honour only the bits you consider bad.  ``meta``
        holds the primary header cards plus ``CLASS`` and ``Z`` from
        ``SPECOBJ`` when present.
    """
    path = os.fspath(path)
    _check_bad_bits(bad_bits)
    with _open(path) as hdul:
        try:
            table = hdul[hdu]
        except (KeyError, IndexError) as exc:
            raise ValueError(f"{path}: no HDU {hdu!r}; not an SDSS spec file") from exc
        cols = {c.lower(): c for c in table.columns.names} if hasattr(table, "columns") else {}
        missing = [c for c in ("flux", "ivar", "loglam") if c not in cols]
        if missing:
            raise ValueError(f"{path}: HDU {hdu!r} lacks the SDSS column(s) {missing}")
        data = table.data
        flux, ivar = data[cols["flux"]], data[cols["ivar"]]
        mask = data[cols["and_mask"]] if "and_mask" in cols else None
        wave = 10 ** np.asarray(data[cols["loglam"]], dtype=np.float64)
        meta = _header_dict(hdul[0].header)
        if "SPECOBJ" in hdul and hasattr(hdul["SPECOBJ"], "columns"):
            spec = hdul["SPECOBJ"].data
            for key in ("CLASS", "SUBCLASS", "Z", "Z_ERR"):
                if key in spec.columns.names:
                    value = spec[key][0]
                    meta[key] = value.decode().strip() if isinstance(value, bytes) else \
                        (str(value).strip() if isinstance(value, str) else float(value))
    flux, ivar = _clean(flux, ivar, mask, bad_bits)
    return Spectra(flux=flux, ivar=ivar, wavelength=wave, meta=meta, path=path, format="sdss",
                    wavelength_unit="Angstrom", medium="vacuum",
                    flux_unit=meta.get("BUNIT"))


# -- DESI ----------------------------------------------------------------------
def _desi_cameras(hdul):
    names = {h.name.upper() for h in hdul}
    return [n[:-5] for n in sorted(names, key=lambda n: "BRZ".find(n[0]) if n[0] in "BRZ" else 9)
            if n.endswith("_FLUX") and n[:-5] + "_WAVELENGTH" in names]


def read_desi(path, *, camera=None, bad_bits=None):
    """Read a DESI coadd (or spectra) file.

    Parameters
    ----------
    path : str or path-like
    camera : {None, "b", "r", "z"}, default=None
        One camera's spectra on its own grid, or (``None``) all cameras merged
        by :func:`coadd_cameras` onto one common grid.
    bad_bits : int or None, default=None
        As in :func:`read_sdss`.

    Returns
    -------
    Spectra
        ``flux`` and ``ivar`` of shape (n_targets, n_pixels), ``wavelength``
        in vacuum Angstrom.  Pixels with a non-zero ``MASK`` get ``ivar = 0``.
        ``meta`` holds the primary header cards and ``CAMERAS``;
        ``meta["TARGETID"]`` is the first target's id when a FIBERMAP is present.
    """
    path = os.fspath(path)
    _check_bad_bits(bad_bits)
    with _open(path) as hdul:
        cameras = _desi_cameras(hdul)
        if not cameras:
            raise ValueError(f"{path}: no <camera>_FLUX with <camera>_WAVELENGTH extensions; "
                             "not a DESI coadd/spectra file")
        if camera is not None:
            if not isinstance(camera, str) or camera.upper() not in cameras:
                raise ValueError(f"camera must be None or one of "
                                 f"{[c.lower() for c in cameras]}; got {camera!r}")
            cameras = [camera.upper()]
        meta = _header_dict(hdul[0].header)
        if "FIBERMAP" in hdul and "TARGETID" in hdul["FIBERMAP"].columns.names:
            meta["TARGETID"] = int(hdul["FIBERMAP"].data["TARGETID"][0])
        unit = hdul[f"{cameras[0]}_FLUX"].header.get("BUNIT")
        per_camera = {}
        for cam in cameras:
            flux = hdul[f"{cam}_FLUX"].data
            ivar = hdul[f"{cam}_IVAR"].data if f"{cam}_IVAR" in hdul else np.ones(flux.shape)
            mask = hdul[f"{cam}_MASK"].data if f"{cam}_MASK" in hdul else None
            wave = np.asarray(hdul[f"{cam}_WAVELENGTH"].data, dtype=np.float64)
            flux, ivar = _clean(flux, ivar, mask, bad_bits)
            if wave.shape != (flux.shape[1],):
                raise ValueError(f"{path}: {cam}_WAVELENGTH has shape {wave.shape} but "
                                 f"{cam}_FLUX has {flux.shape[1]} pixels")
            per_camera[cam.lower()] = Spectra(
                flux=flux, ivar=ivar, wavelength=wave, meta={**meta, "CAMERAS": cam.lower()},
                path=path, format="desi", wavelength_unit="Angstrom", medium="vacuum",
                flux_unit=unit)
    if camera is not None:
        return per_camera[camera.lower()]
    return coadd_cameras(per_camera)


def coadd_cameras(spectra, *, rtol=1e-3):
    """Merge spectra of several cameras onto one wavelength grid.

    The common grid runs from the bluest to the reddest pixel with the
    cameras' (common) step; each camera's pixels must fall on it (within
    ``rtol`` of a step).  Where cameras overlap, the merged pixel is the
    inverse-variance weighted mean, ``sum(ivar * flux) / sum(ivar)``, with
    inverse variance ``sum(ivar)``; grid pixels no camera covers get
    ``ivar = 0``.

    Parameters
    ----------
    spectra : dict of {name: Spectra} or sequence of Spectra
        Same number of spectra (rows) in each, each with a ``wavelength``.
    rtol : float, default=1e-3
        Largest allowed offset of a camera pixel from the common grid, in
        units of the step.

    Returns
    -------
    Spectra
        Of shape (n_spectra, n_grid).

    Raises
    ------
    ValueError
        Cameras with different steps or with grids offset from each other:
        they cannot be merged without interpolation; read one camera at a
        time instead (``read_desi(path, camera="b")``).
    """
    items = list(spectra.items()) if isinstance(spectra, dict) else \
        [(getattr(s, "meta", {}).get("CAMERAS", str(i)), s) for i, s in enumerate(spectra)]
    if not items:
        raise ValueError("spectra is empty; give at least one camera")
    n = items[0][1].flux.shape[0]
    steps = []
    for name, s in items:
        if s.wavelength is None or len(s.wavelength) < 2:
            raise ValueError(f"camera {name!r} has no wavelength grid")
        if s.flux.shape[0] != n:
            raise ValueError(f"camera {name!r} has {s.flux.shape[0]} spectra, the first camera "
                             f"{n}; cameras must hold the same targets")
        steps.append(float(np.median(np.diff(s.wavelength))))
    step = steps[0]
    if not np.allclose(steps, step, rtol=rtol, atol=0):
        raise ValueError(f"the cameras have different wavelength steps {steps}; they cannot be "
                         "merged without interpolation (read one camera with camera=...)")
    start = min(float(s.wavelength[0]) for _, s in items)
    end = max(float(s.wavelength[-1]) for _, s in items)
    n_grid = int(round((end - start) / step)) + 1
    grid = start + step * np.arange(n_grid)
    num = np.zeros((n, n_grid))
    den = np.zeros((n, n_grid))
    for name, s in items:
        idx = np.rint((s.wavelength - start) / step).astype(np.int64)
        offset = np.max(np.abs(grid[idx] - s.wavelength)) / step
        if offset > rtol:
            raise ValueError(f"camera {name!r} is offset by {offset:.3g} pixel from the common "
                             "grid; it cannot be merged without interpolation (read one camera "
                             "with camera=...)")
        ivar = np.asarray(s.ivar, dtype=np.float64)
        # np.add.at: a camera never has two pixels on one grid point, but be exact anyway
        np.add.at(num, (slice(None), idx), ivar * np.asarray(s.flux, dtype=np.float64))
        np.add.at(den, (slice(None), idx), ivar)
    flux = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    first = items[0][1]
    meta = {**first.meta, "CAMERAS": "".join(str(name) for name, _ in items)}
    return Spectra(flux=flux, ivar=den, wavelength=grid, meta=meta, path=first.path,
                    format=first.format, wavelength_unit=first.wavelength_unit,
                    medium=first.medium, flux_unit=first.flux_unit)


# -- LAMOST --------------------------------------------------------------------
def read_lamost(path, *, bad_bits=None):
    """Read a LAMOST low-resolution spectrum (DR1-DR7 image layout).

    The primary image has one row per quantity: flux, inverse variance,
    sky-subtracted continuum-normalised flux, andmask, ormask; the wavelength
    of pixel ``i`` is ``10**(COEFF0 + COEFF1 * i)`` Angstrom, in vacuum.

    Parameters
    ----------
    path : str or path-like
    bad_bits : int or None, default=None
        As in :func:`read_sdss`.

    Returns
    -------
    Spectra
        ``flux`` and ``ivar`` of shape (1, n_pixels).  Pixels with a non-zero
        ``andmask`` get ``ivar = 0``.  ``meta`` holds the header (``CLASS``,
        ``Z``, ...).
    """
    path = os.fspath(path)
    _check_bad_bits(bad_bits)
    with _open(path) as hdul:
        header = hdul[0].header
        data = hdul[0].data
        if data is None or data.ndim != 2 or data.shape[0] < 2:
            raise ValueError(f"{path}: the primary HDU must be an image of shape (>= 2, n_pixels) "
                             "(rows flux, ivar, ...); not a LAMOST spectrum")
        if "COEFF0" not in header or "COEFF1" not in header:
            raise ValueError(f"{path}: no COEFF0/COEFF1 (log10 wavelength solution) in the header")
        n_pix = data.shape[1]
        wave = 10 ** (float(header["COEFF0"]) + float(header["COEFF1"]) * np.arange(n_pix))
        flux, ivar = data[0], data[1]
        mask = data[3] if data.shape[0] >= 4 else None
        meta = _header_dict(header)
    flux, ivar = _clean(flux, ivar, mask, bad_bits)
    medium = "air" if header.get("VACUUM") is False else "vacuum"
    return Spectra(flux=flux, ivar=ivar, wavelength=wave, meta=meta, path=path, format="lamost",
                    wavelength_unit="Angstrom", medium=medium, flux_unit=meta.get("BUNIT"))
