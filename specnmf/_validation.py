"""Input validation, done once at the public boundary.

After :func:`check_spectra` the arrays obey the conventions of
:mod:`specnmf.objective`: 2-D, real floating point, ``ivar`` finite and >= 0,
``X`` finite everywhere (non-finite flux is allowed only where ``ivar == 0``
and is replaced by 0 there, in a copy).  Nothing downstream checks again, and
the caller's arrays are never modified.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np

__all__ = [
    "MissingDataWarning",
    "NotFittedError",
    "check_y",
    "check_spectra",
    "check_factor",
    "check_dtype",
    "warn_missing",
]


class MissingDataWarning(UserWarning):
    """A spectrum or pixel has zero weight everywhere (it cannot be fitted)."""


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit`` (the same bases
    as scikit-learn's ``NotFittedError``, so code catching either works)."""


def check_y(y, X, method="fit"):
    """``y`` is scikit-learn's target slot, which NMF ignores.

    Spectra used to take ``ivar`` second; an array shaped like ``X`` passed
    there is almost certainly inverse variances, so it is an error that says
    how to pass them rather than a silent unweighted fit.
    """
    if y is None:
        return
    shape = getattr(y, "shape", None)
    if shape is None:
        try:
            shape = np.shape(y)
        except Exception:  # pragma: no cover - exotic containers
            return
    x_shape = getattr(X, "shape", None)
    if x_shape is None:
        try:
            x_shape = np.shape(X)
        except Exception:  # pragma: no cover
            return
    if len(shape) >= 2 and tuple(shape) == tuple(x_shape):
        raise TypeError(
            f"{method}() got an array shaped like X {tuple(x_shape)} as its second positional "
            f"argument, which is y (ignored, scikit-learn convention); pass inverse variances "
            f"by keyword: {method}(X, ivar=ivar)")


_DTYPES = {"float64": np.float64, "float32": np.float32}


