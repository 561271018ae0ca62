"""Spectra files and saved models: FITS, npz/npy and HDF5, never pickle.

Spectra
-------
:func:`read_spectra` turns a file into plain arrays in specnmf's orientation
(one spectrum per row) and :func:`write_spectra` writes them back.  The
layouts understood are

* **FITS images**: extensions named ``FLUX`` (n_spectra, n_pixels) and,
  optionally, ``IVAR`` (same shape), ``MASK`` (same shape, non-zero = bad) and
  ``WAVELENGTH`` (n_pixels,);
* **FITS binary table**: one row per spectrum, array columns ``FLUX``,
  ``IVAR``, ``MASK``, ``WAVELENGTH`` (column names are case-insensitive);
* **npz**: keys ``flux`` (or ``X``), ``ivar``, ``mask``, ``wavelength``;
* **npy**: the flux array alone (unit weights);
* **HDF5** (``.h5``/``.hdf5``): datasets ``flux``, ``ivar``, ``mask``,
  ``wavelength`` (case-insensitive), at the root or in the group ``hdu``.

* **survey files**, each with a named loader, detected from the file or
  forced with ``read_spectra(path, format=...)``: SDSS/BOSS spec files
  (:func:`read_sdss`), DESI coadds (:func:`read_desi`, per camera or merged
  by :func:`coadd_cameras`), LAMOST low-resolution spectra
  (:func:`read_lamost`); see :mod:`specnmf._readers` for the conventions
  (bitmasks, vacuum wavelengths, camera overlaps);
* **IFU cubes** (ESO/MUSE DATA/STAT/DQ, MaNGA-style FLUX/IVAR/MASK), read by
  :func:`specnmf.ifu.read_cube` and returned one spectrum per spaxel;
* **span-packed HDF5** (:func:`pack_spectra`, ``specnmf pack``): only each
  spectrum's observed span, validated once; :func:`open_packed` reads it as
  dense row blocks, and ``read_spectra(path, memmap=True)`` returns that
  reader as ``flux`` (``ivar`` None: it is inside), which a fit streams
  reading only the observed bytes (see :mod:`specnmf._packed`).

``MASK`` wins over ``IVAR``: a masked pixel gets ``ivar = 0`` whatever its
inverse variance.  Without ``IVAR`` every pixel gets unit weight (a warning is
logged), except non-finite flux, which gets weight 0.

Models
------
:func:`save_model` writes a fitted estimator as arrays plus one JSON record
(format version, specnmf version, class, ``get_params()``, scalar fitted
attributes); :func:`load_model` rebuilds it through the constructor,
``type(model)(**params)``, and restores the fitted attributes, so
``transform`` of the loaded model equals that of the original exactly.
Nothing is pickled: loading a file never runs code from it.
:func:`model_summary` (a dict, for ``specnmf info``) and :func:`model_report`
(text, the estimator's ``summary()``) describe a model.

FITS model layout: primary header with ``SNMFFMT`` (format version),
``SNMFVER`` (specnmf version), ``SNMFCLS`` (class) and a few readable cards
(``NCOMP``, ``SOLVER``, ``NITER``, ``CHI2``), followed by the cards of the
input spectra's header if the model carries one (``meta_``/``header_``);
image extensions ``TEMPLATES``, ``WAVELENGTH`` (if set), ``CHI2``,
``OBJECTIVE``, ``COEFFICIENTS``, ``HIST_<TERM>`` for each term of
``history_`` and one per other array attribute; a binary table ``META``
holding the JSON record.  The npz layout stores the same arrays under their
attribute names (``history_/<term>`` for history terms) and the JSON record
under ``__specnmf__``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
import zipfile
from numbers import Integral, Real

import numpy as np

from . import _validation as V
from . import interop
from ._readers import (
    _STRUCTURAL,
    Spectra,
    _header_dict,
    _require_fits,
    _require_h5py,
    coadd_cameras,
    ivar_from_variance,
    read_desi,
    read_lamost,
    read_sdss,
)
from ._packed import PackedSpectra, is_packed_file, open_packed, pack_spectra
from ._version import __version__

logger = logging.getLogger("specnmf")

__all__ = [
    "Spectra",
    "read_spectra",
    "read_sdss",
    "read_desi",
    "read_lamost",
    "coadd_cameras",
    "ivar_from_variance",
    "write_spectra",
    "save_model",
    "load_model",
    "FORMAT_VERSION",
    "pack_spectra",
    "open_packed",
    "PackedSpectra",
]

#: version of the saved-model layout; files with a larger number are refused
FORMAT_VERSION = 1

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_NAMES = ("flux", "ivar", "mask", "wavelength")
_MODEL_KEYS = {"SNMFFMT", "SNMFVER", "SNMFCLS", "NCOMP", "SOLVER", "NITER", "CHI2"}


# ---------------------------------------------------------------------------
# spectra
# ---------------------------------------------------------------------------
class _MaskedIvar:
    """``ivar`` with ``mask != 0`` set to 0, read lazily block by block.

    Lets a streamed fit combine a memory-mapped IVAR and MASK without ever
    holding either in memory.
    """

    def __init__(self, ivar, mask):
        self._ivar = ivar
        self._mask = mask
        self.shape = tuple(ivar.shape)
        self.dtype = np.dtype(ivar.dtype).newbyteorder("=")
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        ivar = np.asarray(self._ivar[key])
        return np.where(np.asarray(self._mask[key]) != 0, 0, ivar).astype(self.dtype, copy=False)

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


def _kind(path) -> str:
    name = str(path).lower()
    if name.endswith(_FITS_SUFFIXES):
        return "fits"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(_HDF5_SUFFIXES):
        return "hdf5"
    raise ValueError(
        f"{path}: unknown file type; expected one of "
        f"{', '.join(_FITS_SUFFIXES[:3])} (FITS), .npz, .npy, .h5/.hdf5"
    )


def _native(a, lazy=False):
    """A native-byte-order float array (FITS data are big-endian)."""
    if lazy:
        return a
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"expected a numeric array; got dtype {a.dtype}")
    dt = np.float32 if a.dtype == np.float32 else np.float64
    return a.astype(dt)  # always a native-order copy, never a view on the file


def _common_wavelength(wave, n_pixels, path):
    if wave is None:
        return None
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim == 2:
        # one grid per spectrum (table layout): accept only a common grid
        if not np.all(wave == wave[:1]):
            raise ValueError(f"{path}: WAVELENGTH differs between spectra; specnmf needs one "
                             "common grid (resample the spectra first)")
        wave = wave[0]
    if wave.ndim != 1 or wave.shape[0] != n_pixels:
        raise ValueError(f"{path}: WAVELENGTH must have shape ({n_pixels},) to match FLUX; "
                         f"got {wave.shape}")
    return wave


def _assemble(path, flux, ivar, mask, wave, meta, lazy):
    """Apply the layout rules (shapes, MASK over IVAR, default weights)."""
    if flux is None:
        raise ValueError(f"{path}: no FLUX found (expected an extension, column or dataset "
                         "named FLUX/flux, or X in an npz file)")
    if len(flux.shape) == 1:
        flux = flux[None, :] if not lazy else flux
    if len(flux.shape) != 2:
        raise ValueError(f"{path}: FLUX must be 2-D (n_spectra, n_pixels); got shape "
                         f"{tuple(flux.shape)}")
    shape = tuple(flux.shape)
    for name, arr in (("IVAR", ivar), ("MASK", mask)):
        if arr is not None and tuple(arr.shape) != shape:
            raise ValueError(f"{path}: {name} has shape {tuple(arr.shape)} but FLUX has {shape}")
    wave = _common_wavelength(wave, shape[1], path)
    if lazy:
        if ivar is None:
            logger.warning("%s: no IVAR; using unit weights", path)
            # a read-only broadcast view: unit weights without n*d memory
            ivar = np.broadcast_to(np.ones((), dtype=np.float64), shape)
            if mask is not None:
                ivar = _MaskedIvar(ivar, mask)
        elif mask is not None:
            ivar = _MaskedIvar(ivar, mask)
        return Spectra(flux, ivar, wave, meta, str(path))
    flux = _native(flux)
    if ivar is None:
        bad = ~np.isfinite(flux)
        logger.warning("%s: no IVAR; using unit weights%s", path,
                       f" (weight 0 for {int(bad.sum())} non-finite fluxes)" if bad.any() else "")
        ivar = np.where(bad, 0.0, 1.0).astype(flux.dtype)
    else:
        ivar = _native(ivar)
    if mask is not None:
        ivar = np.where(np.asarray(mask) != 0, 0, ivar).astype(ivar.dtype, copy=False)
    return Spectra(flux, ivar, wave, meta, str(path))


def _read_fits(path, hdu, lazy):
    fits = _require_fits()
    try:
        hdul = fits.open(path, memmap=lazy, lazy_load_hdus=False)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable FITS file ({exc})") from exc
    try:
        primary = hdul[0].header
        if hdu is not None:
            try:
                chosen = hdul[hdu]
            except (KeyError, IndexError) as exc:
                raise ValueError(f"{path}: no HDU {hdu!r}") from exc
            if isinstance(chosen, fits.BinTableHDU):
                return _from_table(path, chosen, primary, lazy)
            if chosen.data is None:
                raise ValueError(f"{path}: HDU {hdu!r} has no data")
            flux = chosen.data
        else:
            names = {h.name.upper(): h for h in hdul}
            if "FLUX" not in names:
                for h in hdul:
                    if isinstance(h, fits.BinTableHDU) and "FLUX" in (c.upper() for c in h.columns.names):
                        return _from_table(path, h, primary, lazy)
                raise ValueError(f"{path}: no FLUX image extension and no binary table with a "
                                 "FLUX column (known layouts: FLUX/IVAR/MASK images, tables, "
                                 "SDSS, DESI, LAMOST, IFU cubes; see specnmf.io)")
            chosen = names["FLUX"]
            flux = chosen.data
            if flux is None:
                raise ValueError(f"{path}: the FLUX extension is empty")
        names = {h.name.upper(): h for h in hdul}
        get = lambda name: names[name].data if name in names and names[name] is not chosen else None  # noqa: E731
        ivar, mask, wave = get("IVAR"), get("MASK"), get("WAVELENGTH")
        if lazy:
            # astropy hands out plain ndarrays over its memory map; typing them as
            # np.memmap tells the fitting engine to stream them block by block
            flux, ivar, mask = (a.view(np.memmap) if isinstance(a, np.ndarray) else a
                                for a in (flux, ivar, mask))
        meta = _header_dict(primary, chosen.header if chosen is not hdul[0] else None)
        spectra = _assemble(path, flux, ivar, mask, wave, meta, lazy)
    finally:
        if not lazy:
            hdul.close()
    return spectra


def _from_table(path, table, primary, lazy):
    cols = {c.upper(): c for c in table.columns.names}

    def col(name):
        return table.data[cols[name]] if name in cols else None

    flux = col("FLUX")
    if flux is not None and flux.ndim == 1:
        raise ValueError(f"{path}: the FLUX column must be an array column (one spectrum per "
                         "row); got a scalar column")
    meta = _header_dict(primary, table.header)
    # table columns are strided views of the rows; lazy reading gains nothing
    # LAMOST DR8+ / SDSS-style tables name the bitmask ANDMASK or AND_MASK
    mask = next((col(n) for n in ("MASK", "ANDMASK", "AND_MASK") if n in cols), None)
    return _assemble(path, flux, col("IVAR"), mask, col("WAVELENGTH"), meta, False)


def _read_npz(path, lazy):
    try:
        data = np.load(path, allow_pickle=False, mmap_mode="r" if lazy else None)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable npz file ({exc})") from exc
    with data:
        keys = {k.lower(): k for k in data.files}
        if "flux" not in keys and "x" in keys:
            keys["flux"] = keys["x"]
        try:
            arrays = {n: (np.array(data[keys[n]]) if n in keys else None) for n in _NAMES}
        except ValueError as exc:
            raise ValueError(f"{path}: cannot read arrays ({exc})") from exc
    # npz members are compressed/zipped: np.load cannot memory-map them
    return _assemble(path, arrays["flux"], arrays["ivar"], arrays["mask"],
                     arrays["wavelength"], {}, False)


def _read_npy(path, lazy):
    try:
        flux = np.load(path, allow_pickle=False, mmap_mode="r" if lazy else None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable npy file ({exc})") from exc
    return _assemble(path, flux, None, None, None, {}, lazy)


def _read_packed(path, lazy):
    packed = open_packed(path)
    wave = _common_wavelength(packed.metadata.get("wavelength"), packed.shape[1], path)
    if lazy:
        return Spectra(packed, None, wave, {}, str(path))
    X, ivar = packed[:], packed.ivar[:]
    packed.close()
    return Spectra(X, ivar, wave, {}, str(path))


def _read_hdf5(path, hdu, lazy):
    if hdu is None and is_packed_file(path):
        return _read_packed(path, lazy)
    h5py = _require_h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc
    try:
        group = f
        if hdu is not None:
            if hdu not in f:
                raise ValueError(f"{path}: no group {hdu!r}")
            group = f[hdu]
        keys = {k.lower(): k for k in group.keys() if isinstance(group[k], h5py.Dataset)}
        if "flux" not in keys and "x" in keys:
            keys["flux"] = keys["x"]

        def get(name):
            if name not in keys:
                return None
            dset = group[keys[name]]
            # lazy: the h5py.Dataset itself, read block by block by a streamed fit
            return dset if lazy and name != "wavelength" else dset[()]

        meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
                if isinstance(v, (bool, Integral, Real, str, np.generic))}
        spectra = _assemble(path, get("flux"), get("ivar"), get("mask"), get("wavelength"),
                            meta, lazy)
    finally:
        if not lazy:
            f.close()
    return spectra


_FORMATS = ("image", "table", "sdss", "desi", "lamost", "cube", "npz", "npy", "hdf5")


def _fits_format(path, hdu=None):
    """The layout of a FITS file, from its HDU names and headers (no data read)."""
    fits = _require_fits()
    try:
        with fits.open(path, memmap=True, lazy_load_hdus=False) as hdul:
            if hdu is not None:
                try:
                    chosen = hdul[hdu]
                except (KeyError, IndexError) as exc:
                    raise ValueError(f"{path}: no HDU {hdu!r}") from exc
                if chosen.is_image and chosen.header.get("NAXIS") == 3:
                    return "cube"
                return "table" if isinstance(chosen, fits.BinTableHDU) else "image"
            names = {h.name.upper(): h for h in hdul}
            images = [h for h in hdul if h.is_image]
            if any(h.header.get("NAXIS") == 3 and h.name.upper() in ("DATA", "FLUX", "PRIMARY", "SCI")
                   for h in images):
                return "cube"
            if "FLUX" in names and names["FLUX"].is_image:
                return "image"
            coadd = names.get("COADD")
            if isinstance(coadd, fits.BinTableHDU) and \
                    {"flux", "loglam"} <= {c.lower() for c in coadd.columns.names}:
                return "sdss"
            if any(n.endswith("_FLUX") and n[:-5] + "_WAVELENGTH" in names for n in names):
                return "desi"
            primary = hdul[0].header
            if primary.get("NAXIS") == 2 and "COEFF0" in primary and "COEFF1" in primary:
                return "lamost"
            return "table"
    except OSError as exc:
        raise ValueError(f"{path}: not a readable FITS file ({exc})") from exc


def _read_cube_as_spectra(path, hdu):
    from .ifu import cube_to_matrix, read_cube

    c = read_cube(path, hdu=hdu)
    X, ivar, shape = cube_to_matrix(c.cube, ivar=c.ivar, mask=c.mask)
    meta = _header_dict(c.header)
    return Spectra(X, ivar, c.wavelength, meta, str(path), format="cube",
                   wavelength_unit=None if c.wavelength is None else "Angstrom",
                   medium=c.medium, flux_unit=meta.get("BUNIT"), spatial_shape=shape)


def read_spectra(path, *, hdu=None, memmap=False, format=None) -> Spectra:
    """Read spectra (flux, inverse variance, mask, wavelength) from a file.

    Parameters
    ----------
    path : str or path-like
        A FITS (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``), ``.npz``,
        ``.npy`` or HDF5 (``.h5``, ``.hdf5``) file; see :mod:`specnmf.io` for
        the layouts.
    hdu : int or str, optional
        FITS: the HDU holding the flux (an image, with IVAR/MASK/WAVELENGTH
        looked up by name) or the binary table to read.  HDF5: the group
        holding the datasets.  ``None``: the ``FLUX`` extension, else the first
        binary table with a ``FLUX`` column (FITS); the root group (HDF5).
    memmap : bool, default=False
        Return lazily-readable arrays instead of loading everything: FITS
        memory maps (uncompressed image layout), ``np.load(mmap_mode="r")``
        for ``.npy`` and ``h5py.Dataset`` objects for HDF5 (the file stays
        open while they are referenced).  ``ivar`` is then read lazily too,
        with the MASK applied block by block.  Use this for streamed fits of
        data larger than memory; npz members and FITS tables are always read
        into memory.
    format : str, optional
        Force a layout instead of detecting it from the file: ``"image"``
        (FLUX/IVAR/MASK/WAVELENGTH extensions), ``"table"``, ``"sdss"``
        (:func:`read_sdss`), ``"desi"`` (:func:`read_desi`, cameras merged),
        ``"lamost"`` (:func:`read_lamost`) or ``"cube"`` (an IFU cube read
        by :func:`specnmf.ifu.read_cube`, one spectrum per spaxel, with
        ``spatial_shape`` set); ``"npz"``, ``"npy"``, ``"hdf5"`` must match
        the file's extension.  Detection: a 3-D DATA/FLUX image is a cube, a
        FLUX image the image layout, a COADD table with ``loglam`` SDSS,
        ``<camera>_FLUX`` extensions DESI, a 2-D primary image with
        ``COEFF0``/``COEFF1`` LAMOST, anything else a table.

    Returns
    -------
    Spectra
        ``flux`` and ``ivar`` of shape (n_spectra, n_pixels), ``wavelength``
        of shape (n_pixels,) or None, ``meta`` (header cards) and ``path``.
        A 1-D flux is read as one spectrum, shape (1, n_pixels).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unknown extension, unreadable file, no FLUX, or arrays whose shapes
        disagree (IVAR/MASK vs FLUX, WAVELENGTH vs the number of pixels).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from specnmf.io import read_spectra, write_spectra
    >>> path = os.path.join(tempfile.mkdtemp(), "spectra.npz")
    >>> write_spectra(path, np.ones((3, 4)), ivar=np.full((3, 4), 2.0),
    ...               mask=np.eye(3, 4, dtype=np.uint8))
    >>> s = read_spectra(path)
    >>> s.flux.shape, float(s.ivar[0, 0]), float(s.ivar[0, 1])
    ((3, 4), 0.0, 2.0)
    """
    path = os.fspath(path)
    kind = _kind(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if format is not None and format not in _FORMATS:
        raise ValueError(f"format must be None or one of {_FORMATS}; got {format!r}")
    if kind != "fits":
        if format is not None and format != kind:
            raise ValueError(f"{path}: format={format!r} does not match the {kind} file type")
        reader = {"npz": _read_npz, "npy": _read_npy}.get(kind)
        spectra = reader(path, memmap) if reader else _read_hdf5(path, hdu, memmap)
        spectra.format = kind
        return spectra
    if format in ("npz", "npy", "hdf5"):
        raise ValueError(f"{path}: format={format!r} does not match the FITS file type")
    fmt = format or _fits_format(path, hdu)
    if fmt in ("sdss", "desi", "lamost"):
        from . import _readers

        kwargs = {"hdu": hdu} if fmt == "sdss" and hdu is not None else {}
        return getattr(_readers, f"read_{fmt}")(path, **kwargs)
    if fmt == "cube":
        return _read_cube_as_spectra(path, hdu)
    spectra = _read_fits(path, hdu, memmap)
    spectra.format = fmt
    return spectra


def _check_output(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")


def write_spectra(path, flux, *, ivar=None, wavelength=None, mask=None, meta=None,
                  layout="image", overwrite=False):
    """Write spectra in a layout :func:`read_spectra` reads back.

    Parameters
    ----------
    path : str or path-like
        ``.fits`` (and variants), ``.npz``, ``.npy`` (flux only) or ``.h5``/``.hdf5``.
    flux : array-like of shape (n_spectra, n_pixels)
    ivar, mask : array-like of shape (n_spectra, n_pixels), optional
        Inverse variance; mask (non-zero = bad pixel), stored as uint8.
    wavelength : array-like of shape (n_pixels,), optional
    meta : dict, optional
        Header cards (FITS primary header; HDF5 root attributes).
    layout : {"image", "table"}, default="image"
        FITS only: image extensions FLUX/IVAR/MASK/WAVELENGTH, or one binary
        table with one row per spectrum.
    overwrite : bool, default=False
        Replace an existing file; otherwise an existing ``path`` raises
        ``FileExistsError``.
    """
    path = os.fspath(path)
    kind = _kind(path)
    _check_output(path, overwrite)
    flux = np.asarray(flux)
    if flux.ndim != 2:
        raise ValueError(f"flux must be 2-D (n_spectra, n_pixels); got shape {flux.shape}")
    arrays = {"flux": flux}
    for name, arr in (("ivar", ivar), ("mask", mask)):
        if arr is not None:
            arr = np.asarray(arr)
            if arr.shape != flux.shape:
                raise ValueError(f"{name} must have the shape of flux {flux.shape}; got {arr.shape}")
            arrays[name] = arr.astype(np.uint8) if name == "mask" else arr
    if wavelength is not None:
        wavelength = np.asarray(wavelength, dtype=np.float64)
        if wavelength.shape != (flux.shape[1],):
            raise ValueError(f"wavelength must have shape ({flux.shape[1]},); got {wavelength.shape}")
        arrays["wavelength"] = wavelength
    if layout not in ("image", "table"):
        raise ValueError(f"layout must be 'image' or 'table'; got {layout!r}")
    meta = dict(meta or {})
    if kind == "npy":
        if len(arrays) > 1:
            raise ValueError(".npy holds the flux only; use .npz, .fits or .h5 to keep "
                             "ivar, mask or wavelength")
        np.save(path, flux, allow_pickle=False)
    elif kind == "npz":
        np.savez(path, **arrays)
        if not path.endswith(".npz"):  # pragma: no cover - _kind guarantees the suffix
            os.replace(path + ".npz", path)
    elif kind == "hdf5":
        h5py = _require_h5py()
        with h5py.File(path, "w") as f:
            for name, arr in arrays.items():
                f.create_dataset(name, data=arr)
            for key, value in meta.items():
                f.attrs[key] = value
    else:
        fits = _require_fits()
        primary = fits.PrimaryHDU()
        for key, value in meta.items():
            primary.header[key] = value
        if layout == "image":
            hdus = [fits.ImageHDU(arr, name=name.upper()) for name, arr in arrays.items()]
        else:
            n, d = flux.shape
            cols = []
            for name, arr in arrays.items():
                rows = np.broadcast_to(arr, (n, d)) if name == "wavelength" else arr
                fmt = {"u": "B", "i": "K", "f": "E" if rows.dtype == np.float32 else "D"}[rows.dtype.kind]
                cols.append(fits.Column(name=name.upper(), format=f"{d}{fmt}", array=rows))
            hdus = [fits.BinTableHDU.from_columns(cols, name="SPECTRA")]
        fits.HDUList([primary, *hdus]).writeto(path, overwrite=overwrite)


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
# readable names of the arrays every fitted SpectralNMF has
_EXTNAMES = {
    "templates_": "TEMPLATES",
    "wavelength_": "WAVELENGTH",
    "chi2_": "CHI2",
    "objective_": "OBJECTIVE",
    "coefficients_": "COEFFICIENTS",
}
_META_ATTRS = ("meta_", "header_")


class _Unserialisable(Exception):
    pass


def _to_json(value):
    """JSON-able form of a parameter/attribute value; tuples and arrays tagged."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return _to_json(value.item())
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        value = float(value)
        if not np.isfinite(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (type, np.dtype)):
        try:
            return np.dtype(value).name
        except TypeError:
            pass
    raise _Unserialisable(repr(value))


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_from_json(v) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _collect(model):
    """Split a fitted model into (record, arrays): JSON-able record, {key: ndarray}."""
    if not hasattr(model, "get_params"):
        raise TypeError(f"model must be a specnmf estimator with get_params(); got {type(model).__name__}")
    if not hasattr(model, "templates_"):
        raise ValueError(f"this {type(model).__name__} is not fitted (no templates_); "
                         "fit it before saving")
    cls = type(model)
    params = {}
    for name, value in model.get_params().items():
        try:
            params[name] = _to_json(value)
        except _Unserialisable:
            logger.warning("parameter %s=%r cannot be saved as JSON; the loaded model uses "
                           "the default", name, value)
    attrs, arrays, dicts, meta = {}, {}, {}, {}
    for name, value in vars(model).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if name in _META_ATTRS:
            if value is not None:
                meta[name] = _header_to_dict(value)
            continue
        if isinstance(value, np.ndarray) or (hasattr(value, "__array_namespace__")
                                             and not np.isscalar(value)):
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                logger.warning("attribute %s of dtype %s is not saved", name, arr.dtype)
                continue
            arrays[name] = arr
        elif isinstance(value, dict) and value and all(
                isinstance(k, str) and isinstance(v, (np.ndarray, list, tuple))
                for k, v in value.items()):
            dicts[name] = {k: np.asarray(v) for k, v in value.items()}
        else:
            try:
                attrs[name] = _to_json(value)
            except _Unserialisable:
                logger.warning("attribute %s=%r is not saved (not JSON-serialisable)",
                               name, value)
    record = {
        "format": "specnmf-model",
        "format_version": FORMAT_VERSION,
        "specnmf_version": __version__,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": params,
        "attrs": attrs,
        "arrays": {name: _spec(arr) for name, arr in arrays.items()},
        "dicts": {name: {k: _spec(v) for k, v in d.items()} for name, d in dicts.items()},
        "meta": meta,
    }
    flat = dict(arrays)
    for name, d in dicts.items():
        for key, arr in d.items():
            flat[f"{name}/{key}"] = arr
    return record, flat


