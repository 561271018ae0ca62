r"""Spectra held by astropy, specutils and hyperspy objects, as specnmf's arrays.

specnmf's numerical code works on plain arrays: flux and ``ivar`` of shape
(n_spectra, n_pixels), ``ivar == 0`` for missing data, and a wavelength grid
of shape (n_pixels,).  This module is the one place that reads the containers
astronomers and microscopists hold spectra in, and writes results back:

* :class:`specutils.Spectrum` (``Spectrum1D`` in specutils < 2) and
  :class:`astropy.nddata.NDData` holding one or many spectra (any leading
  shape; the spectral axis is moved last), with their ``uncertainty``
  (:class:`~astropy.nddata.InverseVariance`,
  :class:`~astropy.nddata.StdDevUncertainty`,
  :class:`~astropy.nddata.VarianceUncertainty`, converted to inverse
  variance in the flux unit), their ``mask`` (``True`` = bad, weight 0) and
  their spectral axis with its unit; a list (or ``SpectrumList``) of them on
  one grid;
* :class:`astropy.units.Quantity` flux (and ``wavelength``);
* hyperspy ``Signal1D`` objects (spectrum images), whose noise variance
  ``metadata.Signal.Noise_properties.variance`` becomes the weights.

:meth:`specnmf.SpectralNMF.fit`, ``transform``, ``score`` and
:func:`specnmf.ifu.fit_cube` accept these objects directly; they call
:func:`as_arrays`.  A model fitted on a container remembers the units of its
wavelength grid (``wavelength_unit_``) and flux (``flux_unit_``);
``transform`` of a container whose spectral axis is another grid -- including
the same numbers in another unit, Angstrom against nm -- is an error, while
the same grid written in another unit is converted exactly.

Rules of the conversion (the same for every container): an uncertainty of 0,
inf or NaN (sigma or variance), a NaN inverse variance, a masked pixel and a
non-finite flux all give ``ivar = 0`` (missing); a negative uncertainty is an
error.  Nothing here imports astropy, specutils or hyperspy unless it is given
one of their objects.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "SpectraArrays",
    "as_arrays",
    "is_container",
    "templates_spectrum",
    "to_spectrum",
    "rest_frame",
    "decompose_signal",
]

#: top-level packages whose objects :func:`as_arrays` converts
_CONTAINER_PACKAGES = ("astropy", "specutils", "ndcube", "hyperspy", "exspy")


class SpectraArrays(NamedTuple):
    """What :func:`as_arrays` returns.

    Attributes
    ----------
    flux : ndarray of shape (n_spectra, n_pixels)
        Flux values (in ``flux_unit``); spectrum ``i`` is row ``i`` of the
        container's leading axes in C order.
    ivar : ndarray of shape (n_spectra, n_pixels) or None
        Inverse variance in ``flux_unit**-2``, 0 where missing; ``None`` when
        the container has no uncertainty, no mask and only finite flux (unit
        weights).
    wavelength : ndarray of shape (n_pixels,) or None
        Spectral axis (wavelength, or frequency/energy if the container uses those).
    wavelength_unit : str or None
        Unit of ``wavelength`` as astropy writes it (e.g. ``"Angstrom"``).
    flux_unit : str or None
        Unit of ``flux`` (``None`` if the container has none).
    shape : tuple of int
        Leading (navigation) shape of the container: ``(ny, nx)`` for a cube,
        ``(n,)`` for n spectra, ``()`` for one spectrum.  ``flux.reshape(*shape,
        -1)`` restores it.
    """

    flux: np.ndarray
    ivar: np.ndarray | None
    wavelength: np.ndarray | None
    wavelength_unit: str | None
    flux_unit: str | None
    shape: tuple


# -- detection (no imports) ----------------------------------------------------------------
def is_container(obj) -> bool:
    """Whether ``obj`` is an astropy/specutils/hyperspy object, or a list of them.

    Checked on the class's module names, without importing those packages.
    """
    if obj is None or type(obj) is np.ndarray:
        return False
    if type(obj) in (list, tuple):
        return len(obj) > 0 and is_container(obj[0])
    return any(cls.__module__.partition(".")[0] in _CONTAINER_PACKAGES
               for cls in type(obj).__mro__)


def _is_hyperspy(obj):
    return any(cls.__module__.partition(".")[0] in ("hyperspy", "exspy")
               and cls.__name__ == "BaseSignal" for cls in type(obj).__mro__)


# -- units ---------------------------------------------------------------------------------
def _unit(u):
    from astropy import units

    return units.Unit(u)


def _unit_name(u):
    """astropy's canonical name of a unit, or None for none/dimensionless."""
    if u is None:
        return None
    unit = _unit(u)
    if unit == _unit(""):
        return None
    return unit.to_string()