def check_dtype(dtype) -> np.dtype:
    """Normalise the ``dtype`` parameter to ``np.float32`` or ``np.float64``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _DTYPES:
        raise ValueError(f"dtype must be 'float64' or 'float32'; got {dtype!r}")
    return dt


def reject_sparse(a, name: str) -> None:
    """Sparse matrices are refused: an implicit zero would be a measured flux of 0,
    not a missing pixel (missing is ``ivar == 0``)."""
    if a is not None and (type(a).__module__.startswith("scipy.sparse") or hasattr(a, "tocsr")):
        raise TypeError(f"{name} is a sparse matrix; sparse input is not supported: pass a dense "
                        f"array ({name}.toarray()) and mark missing pixels with ivar == 0")


def _as_real_array(a, name: str) -> np.ndarray:
    reject_sparse(a, name)
    if hasattr(a, "__array_namespace__") and not isinstance(a, np.ndarray):
        from .backends import to_numpy

        a = to_numpy(a)
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array; could not convert it: {exc}") from exc
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} must be real; got dtype {arr.dtype}")
    if arr.dtype.kind == "O":
        # numbers held as Python objects (e.g. from pandas): convert, or let numpy say
        # which element is not a number
        arr = arr.astype(np.float64)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array; got dtype {arr.dtype}")
    return arr


def _check_2d(arr: np.ndarray, name: str, hint: str = "") -> None:
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D {hint}; got a {arr.ndim}-D array of shape {arr.shape}"
            + (". Reshape your data: for one spectrum use X.reshape(1, -1)"
               if arr.ndim == 1 and name == "X" else "")
        )
    # the wording of scikit-learn's check_array, which its tools look for
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: 0 sample(s) (shape={arr.shape}) while a minimum of 1 "
                         "is required.")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: 0 feature(s) (shape={arr.shape}) while a minimum of 1 "
                         "is required.")


def check_ivar(ivar, shape, dtype, *, of="X"):
    """Validate inverse variances of ``shape``: finite and >= 0 (``None``: unit weights).

    Returns an array of ``dtype``; a view of the input when nothing had to
    change (callers that write to it copy it).  ``of`` names the array whose
    shape ``ivar`` must have, for the error message.
    """
    if ivar is None:
        return np.ones(shape, dtype=dtype)
    ivar = _as_real_array(ivar, "ivar")
    if ivar.shape != tuple(shape):
        raise ValueError(f"ivar must have the shape of {of} {tuple(shape)}; got {ivar.shape}")
    ivar = ivar.astype(dtype, copy=False)
    # fast path: two reductions, no temporaries (NaN propagates through min/max)
    if not (ivar.min() >= 0 and ivar.max() < np.inf):
        if not np.all(np.isfinite(ivar)):
            raise ValueError("ivar contains NaN or inf; use ivar=0 for missing data")
        raise ValueError(
            f"ivar must be >= 0 (inverse variance); found {int(np.sum(ivar < 0))} negative values"
        )
    return ivar


def check_spectra(X, ivar=None, *, dtype="float64"):
    """Validate flux and inverse variance.

    Parameters
    ----------
    X : array-like of shape (n_spectra, n_pixels)
        Flux, may be negative.  NaN/inf allowed only where ``ivar == 0``.
    ivar : array-like of shape (n_spectra, n_pixels) or None
        Inverse variance, finite and >= 0; 0 means missing.  ``None`` gives
        unit weights.
    dtype : {"float64", "float32"} or None
        Working precision.  ``None`` keeps float32 input as float32 and
        converts everything else to float64.

    Returns
    -------
    X, ivar : ndarray of shape (n_spectra, n_pixels)
        Validated arrays; copies whenever anything had to change, so the
        caller's arrays are never modified.

    Raises
    ------
    TypeError
        Non-numeric or complex input.
    ValueError
        Wrong dimensionality, empty input, mismatched shapes, negative or
        non-finite ``ivar``, or non-finite flux where ``ivar > 0``.
    """
    X = _as_real_array(X, "X")
    _check_2d(X, "X", "(n_spectra, n_pixels)")
    if dtype is None:
        dt = np.dtype(np.float32) if X.dtype == np.float32 else np.dtype(np.float64)
    else:
        dt = check_dtype(dtype)
    ivar = check_ivar(ivar, X.shape, dt)
    X = X.astype(dt, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = bool(np.isfinite(X.min()) and np.isfinite(X.max()))
    bad = None if finite else ~np.isfinite(X)
    if bad is not None:
        bad_weighted = bad & (ivar > 0)
        if bad_weighted.any():
            i, j = np.argwhere(bad_weighted)[0]
            hint = " (pass ivar with 0 at missing pixels)" if ivar is not None else ""
            raise ValueError(
                f"X has {int(bad_weighted.sum())} NaN/inf values where ivar > 0, "
                f"e.g. X[{i}, {j}]; NaN/inf flux is allowed only where ivar == 0{hint}"
            )
        X = np.where(bad, 0, X).astype(dt, copy=False)
    return X, ivar


def check_factor(a, name, *, nrows=None, ncols=None, dtype=np.float64, allow_negative=False):
    """Validate a start or fixed factor (coefficients or templates).

    ``nrows``/``ncols`` of ``None`` accept any size.  Returns a new float
    array of ``dtype`` (always a copy, so solvers may own it).
    """
    arr = _as_real_array(a, name)
    _check_2d(arr, name)
    expected = (nrows if nrows is not None else arr.shape[0],
                ncols if ncols is not None else arr.shape[1])
    if arr.shape != expected:
        raise ValueError(f"{name} must have shape {expected}; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    if not allow_negative and np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative; found {int(np.sum(arr < 0))} negative values")
    return np.array(arr, dtype=dtype, copy=True)


def check_n_components(n_components, n_spectra, n_pixels) -> int:
    """``1 <= n_components <= min(n_spectra, n_pixels)``."""
    if isinstance(n_components, bool) or not isinstance(n_components, Integral):
        raise TypeError(f"n_components must be an integer; got {n_components!r}")
    limit = min(n_spectra, n_pixels)
    if not 1 <= int(n_components) <= limit:
        raise ValueError(
            f"n_components must be between 1 and min(n_spectra, n_pixels) = {limit} "
            f"(n_samples={n_spectra}, n_features={n_pixels}); got {n_components}"
        )
    return int(n_components)


def warn_missing(ivar) -> tuple[np.ndarray, np.ndarray]:
    """Warn (once per call) about spectra or pixels with zero total weight.

    Returns boolean masks ``(empty_spectra, empty_pixels)``.
    """
    observed = ivar > 0
    return warn_empty(~np.any(observed, axis=1), ~np.any(observed, axis=0))


def warn_empty(empty_spectra, empty_pixels, stacklevel=3):
    """Warn once if any spectrum or pixel has zero total weight; returns the masks."""
    parts = []
    if empty_spectra.any():
        parts.append(f"{int(empty_spectra.sum())} spectra")
    if empty_pixels.any():
        parts.append(f"{int(empty_pixels.sum())} pixels")
    if parts:
        warnings.warn(
            " and ".join(parts) + " have zero weight everywhere; their coefficients "
            "(spectra) or template values (pixels) are unconstrained and set to 0",
            MissingDataWarning,
            stacklevel=stacklevel,
        )
    return empty_spectra, empty_pixels


def check_scalar(value, name, *, low=None, high=None, integer=False, allow_none=False,
                 closed="both"):
    """Check a numeric parameter; error messages name it and the allowed range."""
    if value is None and allow_none:
        return value
    kind = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a real number'}; got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    lo_ok = low is None or (value >= low if closed in ("both", "left") else value > low)
    hi_ok = high is None or (value <= high if closed in ("both", "right") else value < high)
    if not (lo_ok and hi_ok):
        lb = "[" if closed in ("both", "left") else "("
        rb = "]" if closed in ("both", "right") else ")"
        raise ValueError(
            f"{name} must be in {lb}{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}{rb}; got {value!r}"
        )
    return value


# -- declarative parameter checks: each is ``check(value, name)``, raising on a bad value
def one_of(*allowed):
    """A check that the value is one of the strings ``allowed``."""
    def check(value, name):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name} must be one of {sorted(allowed)}; got {value!r}")
    check.__doc__ = f"one of {allowed}"
    return check


def in_interval(kind, low=None, high=None, closed="both", allow_none=False):
    """A check that the value is a number of ``kind`` (``Integral`` or ``Real``) in the interval."""
    def check(value, name):
        check_scalar(value, name, low=low, high=high, integer=kind is Integral,
                     allow_none=allow_none, closed=closed)
    return check


def random_state(value, name):
    """None, an int or a numpy random generator (see :func:`specnmf.init.check_random_state`)."""
    from .init import check_random_state

    check_random_state(value)


def boolish(value, name):
    """A bool or an int (e.g. a verbosity level)."""
    if not isinstance(value, (bool, Integral)):
        raise TypeError(f"{name} must be a bool or an int; got {value!r}")


def dtype_name(value, name):
    """A working precision accepted by :func:`check_dtype`."""
    check_dtype(value)


def path_or_none(value, name):
    """A file system path (str, bytes, ``os.PathLike``) or None."""
    if value is not None and not isinstance(value, (str, bytes)) and not hasattr(value, "__fspath__"):
        raise TypeError(f"{name} must be a path or None; got {value!r}")


def check_spatial_shape(shape, n):
    """``(ny, nx)`` as two ints with ``ny * nx == n`` (the grid of ``n`` spectra)."""
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"spatial_shape must be a pair (ny, nx); got {shape!r}") from None
    if ny < 1 or nx < 1 or ny * nx != n:
        raise ValueError(f"spatial_shape {tuple(shape)} must have ny * nx equal to the number of "
                         f"spectra ({n})")
    return (ny, nx)


def check_wavelength(wavelength, n_pixels):
    """None, or the wavelength grid as a float64 array of shape ``(n_pixels,)``."""
    if wavelength is None:
        return None
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.shape != (n_pixels,):
        raise ValueError(f"wavelength must have shape ({n_pixels},) (one per pixel); "
                         f"got {wavelength.shape}")
    return wavelength