def _spec(arr):
    """(dtype, shape) of a saved array: FITS cannot store bool or empty images."""
    return [arr.dtype.str, list(arr.shape)]


def _restore(arrays, key, spec, path):
    if isinstance(spec, str):  # pre-release files recorded the dtype only
        spec = [spec, None]
    dtype, shape = np.dtype(spec[0]), None if spec[1] is None else tuple(spec[1])
    if key not in arrays or arrays[key] is None:
        if shape is not None and int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype=dtype)
        raise ValueError(f"{path}: model file is incomplete (array {key} missing)")
    arr = np.asarray(arrays[key]).astype(dtype)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{path}: array {key} has shape {arr.shape}, expected {shape}")
    return arr


def _header_to_dict(value):
    if hasattr(value, "cards"):
        return _header_dict(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            try:
                out[str(k)] = _to_json(v)
            except _Unserialisable:
                continue
        return out
    return {}


def _extname(key):
    if key in _EXTNAMES:
        return _EXTNAMES[key]
    if key.startswith("history_/"):
        return "HIST_" + key.split("/", 1)[1].upper()
    return key.replace("/", "_").rstrip("_").upper()


def save_model(model, path, *, overwrite=False):
    """Save a fitted estimator to FITS or npz, without pickle.

    Parameters
    ----------
    model : SpectralNMF
        A fitted estimator (has ``templates_``).
    path : str or path-like
        ``.fits`` (``.fit``, ``.fts``, optionally ``.gz``) or ``.npz``.
    overwrite : bool, default=False
        Replace an existing file; otherwise an existing ``path`` raises
        ``FileExistsError``.

    Notes
    -----
    Every ``get_params()`` value and every fitted attribute (arrays,
    ``history_`` terms, scalars) is stored; parameters that are not
    JSON-serialisable (e.g. a ``numpy.random.Generator`` as
    ``random_state``) are skipped with a logged warning and take their
    default on loading.  The header of the input spectra is carried if the
    model has a ``meta_`` or ``header_`` attribute.  See :mod:`specnmf.io`
    for the layouts.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from specnmf import SpectralNMF
    >>> from specnmf.io import save_model, load_model
    >>> X = np.random.default_rng(0).uniform(size=(20, 10))
    >>> model = SpectralNMF(2, random_state=0, max_iter=50, tol=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> save_model(model, path)
    >>> bool(np.array_equal(load_model(path).transform(X), model.transform(X)))
    True
    """
    path = os.fspath(path)
    kind = _kind(path)
    if kind not in ("fits", "npz"):
        raise ValueError(f"{path}: models are saved as FITS (.fits) or .npz; got {kind}")
    _check_output(path, overwrite)
    record, arrays = _collect(model)
    if kind == "npz":
        payload = {key: arr for key, arr in arrays.items()}
        payload["__specnmf__"] = np.array(json.dumps(record))
        tmp = path + ".partial.npz"
        np.savez(tmp, **payload)
        os.replace(tmp, path)
        return
    fits = _require_fits()
    primary = fits.PrimaryHDU()
    header = primary.header
    header["SNMFFMT"] = (FORMAT_VERSION, "specnmf model format version")
    header["SNMFVER"] = (record["specnmf_version"], "specnmf version that wrote this file")
    header["SNMFCLS"] = (record["class"], "estimator class")
    params, attrs = record["params"], record["attrs"]
    if isinstance(params.get("n_components"), int):
        header["NCOMP"] = (params["n_components"], "number of templates")
    if isinstance(params.get("solver"), str):
        header["SOLVER"] = (params["solver"], "solver")
    if isinstance(attrs.get("n_iter_"), int):
        header["NITER"] = (attrs["n_iter_"], "iterations run")
    if "chi2_" in arrays and arrays["chi2_"].size:
        header["CHI2"] = (float(arrays["chi2_"][-1]), "final chi^2")
    for source in record["meta"].values():
        for key, value in source.items():
            key = str(key).upper()
            if key in _MODEL_KEYS or key in _STRUCTURAL or not isinstance(value, (bool, int, float, str)):
                continue
            try:
                with warnings.catch_warnings():
                    # long keywords become HIERARCH cards; astropy warns about it
                    warnings.simplefilter("ignore")
                    header[key] = value
            except (ValueError, KeyError):
                logger.debug("header card %s=%r not carried", key, value)
    hdus = [primary]
    names = {}
    for key, arr in arrays.items():
        ext = _extname(key)
        names[key] = ext
        data = arr.astype(np.uint8) if arr.dtype == bool else arr
        hdus.append(fits.ImageHDU(np.ascontiguousarray(data), name=ext))
    record["extnames"] = names
    text = json.dumps(record)
    meta_col = fits.Column(name="JSON", format=f"{max(1, len(text.encode()))}A",
                           array=np.array([text.encode()]))
    hdus.append(fits.BinTableHDU.from_columns([meta_col], name="META"))
    tmp = path + ".partial.fits"
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)