def _quantity_values(q, name):
    """(values, unit name) of a Quantity (or plain array: unit None)."""
    unit = getattr(q, "unit", None)
    values = np.asarray(getattr(q, "value", q))
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got dtype {values.dtype}")
    return values, _unit_name(unit)


def _spectral_values(q, name, from_wcs=False):
    """A spectral axis as (values, unit); a WCS's metres become Angstrom."""
    values, unit = _quantity_values(q, name)
    values = np.array(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per pixel); got shape {values.shape}")
    if from_wcs and unit is not None:
        from astropy import units

        if _unit(unit) == units.m:  # WCS normalises wavelengths to m
            values, unit = (values * units.m).to_value(units.AA), "Angstrom"
    return values, unit


def convert_spectral(values, unit, to_unit):
    """``values`` in ``unit`` expressed in ``to_unit`` (spectral equivalencies: nm <-> Hz ...).

    Raises ``ValueError`` when the units are not convertible.
    """
    from astropy import units

    try:
        return (np.asarray(values, dtype=np.float64) * _unit(unit)).to_value(
            _unit(to_unit), equivalencies=units.spectral())
    except units.UnitConversionError as exc:
        raise ValueError(f"spectral axis in {unit!r} cannot be expressed in the model's "
                         f"wavelength unit {to_unit!r}: {exc}") from None


# -- uncertainties ---------------------------------------------------------------------------
def _ivar_from_uncertainty(unc, flux_unit, shape):
    """Inverse variance (in flux_unit**-2) from an astropy NDUncertainty."""
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    if isinstance(unc, InverseVariance):
        power = -2
    elif isinstance(unc, StdDevUncertainty):
        power = 1
    elif isinstance(unc, VarianceUncertainty):
        power = 2
    else:
        raise TypeError(f"uncertainty of type {type(unc).__name__} is not supported; use "
                        "InverseVariance, StdDevUncertainty or VarianceUncertainty")
    a = np.array(unc.array, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"uncertainty has shape {a.shape}; the flux has shape {shape}")
    unc_unit = _unit_name(getattr(unc, "unit", None))
    if unc_unit is not None:
        if flux_unit is None:
            raise ValueError(f"the uncertainty has unit {unc_unit!r} but the flux has none")
        # e.g. sigma in mJy with flux in Jy: express it in the flux's unit
        a *= (1.0 * _unit(unc_unit)).to_value(_unit(flux_unit) ** power)
    return _ivar_from(a, power, f"uncertainty ({type(unc).__name__})")


def _ivar_from(a, power, name):
    """Inverse variance from sigma (power 1), variance (2) or inverse variance (-2).

    0, inf or NaN sigma/variance and NaN ivar carry no information: ivar 0 (missing).
    """
    with np.errstate(invalid="ignore"):
        negative = a < 0
    if negative.any():
        raise ValueError(f"{name} has {int(negative.sum())} negative values; it must be >= 0")
    if power == -2:
        if np.isposinf(a).any():
            raise ValueError(f"{name} contains inf inverse variance (zero variance); "
                             "use 0 for missing data")
        ivar = a
    else:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            ivar = 1.0 / (a * a if power == 1 else a)
    return np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)


