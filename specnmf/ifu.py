r"""Integral-field (IFU) cubes as matrices of spectra, and back.

An IFU cube holds one spectrum per spaxel.  specnmf keeps cubes in memory as
``(ny, nx, n_wave)`` arrays (wavelength last); FITS files store them as
``(n_wave, ny, nx)`` (NAXIS1 = x, NAXIS2 = y, NAXIS3 = wavelength), and every
function that takes a cube accepts that order through ``wave_axis=0``.

The matrix of spectra has one row per spaxel, in C order:
row ``i = y * nx + x``, which is also the neighbour convention of the
``Spatial`` penalty.  So, with ``spatial_shape = (ny, nx)``,

* ``X, ivar, spatial_shape = cube_to_matrix(cube, ivar=ivar, mask=mask)`` gives the
  ``(n_spaxels, n_wave)`` inputs of :class:`specnmf.SpectralNMF`;
* ``coefficient_maps(model.coefficients_, spatial_shape)`` (or
  ``coefficient_maps(model)`` for a model fitted by :func:`fit_cube`) gives
  the ``(ny, nx, n_components)`` maps of the components;
* ``reconstruct_cube(coefficients, templates, spatial_shape, component=k)``
  gives the model cube, or the part of it due to component ``k``.

FITS metadata are carried through: the celestial part of the input cube's
WCS describes the coefficient maps (:func:`write_maps`), and its spectral
part describes the templates (:func:`spectral_header`).  Reading and writing
FITS needs astropy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

from . import interop
from ._readers import ivar_from_variance as _ivar_from_variance
from ._validation import check_ivar

logger = logging.getLogger("specnmf")

__all__ = [
    "cube_to_matrix",
    "matrix_to_cube",
    "coefficient_maps",
    "reconstruct_cube",
    "fit_cube",
    "IFUCube",
    "read_cube",
    "write_cube",
    "write_maps",
    "read_maps",
    "celestial_header",
    "spectral_header",
    "wavelength_from_header",
]


# -- validation --------------------------------------------------------------
def _wave_axis(wave_axis):
    if isinstance(wave_axis, bool) or not isinstance(wave_axis, Integral) \
            or wave_axis not in (0, 2, -1, -3):
        raise ValueError(f"wave_axis must be -1 (cube of shape (ny, nx, n_wave)) or 0 "
                         f"(FITS order (n_wave, ny, nx)); got {wave_axis!r}")
    return -1 if wave_axis in (2, -1) else 0


def _numeric(a, name):
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array; could not convert it: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    return arr


def _float_dtype(arr):
    return np.float32 if arr.dtype == np.float32 else np.float64


def _as_wave_last(arr, wave_axis):
    return arr if wave_axis == -1 else np.moveaxis(arr, 0, -1)


def _spatial_shape(spatial_shape):
    try:
        shape = tuple(spatial_shape)
    except TypeError:
        shape = ()
    if len(shape) != 2 or not all(isinstance(s, Integral) and not isinstance(s, bool)
                                   and s >= 1 for s in shape):
        raise ValueError(f"spatial_shape must be a pair of positive ints (ny, nx); "
                         f"got {spatial_shape!r}")
    return int(shape[0]), int(shape[1])


def _rows_matrix(M, name, spatial_shape, allow_1d=False):
    ny, nx = _spatial_shape(spatial_shape)
    M = _numeric(M, name)
    if M.ndim == 1 and allow_1d:
        M = M[:, None]
    if M.ndim != 2:
        raise ValueError(f"{name} must be 2-D with one row per spaxel; got shape {M.shape}")
    if M.shape[0] != ny * nx:
        raise ValueError(f"{name} has {M.shape[0]} rows but spatial_shape={(ny, nx)} "
                         f"has {ny * nx} spaxels")
    return M, (ny, nx)


# -- cube <-> matrix ---------------------------------------------------------
def cube_to_matrix(cube, *, ivar=None, mask=None, wave_axis=-1):
    """Reshape a cube (and its weights) into a matrix of spectra, one per spaxel.

    Parameters
    ----------
    cube : array-like of shape (ny, nx, n_wave), or (n_wave, ny, nx) with ``wave_axis=0``
        Flux; may be negative.  Non-finite flux (NaN, inf) marks a missing
        pixel: its ``ivar`` becomes 0 and its flux 0.
    ivar : array-like of the shape of ``cube``, optional
        Inverse variance, finite and >= 0 (0 = missing).  ``None``: unit weights.
    mask : array-like of the shape of ``cube``, optional
        Non-zero marks a bad pixel; it gets ``ivar = 0`` whatever ``ivar`` says
        (the mask wins), its flux is kept.
    wave_axis : {-1, 0}, default=-1
        Axis of ``cube`` (and ``ivar``, ``mask``) along wavelength: -1 for
        (ny, nx, n_wave), 0 for the FITS order (n_wave, ny, nx).

    Returns
    -------
    X : ndarray of shape (ny * nx, n_wave)
        Flux, row ``y * nx + x`` for spaxel (y, x).  float32 input stays
        float32, anything else becomes float64.  A new array.
    ivar : ndarray of shape (ny * nx, n_wave)
        Inverse variance of the same dtype, 0 where missing or masked.
    spatial_shape : tuple of int
        ``(ny, nx)``, for :func:`matrix_to_cube`, :func:`coefficient_maps` and
        ``SpectralNMF.fit(..., spatial_shape=)``.

    Examples
    --------
    >>> import numpy as np
    >>> cube = np.arange(24.0).reshape(2, 3, 4)
    >>> X, ivar, shape = cube_to_matrix(cube)
    >>> X.shape, shape
    ((6, 4), (2, 3))
    >>> bool(np.all(X[1 * 3 + 2] == cube[1, 2]))
    True
    """
    axis = _wave_axis(wave_axis)
    cube = _numeric(cube, "cube")
    if cube.ndim != 3:
        raise ValueError(f"cube must be 3-D, (ny, nx, n_wave) or with wave_axis=0 "
                         f"(n_wave, ny, nx); got a {cube.ndim}-D array of shape {cube.shape}")
    if cube.size == 0:
        raise ValueError(f"cube is empty (shape {cube.shape})")
    dt = _float_dtype(cube)
    flux = _as_wave_last(cube, axis).astype(dt, copy=True)
    ny, nx, n_wave = flux.shape

    w = np.array(_as_wave_last(check_ivar(ivar, cube.shape, dt, of="cube"), axis), copy=True)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != cube.shape:
            raise ValueError(f"mask must have the shape of cube, {cube.shape}; got {mask.shape}")
        if mask.dtype.kind not in "biuf":
            raise TypeError(f"mask must be a boolean or integer array; got dtype {mask.dtype}")
        w[_as_wave_last(mask, axis) != 0] = 0

    bad = ~np.isfinite(flux)
    if np.any(bad):
        logger.debug("cube_to_matrix: %d non-finite flux pixels given ivar = 0", int(bad.sum()))
        w[bad] = 0
        flux[bad] = 0
    return flux.reshape(ny * nx, n_wave), w.reshape(ny * nx, n_wave), (ny, nx)


def matrix_to_cube(M, spatial_shape, *, wave_axis=-1):
    """Reshape a matrix with one row per spaxel back into a cube.

    Parameters
    ----------
    M : array-like of shape (ny * nx, n)
        Row ``y * nx + x`` belongs to spaxel (y, x), as made by :func:`cube_to_matrix`.
    spatial_shape : (int, int)
        ``(ny, nx)``.
    wave_axis : {-1, 0}, default=-1
        -1 returns (ny, nx, n); 0 returns the FITS order (n, ny, nx).

    Returns
    -------
    ndarray of shape (ny, nx, n) or (n, ny, nx)
        A new array.
    """
    axis = _wave_axis(wave_axis)
    M, (ny, nx) = _rows_matrix(M, "M", spatial_shape)
    cube = np.array(M).reshape(ny, nx, M.shape[1])
    return cube if axis == -1 else np.ascontiguousarray(np.moveaxis(cube, -1, 0))


def _coefficients_of(coefficients):
    # a fitted model is accepted wherever its coefficients are
    return getattr(coefficients, "coefficients_", coefficients)


def coefficient_maps(coefficients, spatial_shape=None):
    """Maps of the components' coefficients over the field.

    Parameters
    ----------
    coefficients : array-like of shape (ny * nx, n_components), or a fitted model
        Coefficients (``model.coefficients_``), one row per spaxel.
    spatial_shape : (int, int), optional
        ``(ny, nx)``.  May be left out for a model fitted by :func:`fit_cube`
        (or with ``fit(..., spatial_shape=)``), which remembers it as
        ``spatial_shape_``.

    Returns
    -------
    ndarray of shape (ny, nx, n_components)
        ``maps[y, x, k]`` is the coefficient of component ``k`` at spaxel (y, x).
    """
    if spatial_shape is None:
        spatial_shape = getattr(coefficients, "spatial_shape_", None)
        if spatial_shape is None:
            raise ValueError("spatial_shape is needed: pass (ny, nx), or a model fitted with "
                             "fit_cube (which remembers it as spatial_shape_)")
    C, (ny, nx) = _rows_matrix(_coefficients_of(coefficients), "coefficients", spatial_shape)
    return np.array(C).reshape(ny, nx, C.shape[1])


def reconstruct_cube(coefficients, templates, spatial_shape, component=None, *, wave_axis=-1):
    """The model cube, or the contribution of one component to it.

    Parameters
    ----------
    coefficients : array-like of shape (ny * nx, n_components), or a fitted model
    templates : array-like of shape (n_components, n_wave)
    spatial_shape : (int, int)
        ``(ny, nx)``.
    component : int or None, default=None
        ``None``: the full model ``coefficients @ templates``.  An int ``k``:
        the part due to component ``k`` alone,
        ``coefficients[:, k:k+1] @ templates[k:k+1]``; the contributions of
        all components sum to the full model.
    wave_axis : {-1, 0}, default=-1
        -1 returns (ny, nx, n_wave); 0 returns the FITS order (n_wave, ny, nx).

    Returns
    -------
    ndarray of shape (ny, nx, n_wave) or (n_wave, ny, nx)
    """
    C, shape = _rows_matrix(_coefficients_of(coefficients), "coefficients", spatial_shape)
    T = _numeric(templates, "templates")
    if T.ndim != 2 or T.shape[0] != C.shape[1]:
        raise ValueError(f"templates must have shape (n_components={C.shape[1]}, n_wave); "
                         f"got {T.shape}")
    if component is not None:
        k = C.shape[1]
        if isinstance(component, bool) or not isinstance(component, Integral) \
                or not -k <= component < k:
            raise ValueError(f"component must be None or an int in [0, {k}); got {component!r}")
        C = C[:, [component]]
        T = T[[component]]
    return matrix_to_cube(C @ T, shape, wave_axis=wave_axis)


def fit_cube(model, cube, *, ivar=None, mask=None, wavelength=None, wave_axis=-1, header=None):
    """Fit an estimator to the spectra of a cube.

    Reshapes with :func:`cube_to_matrix` and calls
    ``model.fit(X, ivar=ivar, spatial_shape=(ny, nx), wavelength=wavelength)``, so
    a ``Spatial`` penalty (``SpectralNMF(spatial=...)``) knows which spaxels
    are neighbours.

    Parameters
    ----------
    model : SpectralNMF
        The (unfitted) estimator; fitted in place.
    cube, ivar, mask, wave_axis
        As in :func:`cube_to_matrix`.  ``cube`` may also be a specutils
        ``Spectrum`` or astropy ``NDData`` of shape (ny, nx, n_wave) (any
        spectral axis); its uncertainty, mask, spectral axis and units are
        used (:func:`specnmf.interop.as_arrays`).
    wavelength : array-like of shape (n_wave,), optional
        Stored on the model as ``wavelength_``.  Default: from the spectral
        WCS of ``header``, if it has one.
    header : astropy.io.fits.Header, optional
        The cube's header (e.g. ``read_cube(path).header``).  Its spectral
        WCS is kept on the model as ``header_`` -- the templates' axis -- so
        ``model.save`` writes it; write the maps with
        ``write_maps(path, coefficient_maps(model, (ny, nx)), header)`` to keep the
        celestial WCS.

    Returns
    -------
    model
        The fitted model; it remembers ``spatial_shape_``, so
        ``coefficient_maps(model)`` gives its maps.
    """
    if not hasattr(model, "fit"):
        raise TypeError(f"model must be an estimator with a fit method; got {type(model).__name__}")
    units = None
    if interop.is_container(cube):  # a specutils Spectrum / NDData cube, spectral axis read from it
        cube, ivar, mask, wavelength, wave_axis, units = interop.cube_inputs(cube, ivar, mask,
                                                                             wavelength)
    X, w, shape = cube_to_matrix(cube, ivar=ivar, mask=mask, wave_axis=wave_axis)
    if wavelength is None and header is not None:
        wavelength = wavelength_from_header(header, X.shape[1])
    if wavelength is not None:
        wavelength = _numeric(wavelength, "wavelength")
        if wavelength.shape != (X.shape[1],):
            raise ValueError(f"wavelength must have shape ({X.shape[1]},), one value per "
                             f"wavelength pixel of cube; got {wavelength.shape}")
    model.fit(X, ivar=w, spatial_shape=shape, wavelength=wavelength)
    if units is not None:
        model.wavelength_unit_, model.flux_unit_ = units
    if header is not None:
        model.header_ = spectral_header(header)
    return model


# -- FITS --------------------------------------------------------------------
@dataclass
class IFUCube:
    """A cube read by :func:`read_cube`.

    Attributes
    ----------
    cube : ndarray of shape (ny, nx, n_wave)
        Flux (wavelength last, whatever the file's order), native byte order.
    ivar : ndarray of shape (ny, nx, n_wave) or None
        Inverse variance from the file's error extension (ESO ``STAT``
        variance, MaNGA ``IVAR``, ...), 0 where the error is unknown,
        non-positive or non-finite, and where the flux is non-finite.
        ``None`` if the file has no error extension (a warning is given).
    mask : ndarray of shape (ny, nx, n_wave) or None
        Bad-pixel flags from the quality extension (ESO ``DQ``, MaNGA
        ``MASK``): non-zero = bad.
    header : astropy.io.fits.Header
        Header of the flux HDU (with its WCS).
    wavelength : ndarray of shape (n_wave,) or None
        Wavelength in Angstrom: from a ``WAVE`` extension (MaNGA) or the
        spectral WCS.
    medium : {"air", "vacuum"} or None
        Of ``wavelength``, from the spectral axis type (``AWAV`` is air,
        ``WAVE``/``WAVE-LOG`` vacuum; MUSE cubes are in air, MaNGA in vacuum).
    format : {"eso", "manga", "image"}
        The layout read.
    meta : dict
        Descriptive cards of the primary header (telescope, instrument,
        object, date, ...), to carry into a fitted model.
    path : str or None
    """

    cube: np.ndarray
    ivar: np.ndarray | None
    mask: np.ndarray | None
    header: object
    wavelength: np.ndarray | None
    medium: str | None = None
    format: str | None = None
    meta: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def spatial_shape(self):
        """``(ny, nx)``."""
        return tuple(self.cube.shape[:2])

def _fits():
    try:
        from astropy.io import fits
    except ImportError as exc:  # pragma: no cover - astropy is in the test extras
        raise ImportError("reading and writing FITS cubes needs astropy "
                          "(pip install 'specnmf[fits]')") from exc
    return fits


def _wcs(header):
    from astropy.wcs import WCS

    return WCS(header)


def celestial_header(header):
    """FITS header holding only the celestial (spatial) WCS of ``header``.

    Use it for anything on the spaxel grid, such as coefficient maps.  Empty
    if ``header`` has no celestial axes.
    """
    w = _wcs(header)
    return w.celestial.to_header() if w.has_celestial else _fits().Header()


def spectral_header(header):
    """FITS header holding only the spectral WCS of ``header`` (as axis 1).

    Use it for anything on the wavelength grid, such as the templates
    (``specnmf.io`` writes it with a saved model).  Empty if ``header`` has no
    spectral axis.
    """
    w = _wcs(header)
    return w.spectral.to_header() if w.has_spectral else _fits().Header()


def wavelength_from_header(header, n_wave, unit="Angstrom"):
    """Wavelengths of the ``n_wave`` spectral pixels described by ``header``.

    Returns an ndarray of shape (n_wave,) in ``unit``, or ``None`` if the
    header has no spectral WCS.
    """
    import astropy.units as u

    w = _wcs(header)
    if not w.has_spectral:
        return None
    spec = w.spectral
    values = np.asarray(spec.pixel_to_world_values(np.arange(n_wave)), dtype=np.float64)
    # wcslib normalises spectral axes to SI units
    return (values * u.Unit(spec.world_axis_units[0])).to_value(u.Unit(unit), u.spectral())


def _hdu_names(hdul):
    return {h.name.upper(): h for h in hdul}


#: ESO DICD HDUCLAS3 of an error extension -> what it holds
_ERROR_CLASSES = {"MSE": "variance", "RMSE": "sigma", "INVMSE": "ivar", "INVRMSE": "isigma"}
#: error extensions looked for by name when the flux header has no ERRDATA
_ERROR_NAMES = {"STAT": "variance", "VAR": "variance", "VARIANCE": "variance", "IVAR": "ivar",
                "ERR": "sigma", "ERROR": "sigma", "SIGMA": "sigma"}
_QUALITY_NAMES = ("DQ", "MASK", "QUALITY")
_FLUX_NAMES = ("DATA", "FLUX", "SCI")
_META_CARDS = ("TELESCOP", "INSTRUME", "OBJECT", "DATE-OBS", "MJD-OBS", "EXPTIME", "RA", "DEC",
               "ORIGIN", "PROG_ID", "PLATEIFU", "MANGAID")


def _native_cube(data):
    """(n_wave, ny, nx) file data -> native-order, C-contiguous (ny, nx, n_wave)."""
    data = np.asarray(data)
    return np.ascontiguousarray(np.moveaxis(data, 0, -1)).astype(data.dtype.newbyteorder("="),
                                                                 copy=False)


def _linked_hdu(named, header, keyword, fallbacks, path, flux_hdu):
    """The HDU a pointer keyword (ERRDATA, QUALDATA) names, else the first fallback name."""
    target = header.get(keyword)
    if isinstance(target, str) and target.strip():
        h = named.get(target.strip().upper())
        if h is None:
            logger.warning("%s: %s = %r names no HDU of the file; looking for %s by name",
                           path, keyword, target, "/".join(fallbacks))
        elif h is not flux_hdu:
            return h
    return next((named[n] for n in fallbacks if n in named and named[n] is not flux_hdu), None)


def _medium(header):
    ctype = str(header.get("CTYPE3", "")).upper()
    return "air" if ctype.startswith("AWAV") else "vacuum" if ctype.startswith("WAVE") else None


def read_cube(path, *, hdu=None, bad_bits=None):
    """Read an IFU cube from a FITS file, with its variance and quality flags.

    Layouts:

    * **ESO / MUSE** (archive ``DATACUBE``): ``DATA`` (flux), ``STAT``
      (variance) and ``DQ`` (data quality, non-zero = bad) extensions.  The
      ESO DICD pointers in the flux header are honoured: ``ERRDATA`` names
      the error extension and ``QUALDATA`` the quality one, whose
      ``HDUCLAS3`` says what they hold (``MSE`` variance, ``RMSE`` standard
      deviation, ``INVMSE`` inverse variance, ``INVRMSE`` inverse standard
      deviation; ``MASKZERO`` quality means 0 = bad).
    * **MaNGA-style**: ``FLUX``, ``IVAR`` (inverse variance), ``MASK``
      (bitmask, non-zero = bad) and optionally ``WAVE`` (wavelength,
      Angstrom) extensions.
    * any file whose flux is a 3-D image (``hdu``): errors and flags are then
      looked up by the names above.

    Without ``ERRDATA`` the error extension is found by name: ``STAT``,
    ``VAR``, ``VARIANCE`` (variance), ``IVAR`` (inverse variance), ``ERR``,
    ``ERROR``, ``SIGMA`` (standard deviation), unless its ``HDUCLAS3`` says
    otherwise.  A cube without any error extension is read with
    ``ivar=None`` and a ``UserWarning``: the fit would be unweighted.

    Parameters
    ----------
    path : str or path-like
    hdu : int, str or None, default=None
        The flux HDU; default the 3-D ``DATA``/``FLUX``/``SCI`` extension,
        else the first 3-D image.
    bad_bits : int or None, default=None
        Which bits of the quality flags mean a bad pixel: ``None`` (any
        non-zero flag), or a bitmask such as MaNGA's ``DONOTUSE``
        (``1 << 10``).

    Returns
    -------
    IFUCube
        Flux, inverse variance and flags as (ny, nx, n_wave) native-order
        arrays; the file's (n_wave, ny, nx) order is turned around.

    Examples
    --------
    >>> from specnmf.datasets import muse_crop_path
    >>> c = read_cube(muse_crop_path())
    >>> c.cube.shape == c.ivar.shape, c.medium, c.format
    (True, 'air', 'eso')
    """
    import warnings

    fits = _fits()
    if bad_bits is not None and (isinstance(bad_bits, bool) or not isinstance(bad_bits, Integral)
                                 or bad_bits <= 0):
        raise ValueError(f"bad_bits must be None or a positive int bitmask; got {bad_bits!r}")
    with fits.open(path, memmap=False) as hdul:
        named = _hdu_names(hdul)
        if hdu is None:
            flux_hdu = next((named[n] for n in _FLUX_NAMES if n in named and named[n].is_image
                             and named[n].header.get("NAXIS") == 3), None)
            if flux_hdu is None:
                flux_hdu = next((h for h in hdul if h.is_image and h.data is not None
                                 and h.data.ndim == 3), None)
            if flux_hdu is None:
                raise ValueError(f"no 3-D image HDU in {path!s}")
        else:
            try:
                flux_hdu = hdul[hdu]
            except (KeyError, IndexError) as exc:
                raise ValueError(f"{path!s}: no HDU {hdu!r}") from exc
            if not flux_hdu.is_image or flux_hdu.data is None or flux_hdu.data.ndim != 3:
                raise ValueError(f"HDU {hdu!r} of {path!s} is not a 3-D image")
        header = flux_hdu.header.copy()
        shape = flux_hdu.data.shape
        cube = _native_cube(flux_hdu.data)

        def extension(h, what):
            if h is None or h.data is None:
                return None
            if h.data.shape != shape:
                raise ValueError(f"{path!s}: {what} extension {h.name} has shape "
                                 f"{h.data.shape} but the flux has {shape}")
            return _native_cube(h.data)

        err_hdu = _linked_hdu(named, header, "ERRDATA", tuple(_ERROR_NAMES), path, flux_hdu)
        ivar = None
        if err_hdu is not None:
            cls = str(err_hdu.header.get("HDUCLAS3", "")).strip().upper()
            kind = _ERROR_CLASSES.get(cls, _ERROR_NAMES.get(err_hdu.name.upper(), "variance"))
            ivar = _ivar_from_variance(extension(err_hdu, "error"), kind=kind)
        qual_hdu = _linked_hdu(named, header, "QUALDATA", _QUALITY_NAMES, path, flux_hdu)
        mask = extension(qual_hdu, "quality")
        if mask is not None:
            if mask.dtype.kind not in "biu":
                mask = np.where(np.isfinite(mask), mask, 1).astype(np.int64)
            if str(qual_hdu.header.get("HDUCLAS3", "")).strip().upper() == "MASKZERO":
                mask = (mask == 0).astype(np.uint8)
            elif bad_bits is not None:
                mask = ((mask.astype(np.int64) & int(bad_bits)) != 0).astype(np.uint8)
        wave_hdu = named.get("WAVE")
        wavelength = None
        if wave_hdu is not None and wave_hdu.data is not None:
            w = np.asarray(wave_hdu.data, dtype=np.float64).ravel()
            if w.shape == (cube.shape[-1],):
                wavelength = w
        fmt = ("eso" if str(header.get("HDUCLASS", "")).strip().upper() == "ESO"
               or flux_hdu.name.upper() == "DATA" else
               "manga" if flux_hdu.name.upper() == "FLUX" else "image")
        primary = hdul[0].header
        meta = {k: primary[k] for k in _META_CARDS
                if k in primary and isinstance(primary[k], (str, int, float))}
    if wavelength is None:
        wavelength = wavelength_from_header(header, cube.shape[-1])
    if ivar is None:
        warnings.warn(f"{path!s}: the cube has no variance/error extension (looked for ERRDATA, "
                      f"{', '.join(_ERROR_NAMES)}); a fit will be unweighted (ivar = 1)",
                      UserWarning, stacklevel=2)
    else:
        ivar[~np.isfinite(cube)] = 0
    return IFUCube(cube=cube, ivar=ivar, mask=mask, header=header, wavelength=wavelength,
                   medium=_medium(header), format=fmt, meta=meta, path=str(path))


def _image_header(header):
    # only WCS and descriptive cards are carried; structural ones come from the data
    fits = _fits()
    out = fits.Header()
    if header is None:
        return out
    structural = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT",
                  "BZERO", "BSCALE", "EXTNAME", "CHECKSUM", "DATASUM"}
    for card in header.cards:
        key = card.keyword
        if key in structural or key.startswith("NAXIS") or key == "":
            continue
        out.append(card)
    return out


def write_cube(path, cube, header=None, *, ivar=None, mask=None, overwrite=False):
    """Write a cube to FITS in the standard (n_wave, ny, nx) order.

    Parameters
    ----------
    path : str or path-like
    cube : array-like of shape (ny, nx, n_wave)
        Flux (primary HDU).
    header : astropy.io.fits.Header, optional
        Header of the flux, e.g. the WCS of the cube read with :func:`read_cube`
        (axes 1, 2 spatial x, y; axis 3 wavelength).
    ivar, mask : array-like of shape (ny, nx, n_wave), optional
        Written as ``IVAR`` and ``MASK`` image extensions.
    overwrite : bool, default=False
    """
    fits = _fits()
    cube = _numeric(cube, "cube")
    if cube.ndim != 3:
        raise ValueError(f"cube must be 3-D (ny, nx, n_wave); got shape {cube.shape}")
    hdus = [fits.PrimaryHDU(np.ascontiguousarray(np.moveaxis(cube, -1, 0)),
                            header=_image_header(header))]
    for name, arr in (("IVAR", ivar), ("MASK", mask)):
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.shape != cube.shape:
            raise ValueError(f"{name.lower()} must have the shape of cube, {cube.shape}; "
                             f"got {arr.shape}")
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        hdus.append(fits.ImageHDU(np.ascontiguousarray(np.moveaxis(arr, -1, 0)), name=name))
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)


def write_maps(path, maps, header=None, *, names=None, extra=None, overwrite=False):
    """Write coefficient maps to FITS with the celestial WCS of the cube.

    The maps are stored as one image of shape (n_components, ny, nx): axes 1
    and 2 carry the celestial WCS of ``header`` (the input cube's), axis 3 is
    the component index (``CTYPE3 = 'COMPONENT'``, 0-based).  Each ``extra``
    map follows as an image extension with the same celestial WCS.

    Parameters
    ----------
    path : str or path-like
    maps : array-like of shape (ny, nx, n_components)
        From :func:`coefficient_maps`.
    header : astropy.io.fits.Header, optional
        Header of the cube the maps come from; only its celestial WCS is kept.
    names : sequence of str, optional
        Component names, stored as ``COMPk`` cards.
    extra : dict of {str: array-like}, optional
        More maps on the same spaxels, each of shape (ny, nx) (e.g. each
        spaxel's chi^2) or (ny, nx, n) (e.g. the coefficients' uncertainties),
        written as image extensions named by the keys (upper case).
    overwrite : bool, default=False
    """
    fits = _fits()
    maps = _numeric(maps, "maps")
    if maps.ndim != 3:
        raise ValueError(f"maps must be 3-D (ny, nx, n_components); got shape {maps.shape}")
    k = maps.shape[-1]
    celestial = celestial_header(header) if header is not None else fits.Header()
    out = celestial.copy()
    if len(out):
        # a 2-D celestial WCS on a 3-D image: the extra axis is the component index
        out["WCSAXES"] = 3
        out["CTYPE3"] = "COMPONENT"
        out["CRPIX3"] = 1.0
        out["CRVAL3"] = 0.0
        out["CDELT3"] = 1.0
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != k:
            raise ValueError(f"names must have one entry per component ({k}); got {len(names)}")
        for i, name in enumerate(names):
            out[f"COMP{i}"] = name
    hdus = [fits.PrimaryHDU(np.ascontiguousarray(np.moveaxis(maps, -1, 0)), header=out)]
    for name, arr in (extra or {}).items():
        arr = _numeric(arr, f"extra[{name!r}]")
        if arr.shape[:2] != maps.shape[:2] or arr.ndim not in (2, 3):
            raise ValueError(f"extra[{name!r}] must have shape {maps.shape[:2]} or "
                             f"{maps.shape[:2]} + (n,); got {arr.shape}")
        if arr.ndim == 3:
            arr = np.moveaxis(arr, -1, 0)
        hdus.append(fits.ImageHDU(np.ascontiguousarray(arr), header=celestial.copy(),
                                  name=str(name).upper()))
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)


def read_maps(path):
    """Read maps written by :func:`write_maps`.

    Returns
    -------
    maps : ndarray of shape (ny, nx, n_components)
    header : astropy.io.fits.Header
        With the celestial WCS (``astropy.wcs.WCS(header).celestial``).
    """
    fits = _fits()
    with fits.open(path, memmap=False) as hdul:
        data = np.asarray(hdul[0].data)
        header = hdul[0].header.copy()
    if data.ndim != 3:
        raise ValueError(f"{path!s} does not hold a 3-D stack of maps (shape {data.shape})")
    return np.moveaxis(data, 0, -1).copy(), header