def _resolve_class(name, path):
    module, _, qualname = name.rpartition(".")
    # only specnmf's own classes: a model file must never choose what code runs
    if not (module == "specnmf" or module.startswith("specnmf.")) or not qualname:
        raise ValueError(f"{path}: model class {name!r} is not a specnmf class")
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{path}: model class {name!r} is not available in this specnmf "
                         f"version ({exc})") from exc
    if not isinstance(cls, type) or not hasattr(cls, "get_params"):
        raise ValueError(f"{path}: {name!r} is not an estimator class")
    return cls


def _check_record(record, path):
    if not isinstance(record, dict) or record.get("format") != "specnmf-model":
        raise ValueError(f"{path}: not a specnmf model file (no specnmf model record)")
    version = record.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{path}: model record has no format version")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: written in model format {version} by specnmf "
                         f"{record.get('specnmf_version')}, newer than this specnmf "
                         f"{__version__} reads (format {FORMAT_VERSION}); upgrade specnmf")


def _rebuild(record, arrays, path):
    cls = _resolve_class(record.get("class", ""), path)
    params = {k: _from_json(v) for k, v in record.get("params", {}).items()}
    accepted = set(cls._get_param_names()) if hasattr(cls, "_get_param_names") else set(params)
    dropped = sorted(set(params) - accepted)
    if dropped:
        logger.warning("%s: parameters %s are unknown to this specnmf version and ignored",
                       path, dropped)
    try:
        model = cls(**{k: v for k, v in params.items() if k in accepted})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot rebuild {cls.__name__} from the saved parameters "
                         f"({exc})") from exc
    if "templates_" not in record.get("arrays", {}):
        raise ValueError(f"{path}: not a specnmf model file (no TEMPLATES)")
    for name, spec in record.get("arrays", {}).items():
        _set(model, name, _restore(arrays, name, spec, path))
    for name, entries in record.get("dicts", {}).items():
        _set(model, name, {key: _restore(arrays, f"{name}/{key}", spec, path)
                           for key, spec in entries.items()})
    for name, value in record.get("attrs", {}).items():
        _set(model, name, _from_json(value))
    for name, value in record.get("meta", {}).items():
        _set(model, name, _from_json(value))
    templates = model.templates_
    if templates.ndim != 2:
        raise ValueError(f"{path}: TEMPLATES must be 2-D; got shape {templates.shape}")
    if getattr(model, "n_features_in_", None) is None:
        _set(model, "n_features_in_", templates.shape[1])
    return model