def _combine(flux, ivar, mask):
    """ivar with masked pixels and non-finite flux set to 0 (None if nothing to say)."""
    bad = None if mask is None else np.asarray(mask) != 0
    with np.errstate(invalid="ignore"):
        nonfinite = ~np.isfinite(flux)
    if nonfinite.any():
        bad = nonfinite if bad is None else bad | nonfinite
    if bad is None or not bad.any():
        return ivar
    if bad.shape != flux.shape:
        raise ValueError(f"mask has shape {bad.shape}; the flux has shape {flux.shape}")
    base = np.ones(flux.shape) if ivar is None else np.asarray(ivar, dtype=np.float64)
    return np.where(bad, 0.0, base)


def _user_ivar(ivar, flux_unit, shape, axis):
    """An ``ivar=`` argument given with a container: shape checked, units converted."""
    values, unit = _quantity_values(ivar, "ivar")
    if unit is not None:
        if flux_unit is None:
            raise ValueError(f"ivar has unit {unit!r} but the flux has none")
        values = values * (1.0 * _unit(unit)).to_value(_unit(flux_unit) ** -2)
    if values.shape != shape:
        raise ValueError(f"ivar must have the shape of the flux {shape}; got {values.shape}")
    return np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)


# -- the readers ----------------------------------------------------------------------------
def _wcs_spectral_axis(wcs, ndim):
    """``(numpy axis, world axis, pixel axis, low-level WCS)`` of the spectral axis of an
    APE 14 WCS, or None if it has no single, separable spectral axis."""
    low = getattr(wcs, "low_level_wcs", wcs)
    try:
        types = list(low.world_axis_physical_types)
        corr = np.asarray(low.axis_correlation_matrix)
        n_pixel = low.pixel_n_dim
    except AttributeError:
        return None
    spectral = [i for i, t in enumerate(types) if t and t.startswith(("em.", "spect."))]
    if len(spectral) != 1 or n_pixel != ndim:
        return None
    world = spectral[0]
    pixels = np.flatnonzero(corr[world])
    if pixels.size != 1:
        return None  # a spectral axis that varies across the field: not one grid
    pixel = int(pixels[0])
    return ndim - 1 - pixel, world, pixel, low


def _nddata_arrays(obj, ivar, wavelength):
    flux = obj.flux if hasattr(obj, "flux") and hasattr(obj, "spectral_axis") else None
    if flux is not None:  # specutils Spectrum / Spectrum1D
        values, flux_unit = _quantity_values(flux, "flux")
        axis = int(getattr(obj, "spectral_axis_index", -1))  # specutils 1.x: always last
        if wavelength is not None:
            raise ValueError("wavelength was given twice: the Spectrum has a spectral_axis; "
                             "drop the wavelength argument")
        wave, wave_unit = _spectral_values(obj.spectral_axis, "spectral_axis")
    else:  # NDData and other NDData subclasses
        values, flux_unit = np.asarray(obj.data), _unit_name(obj.unit)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"NDData.data must be numeric; got dtype {values.dtype}")
        axis, wave, wave_unit = values.ndim - 1, None, None
        found = None if obj.wcs is None else _wcs_spectral_axis(obj.wcs, values.ndim)
        if found is not None:
            if wavelength is not None:
                raise ValueError("wavelength was given twice: the NDData's WCS has a spectral "
                                 "axis; drop the wavelength argument")
            axis, world, pixel, low = found
            n = values.shape[axis]
            coords = [np.arange(n, dtype=np.float64) if p == pixel else np.zeros(n)
                      for p in range(low.pixel_n_dim)]
            world_values = low.pixel_to_world_values(*coords)
            world_values = world_values[world] if low.world_n_dim > 1 else world_values
            # read after the transform: astropy's WCS converts CUNIT to SI (m) only then
            unit = low.world_axis_units[world]
            wave, wave_unit = _spectral_values(np.asarray(world_values) * _unit(unit),
                                               "WCS spectral axis", from_wcs=True)
    if values.ndim == 0:
        raise ValueError("the container holds a scalar, not spectra")
    axis = axis % values.ndim
    flux_shape = values.shape
    unc = getattr(obj, "uncertainty", None)
    if unc is not None and ivar is not None:
        raise ValueError(f"ivar was given twice: the {type(obj).__name__} has an uncertainty "
                         f"({type(unc).__name__}); drop the ivar argument")
    if unc is not None:
        iv = np.moveaxis(_ivar_from_uncertainty(unc, flux_unit, flux_shape), axis, -1)
    elif ivar is not None:
        iv = _user_ivar(ivar, flux_unit, flux_shape, axis)
    else:
        iv = None
    mask = getattr(obj, "mask", None)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != flux_shape:
            mask = np.broadcast_to(mask, flux_shape)
        mask = np.moveaxis(mask, axis, -1)
    values = np.moveaxis(values, axis, -1)
    if wave is None and wavelength is not None:
        wave, wave_unit = _spectral_values(wavelength, "wavelength")
    return _finish(values, iv, mask, wave, wave_unit, flux_unit)


def _hyperspy_arrays(signal, ivar, wavelength):
    if signal.axes_manager.signal_dimension != 1:
        raise ValueError(f"a hyperspy signal with one signal (spectral) axis is needed "
                         f"(Signal1D); got signal dimension {signal.axes_manager.signal_dimension}")
    sig = signal.axes_manager.signal_axes[0]
    axis = sig.index_in_array
    values = np.moveaxis(np.asarray(signal.data), axis, -1)
    variance = signal.metadata.get_item("Signal.Noise_properties.variance")
    if variance is not None and ivar is not None:
        raise ValueError("ivar was given twice: the signal has "
                         "metadata.Signal.Noise_properties.variance; drop the ivar argument")
    if variance is not None:
        var = np.asarray(getattr(variance, "data", variance), dtype=np.float64)
        if var.ndim:
            var = np.moveaxis(np.broadcast_to(var, signal.data.shape), axis, -1)
        iv = np.broadcast_to(_ivar_from(var, 2, "the signal's noise variance"), values.shape)
    elif ivar is not None:
        iv = _user_ivar(ivar, None, signal.data.shape, axis)
    else:
        iv = None
    if wavelength is not None:
        raise ValueError("wavelength was given twice: the signal has a signal axis; drop the "
                         "wavelength argument")
    wave = np.array(sig.axis, dtype=np.float64)
    wave_unit = _hyperspy_unit(sig.units)
    return _finish(values, iv, None, wave, wave_unit, None)


def _hyperspy_unit(units):
    if units is None or str(units) in ("", "<undefined>"):
        return None
    try:
        return _unit_name(units)
    except (ImportError, ValueError):
        return str(units)  # not an astropy unit (or no astropy): kept as written


def _finish(values, iv, mask, wave, wave_unit, flux_unit):
    if values.ndim == 0:
        raise ValueError("the container holds a scalar, not spectra")
    lead = tuple(values.shape[:-1])
    d = values.shape[-1]
    iv = _combine(values, iv, mask)
    flux = values.reshape(-1, d)
    if iv is not None:
        iv = np.ascontiguousarray(np.broadcast_to(iv, values.shape)).reshape(-1, d)
    if wave is not None and wave.shape != (d,):
        raise ValueError(f"wavelength must have shape ({d},) (one value per pixel); "
                         f"got {wave.shape}")
    return SpectraArrays(flux, iv, wave, wave_unit, flux_unit, lead)