def _set(model, name, value):
    # read-only properties (components_) are derived, not stored
    if isinstance(getattr(type(model), name, None), property):
        return
    setattr(model, name, value)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__specnmf__" not in data.files:
                raise ValueError(f"{path}: not a specnmf model file (no __specnmf__ record)")
            record = json.loads(str(data["__specnmf__"][()]))
            _check_record(record, path)
            arrays = {key: np.array(data[key]) for key in data.files if key != "__specnmf__"}
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: corrupted or not a specnmf model file ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: corrupted or not a specnmf model file ({exc})") from exc
    return _rebuild(record, arrays, path)


def _load_fits(path):
    fits = _require_fits()
    try:
        with warnings.catch_warnings():
            # astropy only warns about a truncated file; make that an error
            warnings.simplefilter("error")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                names = {h.name.upper(): h for h in hdul}
                if "TEMPLATES" not in names:
                    raise ValueError(f"{path}: not a specnmf model file (no TEMPLATES HDU)")
                if "META" not in names or not isinstance(names["META"], fits.BinTableHDU):
                    raise ValueError(f"{path}: not a specnmf model file (no META table)")
                raw = names["META"].data["JSON"][0]
                record = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
                _check_record(record, path)
                extnames = record.get("extnames", {})
                arrays = {}
                for key, ext in extnames.items():
                    if ext not in names:
                        raise ValueError(f"{path}: model file is incomplete (HDU {ext} missing)")
                    data = names[ext].data
                    # an empty array is stored as an image without data
                    arrays[key] = None if data is None else np.array(data)
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: corrupted or not a specnmf model file ({exc})") from exc
    except (OSError, EOFError, KeyError, IndexError, TypeError, Warning) as exc:
        raise ValueError(f"{path}: corrupted or not a specnmf model file ({exc})") from exc
    return _rebuild(record, arrays, path)