def as_arrays(obj, *, ivar=None, wavelength=None) -> SpectraArrays:
    """Flux, inverse variance, spectral axis and units of spectra in a container.

    Parameters
    ----------
    obj : Spectrum, NDData, Quantity, hyperspy Signal1D, list of Spectrum, or array-like
        One spectrum or many (any leading shape): a specutils ``Spectrum``
        (``Spectrum1D``), an astropy ``NDData`` or ``Quantity``, a hyperspy
        signal, or a list of spectra on one grid.  Arrays pass through.
    ivar : array-like of the shape of ``obj``'s flux, optional
        Inverse variance, for a container without an uncertainty (giving both
        is an error).  A Quantity is converted to the flux's unit**-2.
    wavelength : array-like or Quantity of shape (n_pixels,), optional
        Spectral axis, for a container without one (an NDData without a
        spectral WCS, a Quantity, an array); giving it twice is an error.

    Returns
    -------
    SpectraArrays
        ``(flux, ivar, wavelength, wavelength_unit, flux_unit, shape)`` with
        flux and ivar of shape (n_spectra, n_pixels).

    Examples
    --------
    >>> import numpy as np, astropy.units as u
    >>> from astropy.nddata import StdDevUncertainty
    >>> from specutils import Spectrum
    >>> spec = Spectrum(flux=np.ones((2, 4)) * u.Jy, spectral_axis=[500, 501, 502, 503] * u.nm,
    ...                 uncertainty=StdDevUncertainty(np.full((2, 4), 0.5)))
    >>> a = as_arrays(spec)
    >>> a.ivar[0], a.wavelength_unit, a.flux_unit
    (array([4., 4., 4., 4.]), 'nm', 'Jy')
    """
    if _is_hyperspy(obj):
        return _hyperspy_arrays(obj, ivar, wavelength)
    if isinstance(obj, (list, tuple)) and is_container(obj):  # also specutils' SpectrumList
        return _stack(obj, ivar, wavelength)
    if is_container(obj):
        from astropy.nddata import NDData
        from astropy.units import Quantity

        if isinstance(obj, NDData):
            return _nddata_arrays(obj, ivar, wavelength)
        if isinstance(obj, Quantity):
            values, flux_unit = _quantity_values(obj, "X")
            iv = None if ivar is None else _user_ivar(ivar, flux_unit, values.shape, -1)
            wave, wave_unit = (None, None) if wavelength is None else \
                _spectral_values(wavelength, "wavelength")
            return _finish(values, iv, None, wave, wave_unit, flux_unit)
    # anything else (arrays, arrays on disk, dask): as it is
    wave, wave_unit = (None, None) if wavelength is None else \
        _spectral_values(wavelength, "wavelength")
    shape = tuple(getattr(obj, "shape", ()))[:-1]
    return SpectraArrays(obj, ivar, wave, wave_unit, None, shape)


def _stack(spectra, ivar, wavelength):
    """Spectra given one by one (a list, a SpectrumList) on one grid, as one set of arrays."""
    if ivar is not None or wavelength is not None:
        raise ValueError("with a list of spectra, each brings its own uncertainty and spectral "
                         "axis; drop the ivar/wavelength arguments")
    parts = [as_arrays(s) for s in spectra]
    first = parts[0]
    fluxes, ivars = [], []
    for i, p in enumerate(parts):
        if not _same_grid(p.wavelength, p.wavelength_unit, first.wavelength,
                          first.wavelength_unit):
            raise ValueError(f"spectrum {i} of the list is not on the grid of spectrum 0; "
                             "resample them onto one grid first (e.g. with specutils' "
                             "FluxConservingResampler)")
        scale = 1.0
        if p.flux_unit != first.flux_unit:
            if p.flux_unit is None or first.flux_unit is None:
                raise ValueError(f"spectrum {i} has flux unit {p.flux_unit!r}, spectrum 0 "
                                 f"{first.flux_unit!r}")
            scale = (1.0 * _unit(p.flux_unit)).to_value(_unit(first.flux_unit))
        fluxes.append(np.asarray(p.flux, dtype=np.float64) * scale)
        ivars.append(np.ones(p.flux.shape) if p.ivar is None else p.ivar / scale**2)
    return SpectraArrays(np.concatenate(fluxes), np.concatenate(ivars), first.wavelength,
                         first.wavelength_unit, first.flux_unit, (sum(len(f) for f in fluxes),))


# -- the estimator's hooks ---------------------------------------------------------------------
def fit_inputs(X, ivar, wavelength):
    """``(X, ivar, wavelength, (wavelength_unit, flux_unit))`` for ``fit``.

    Plain arrays pass through untouched (and nothing is imported).
    """
    if not (is_container(X) or is_container(wavelength)):
        return X, ivar, wavelength, (None, None)
    a = as_arrays(X, ivar=ivar, wavelength=wavelength)
    return a.flux, a.ivar, a.wavelength, (a.wavelength_unit, a.flux_unit)