def load_model(path):
    """Load a model written by :func:`save_model` (or ``SpectralNMF.save``).

    The estimator is rebuilt through its constructor from the saved
    parameters, then its fitted attributes are restored, so ``transform``
    gives exactly the results of the saved model.

    Parameters
    ----------
    path : str or path-like
        ``.fits`` (and variants) or ``.npz`` file.

    Returns
    -------
    SpectralNMF
        The fitted estimator (whatever specnmf class was saved).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A corrupted or truncated file, a file that is not a specnmf model
        (e.g. a FITS without TEMPLATES, an npz from elsewhere), or a model
        written in a newer format; the message names the file.
    """
    path = os.fspath(path)
    kind = _kind(path)
    if kind not in ("fits", "npz"):
        raise ValueError(f"{path}: models are stored as FITS or .npz; got a {kind} file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    return _load_npz(path) if kind == "npz" else _load_fits(path)


def model_from_templates(cls, templates, wavelength=None, **params):
    """A fitted ``cls`` (``SpectralNMF``) holding ``templates`` made elsewhere.

    What ``SpectralNMF.from_templates`` returns: ``transform``,
    ``inverse_transform``, ``save`` and the plots work; there is no training
    history.  ``params`` are constructor parameters.
    """
    templates, _, wavelength, units = interop.fit_inputs(templates, None, wavelength)
    T = V.check_factor(templates, "templates", dtype=V.check_dtype(params.get("dtype", "float64")))
    model = cls(T.shape[0], **params)
    model._validate_params()
    wavelength = V.check_wavelength(wavelength, T.shape[1])
    model.templates_ = T
    model.coefficients_ = np.zeros((0, T.shape[0]), dtype=T.dtype)
    model.chi2_, model.objective_ = np.zeros(0), np.zeros(0)
    model.history_ = {"chi2": model.chi2_}
    model.n_iter_, model.converged_, model.interrupted_ = 0, False, False
    model.shift_, model.ivar_scale_, model.n_features_in_ = 0.0, 1.0, T.shape[1]
    model.wavelength_, (model.wavelength_unit_, model.flux_unit_) = wavelength, units
    model.spatial_shape_ = None
    return model


def model_summary(model) -> dict:
    """A small dict describing a fitted model (used by ``specnmf info``)."""
    out: dict[str, object] = {"class": type(model).__name__}
    out["params"] = model.get_params()
    T = np.asarray(model.templates_)
    out["n_components"], out["n_pixels"] = T.shape
    for name in ("n_iter_", "converged_", "interrupted_", "shift_", "n_features_in_"):
        if hasattr(model, name):
            out[name.rstrip("_")] = getattr(model, name)
    wave = getattr(model, "wavelength_", None)
    if wave is not None:
        out["wavelength"] = (float(np.min(wave)), float(np.max(wave)))
    chi = getattr(model, "chi2_", None)
    if chi is not None and np.size(chi):
        out["chi2_start"], out["chi2_end"] = float(chi[0]), float(chi[-1])
    return out


def model_report(model) -> str:
    """A readable account of an estimator's settings and, if fitted, its fit (its ``summary()``)."""
    lines = [repr(model)]
    if hasattr(model, "templates_"):
        k, d = model.templates_.shape
        lines.append(f"  templates: {k} x {d} pixels"
                     + ("" if getattr(model, "wavelength_", None) is None else
                        f", wavelength {model.wavelength_[0]:.6g}..{model.wavelength_[-1]:.6g}"))
        if getattr(model, "chi2_", None) is not None and len(model.chi2_):
            n = model.coefficients_.shape[0]
            lines.append(f"  trained on {n} spectra; {model.n_iter_} iterations, "
                         f"{'converged' if model.converged_ else 'not converged'}"
                         + (", interrupted" if getattr(model, "interrupted_", False) else ""))
            lines.append(f"  chi2: {model.chi2_[0]:.6g} -> {model.chi2_[-1]:.6g}")
            stat = getattr(model, "stationarity_", None)
            if stat is not None and np.isfinite(stat):
                lines.append(f"  stationarity (KKT residual): {stat:.3g}")
            if getattr(model, "n_reseeds_", 0):
                lines.append(f"  dead components re-seeded: {model.n_reseeds_} time(s)")
            dead = getattr(model, "dead_components_", ())
            if len(dead):
                lines.append(f"  WARNING: component(s) {list(map(int, dead))} carry no signal "
                             "(zero template or coefficients)")
            for key, values in getattr(model, "history_", {}).items():
                if key != "chi2":
                    lines.append(f"  {key} penalty: {values[-1]:.6g}")
    else:
        lines.append("  (not fitted)")
    return "\n".join(lines)