def cube_inputs(cube, ivar, mask, wavelength):
    """A container cube as ``(cube, ivar, mask, wavelength, wave_axis, units)`` for
    :func:`specnmf.ifu.fit_cube`: arrays of shape (ny, nx, n_wave), the mask folded into ivar."""
    a = as_arrays(cube, ivar=ivar, wavelength=wavelength)
    if len(a.shape) != 2:
        raise ValueError(f"a cube needs two spatial axes and one spectral axis; the "
                         f"{type(cube).__name__} has leading shape {a.shape}")
    if mask is not None:
        raise ValueError(f"mask was given twice: pass it in the {type(cube).__name__}")
    ny, nx = a.shape
    d = a.flux.shape[1]
    iv = None if a.ivar is None else a.ivar.reshape(ny, nx, d)
    return (a.flux.reshape(ny, nx, d), iv, None, a.wavelength, -1,
            (a.wavelength_unit, a.flux_unit))


def transform_inputs(model, X, ivar):
    """``(X, ivar)`` for ``transform``/``score``; a container's grid is checked against the
    model's and its flux converted to the model's flux unit."""
    if not is_container(X):
        return X, ivar
    a = as_arrays(X, ivar=ivar)
    check_grid(model, a.wavelength, a.wavelength_unit)
    flux_unit = getattr(model, "flux_unit_", None)
    if flux_unit is not None and a.flux_unit is not None and a.flux_unit != flux_unit:
        # coefficients are in the model's flux unit: rescale the data to it
        scale = (1.0 * _unit(a.flux_unit)).to_value(_unit(flux_unit))
        return a.flux * scale, None if a.ivar is None else a.ivar / scale**2
    return a.flux, a.ivar


def _same_grid(values, unit, ref, ref_unit):
    """Whether two spectral axes are the same pixels (units converted; None: unknown, equal)."""
    if values is None or ref is None:
        return values is None and ref is None
    values = np.asarray(values, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if unit is not None and ref_unit is not None and unit != ref_unit:
        values = convert_spectral(values, unit, ref_unit)
    if values.shape != ref.shape:
        return False
    # a thousandth of a pixel: tolerates float32 storage, not a shifted or rescaled grid
    step = np.median(np.abs(np.diff(ref))) if ref.size > 1 else abs(ref[0]) * 1e-6
    return bool(np.all(np.abs(values - ref) <= 1e-3 * step))


def check_grid(model, wavelength, unit):
    """Raise ``ValueError`` unless ``wavelength`` (in ``unit``) is the model's wavelength grid.

    The same grid in another unit (nm for Angstrom, or frequency) is accepted;
    a different grid is an error, including the same numbers in another
    unit.  Nothing is checked when either side has no grid.
    """
    ref = getattr(model, "wavelength_", None)
    if ref is None or wavelength is None:
        return
    ref_unit = getattr(model, "wavelength_unit_", None)
    ref = np.asarray(ref, dtype=np.float64)
    if not _same_grid(wavelength, unit, ref, ref_unit):
        def span(v, u):
            return f"{v[0]:.6g}..{v[-1]:.6g} {u or '(no unit)'}, {v.size} pixels" if v.size \
                else "empty"
        raise ValueError(
            f"the spectral axis of X ({span(np.asarray(wavelength, dtype=float), unit)}) is not "
            f"the model's wavelength grid ({span(ref, ref_unit)}); resample the spectra onto "
            "model.wavelength_ first (e.g. with specutils' FluxConservingResampler)")


# -- results as containers -------------------------------------------------------------------------
def _spectrum_class():
    import specutils

    cls = getattr(specutils, "Spectrum", None) or getattr(specutils, "Spectrum1D", None)
    if cls is None:  # pragma: no cover - every specutils has one of them
        raise ImportError("specutils has neither Spectrum nor Spectrum1D")
    return cls


def to_spectrum(flux, wavelength, *, wavelength_unit, flux_unit=None, ivar=None):
    """A specutils ``Spectrum`` of flux (n_spectra, n_pixels) on ``wavelength`` (n_pixels,).

    ``ivar`` (optional, same shape) becomes an ``InverseVariance`` uncertainty.
    """
    from astropy import units
    from astropy.nddata import InverseVariance

    if wavelength_unit is None:
        raise ValueError("wavelength_unit is needed (e.g. 'Angstrom')")
    fu = units.dimensionless_unscaled if flux_unit is None else _unit(flux_unit)
    unc = None if ivar is None else InverseVariance(np.asarray(ivar), unit=fu ** -2)
    return _spectrum_class()(flux=np.asarray(flux) * fu,
                             spectral_axis=np.asarray(wavelength, dtype=np.float64)
                             * _unit(wavelength_unit),
                             uncertainty=unc)


def templates_spectrum(model, *, wavelength_unit=None, flux_unit=None):
    """A fitted model's templates as one specutils ``Spectrum`` of shape (n_components, n_pixels).

    Parameters
    ----------
    model : fitted SpectralNMF
        Must have a wavelength grid (``wavelength_``: fit with a container or
        with ``wavelength=``).
    wavelength_unit, flux_unit : str or astropy unit, optional
        Default: the model's ``wavelength_unit_`` and ``flux_unit_`` (from
        the container it was fitted on).  The templates carry the flux unit
        (the coefficients are dimensionless).
    """
    if not hasattr(model, "templates_"):
        raise AttributeError(f"this {type(model).__name__} instance is not fitted yet; "
                             "call fit first")
    wave = getattr(model, "wavelength_", None)
    if wave is None:
        raise ValueError("the model has no wavelength grid (wavelength_ is None): fit it on a "
                         "Spectrum/NDData, or with fit(..., wavelength=...)")
    unit = wavelength_unit if wavelength_unit is not None else getattr(model, "wavelength_unit_",
                                                                       None)
    if unit is None:
        raise ValueError("the model's wavelength has no unit (it was fitted on plain arrays); "
                         "pass wavelength_unit='Angstrom' (or the grid's unit)")
    fu = flux_unit if flux_unit is not None else getattr(model, "flux_unit_", None)
    return to_spectrum(model.templates_, wave, wavelength_unit=unit, flux_unit=fu)


def rest_frame(spectra, rest_wavelength, *, redshift=None, ivar=None, wavelength=None,
               method="bin"):
    """De-redshift spectra held in a container onto a rest-frame grid; returns a ``Spectrum``.

    A wrapper of :func:`specnmf.preprocess.to_rest_frame` for containers.

    Parameters
    ----------
    spectra : specutils.Spectrum, NDData, Quantity or array of shape (n_spectra, n_pixels)
        Observed spectra (wavelength as spectral axis).
    rest_wavelength : array-like or Quantity of shape (n_rest,)
        Rest-frame grid; plain numbers are in the spectra's wavelength unit.
    redshift : array-like of shape (n_spectra,), optional
        Default: the Spectrum's ``redshift`` attribute.
    ivar, wavelength : as in :func:`as_arrays`.
    method : {"bin", "linear"}
        See :func:`specnmf.preprocess.to_rest_frame`.

    Returns
    -------
    specutils.Spectrum
        Flux of shape (n_spectra, n_rest) with an ``InverseVariance``
        uncertainty (0 = not observed), on ``rest_wavelength``.
    """
    from .preprocess import to_rest_frame

    a = as_arrays(spectra, ivar=ivar, wavelength=wavelength)
    if a.wavelength is None:
        raise ValueError("the spectra have no wavelength grid; pass wavelength=")
    if a.wavelength_unit is not None and _unit(a.wavelength_unit).physical_type != "length":
        raise ValueError(f"rest_frame needs a wavelength axis; got unit {a.wavelength_unit!r}")
    rest, rest_unit = _spectral_values(rest_wavelength, "rest_wavelength")
    unit = a.wavelength_unit
    if rest_unit is not None and unit is not None and rest_unit != unit:
        rest = convert_spectral(rest, rest_unit, unit)
    unit = unit or rest_unit
    if redshift is None:
        redshift = getattr(spectra, "redshift", None)
        if redshift is None:
            raise ValueError("redshift is needed (the spectra carry none)")
    z = np.asarray(getattr(redshift, "value", redshift), dtype=np.float64)
    n = a.flux.shape[0]
    if z.ndim == 0:
        z = np.full(n, float(z))
    ivar_in = np.ones(a.flux.shape) if a.ivar is None else a.ivar
    flux, iv = to_rest_frame(a.wavelength, a.flux, ivar_in, z.reshape(-1), rest, method=method)
    return to_spectrum(flux, rest, wavelength_unit=unit or "Angstrom", flux_unit=a.flux_unit,
                       ivar=iv)


# -- hyperspy ---------------------------------------------------------------------------------
def decompose_signal(signal, model, *, store=True):
    """Fit ``model`` to a hyperspy spectrum signal, weighted by its noise variance.

    The variance ``signal.metadata.Signal.Noise_properties.variance`` (a
    number or a signal of the data's shape, e.g. from
    ``signal.estimate_poissonian_noise_variance()``) gives the weights,
    ``ivar = 1 / variance`` (0 where the variance is 0 or not finite); no
    variance means unit weights.  hyperspy's own
    ``signal.decomposition(algorithm=model)`` also works, but unweighted.

    Parameters
    ----------
    signal : hyperspy Signal1D
        Any navigation shape (a spectrum image: (ny, nx)); the signal axis is
        the spectral axis.
    model : SpectralNMF
        Unfitted estimator; fitted in place (with the spectral axis and its
        unit as ``wavelength_``/``wavelength_unit_``).
    store : bool, default=True
        Also store the result as the signal's decomposition
        (``signal.learning_results``), so that hyperspy's
        ``plot_decomposition_results()``, ``get_decomposition_factors()`` and
        ``get_decomposition_model()`` use it.

    Returns
    -------
    model : SpectralNMF
        The fitted model.
    factors : hyperspy Signal1D
        The templates, navigation axis = component, signal axis = the
        signal's spectral axis (hyperspy's "factors").
    loadings : hyperspy signal
        The coefficients, navigation axis = component, signal axes = the
        signal's navigation axes (maps for a spectrum image; hyperspy's
        "loadings").
    """
    if not _is_hyperspy(signal):
        raise TypeError(f"signal must be a hyperspy signal; got {type(signal).__name__}")
    import hyperspy.api as hs

    a = _hyperspy_arrays(signal, None, None)
    model.fit(a.flux, ivar=a.ivar, wavelength=a.wavelength)
    model.wavelength_unit_, model.flux_unit_ = a.wavelength_unit, None
    k = model.templates_.shape[0]
    component_axis = {"name": "Decomposition component index", "size": k, "navigate": True}
    sig_axis = signal.axes_manager.signal_axes[0].get_axis_dictionary()
    factors = hs.signals.Signal1D(np.array(model.templates_),
                                  axes=[component_axis, dict(sig_axis, navigate=False)])
    factors.metadata.General.title = f"{signal.metadata.General.title} factors".strip()
    nav = [dict(ax.get_axis_dictionary(), navigate=False)
           for ax in signal.axes_manager.navigation_axes[::-1]]  # array order
    C = np.array(model.coefficients_)
    maps = np.moveaxis(C.reshape(*a.shape, k), -1, 0) if a.shape else C.reshape(k)
    # as hyperspy's get_decomposition_loadings: a map (or profile) per component
    cls = {1: hs.signals.Signal1D, 2: hs.signals.Signal2D}.get(len(nav), hs.signals.BaseSignal)
    loadings = cls(maps, axes=[component_axis] + nav) if nav else hs.signals.BaseSignal(maps)
    loadings.metadata.General.title = f"{signal.metadata.General.title} loadings".strip()
    if store:
        _store_decomposition(signal, model, C)
    return model, factors, loadings


def _store_decomposition(signal, model, C):
    """Fill ``signal.learning_results`` as hyperspy's own decomposition does (factors: (d, k))."""
    lr = signal.learning_results
    lr.factors = np.array(model.templates_.T)
    lr.loadings = C
    lr.explained_variance = None
    lr.explained_variance_ratio = None
    lr.number_significant_components = None
    lr.decomposition_algorithm = repr(model)
    lr.poissonian_noise_normalized = False
    lr.output_dimension = model.templates_.shape[0]
    lr.unfolded = False
    lr.centre = None
    lr.mean = None
    lr.unmixing_matrix = None
    lr.bss_algorithm = None
