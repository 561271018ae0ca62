"""Starting points for the factorisation.

All initialisers work on the host (numpy), on validated data, and draw random
numbers only from the ``numpy.random.Generator`` they are given, so a fit is
reproducible from ``random_state`` whatever backend it then runs on.
:func:`initial_factors` is the start of a fit (``init`` for the factors not
given, one given factor's partner rescaled to the data);
:func:`sequential_start` the paper's sequential build.
"""

from __future__ import annotations

import logging
from numbers import Integral

import numpy as np

from .backends import to_numpy

logger = logging.getLogger("specnmf")

__all__ = ["check_random_state", "random_init", "nndsvd_init", "filled_positive",
           "initial_factors", "sequential_start", "best_of", "INITS"]

INITS = ("random", "nndsvd", "nndsvda")


def check_random_state(seed) -> np.random.Generator:
    """Turn ``None``, an int or a Generator into a ``numpy.random.Generator``."""
    if seed is None or (isinstance(seed, Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(None if seed is None else int(seed))
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(np.iinfo(np.int32).max))
    raise TypeError(
        f"random_state must be None, an int or a numpy.random.Generator; got {seed!r}"
    )


def random_init(shape, n_components, rng, dtype=np.float64, *, scale=1.0):
    """Uniform random coefficients and templates with ``C @ T`` at the data's scale.

    ``shape`` is ``(n_spectra, n_pixels)``.  Entries are ``a * U(0, 2)`` with
    ``a = sqrt(scale / n_components)``, so the mean of the model matches
    ``scale``, the typical flux (``engine.DataSummary.data_scale``).  The
    published code used ``U(0, 2)`` without the scale.
    """
    n, d = shape
    a = np.sqrt(scale / n_components)
    C = a * rng.uniform(0.0, 2.0, size=(n, n_components))
    T = a * rng.uniform(0.0, 2.0, size=(n_components, d))
    return C.astype(dtype), T.astype(dtype)


def filled_positive(X, ivar):
    """The data with missing pixels set to their pixel's weighted mean, then clipped at 0."""
    wsum = ivar.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pix_mean = np.where(wsum > 0, (ivar * X).sum(axis=0) / np.where(wsum > 0, wsum, 1), 0.0)
    filled = np.where(ivar > 0, X, pix_mean[None, :])
    return np.clip(filled, 0, None)


def _truncated_svd(A, k, rng):
    if min(A.shape) <= 2000 or k >= min(A.shape) - 1:
        U, S, Vt = np.linalg.svd(A, full_matrices=False)
        return U[:, :k], S[:k], Vt[:k]
    from scipy.sparse.linalg import svds

    v0 = rng.uniform(-1, 1, size=min(A.shape))
    U, S, Vt = svds(A, k=k, v0=v0)
    order = np.argsort(S)[::-1]
    return U[:, order], S[order], Vt[order]


def nndsvd_init(X, ivar, n_components, rng, dtype=np.float64, fill_zeros=False):
    """Non-negative double SVD start (Boutsidis & Gallopoulos 2008).

    Computed on :func:`filled_positive` data.  Plain NNDSVD has many exact
    zeros, which multiplicative solvers can never move away from; with
    ``fill_zeros=True`` ("nndsvda") they are replaced by the data's mean level.
    """
    A = filled_positive(X, ivar).astype(np.float64)
    n, d = A.shape
    k = n_components
    U, S, Vt = _truncated_svd(A, k, rng)
    C = np.zeros((n, k))
    T = np.zeros((k, d))
    # the leading singular pair of a non-negative matrix can be taken non-negative
    C[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    T[0] = np.sqrt(S[0]) * np.abs(Vt[0])
    for j in range(1, k):
        x, y = U[:, j], Vt[j]
        xp, xn = np.clip(x, 0, None), np.clip(-x, 0, None)
        yp, yn = np.clip(y, 0, None), np.clip(-y, 0, None)
        np_, nn_ = np.linalg.norm(xp) * np.linalg.norm(yp), np.linalg.norm(xn) * np.linalg.norm(yn)
        if np_ >= nn_:
            u, v, sigma = xp, yp, np_
        else:
            u, v, sigma = xn, yn, nn_
        if sigma <= 0:
            continue
        scale = np.sqrt(S[j] * sigma)
        C[:, j] = scale * u / np.linalg.norm(u)
        T[j] = scale * v / np.linalg.norm(v)
    tiny = 1e-12 * max(1.0, float(A.max()))
    C[C < tiny] = 0
    T[T < tiny] = 0
    if fill_zeros:
        avg = float(A.mean())
        avg = np.sqrt(avg / k) if avg > 0 else 1.0
        C[C == 0] = avg
        T[T == 0] = avg
    return C.astype(dtype), T.astype(dtype)


def _rescale(C0, X, ivar, T):
    """Scale each row of ``C0`` so that ``C0 @ T`` best fits ``X`` (weighted, >= 0)."""
    M = C0 @ T
    num = np.sum(ivar * X * M, axis=1)
    den = np.sum(ivar * M * M, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    scale = np.where(scale > 0, scale, 1.0)
    return C0 * scale[:, None]


def initial_factors(init, shape, n_components, rng, dtype, *, data_scale, read=None,
                    templates=None, coefficients=None, multiplicative_solver=None):
    """The start ``(C, T)`` of a fit: the factors given, ``init`` for the missing ones.

    Parameters
    ----------
    init : {"random", "nndsvd", "nndsvda"}
        Start of the factors not given.
    shape : tuple (n_spectra, n_pixels)
    n_components : int
    rng : numpy.random.Generator
    dtype : numpy dtype
    data_scale : float
        The typical flux (``engine.DataSummary.data_scale``), for ``"random"``.
    read : callable or None
        ``read() -> (X, ivar)``: all spectra as validated numpy arrays; None
        when they are not in memory.  NNDSVD needs them; with them, when only
        one factor is given, the started other one is rescaled row by row
        (weighted least squares) to fit the data.
    templates, coefficients : ndarray or None
        Given (validated) factors.
    multiplicative_solver : str or None
        Name of the solver if its multiplicative updates never move an exact
        zero: plain ``"nndsvd"`` is then filled as ``"nndsvda"`` (logged).

    Returns
    -------
    C, T : ndarray
    """
    if templates is not None and coefficients is not None:
        return coefficients, templates
    if init == "nndsvd" or init == "nndsvda":
        if read is None:
            raise ValueError(f"init={init!r} needs the spectra in memory; use "
                             "init='random' or 'sequential' for data streamed from disk")
        X, ivar = read()
        fill = init == "nndsvda"
        if init == "nndsvd" and multiplicative_solver is not None:
            # multiplicative updates never move an exact zero: plain NNDSVD
            # would freeze its zeros (Coelho demo: chi^2 2.9x the optimum)
            logger.warning("init='nndsvd' with solver=%r: its exact zeros are filled "
                           "with the data's mean level (as init='nndsvda')", multiplicative_solver)
            fill = True
        C0, T0 = nndsvd_init(X, ivar, n_components, rng, dtype, fill_zeros=fill)
    else:
        C0, T0 = random_init(shape, n_components, rng, dtype, scale=data_scale)
    if templates is None and coefficients is None:
        return C0, T0
    if read is None:
        return (C0 if coefficients is None else coefficients,
                T0 if templates is None else templates)
    X, ivar = read()
    if templates is None:
        templates = _rescale(T0.T, X.T, ivar.T, coefficients.T).T
    else:
        coefficients = _rescale(C0, X, ivar, templates)
    return coefficients, templates


def sequential_start(train, shape, n_components, rng, dtype, *, data_scale):
    """The paper's sequential build: add one flat template at a time, train all.

    Parameters
    ----------
    train : callable
        ``train(C, T) -> FitResult``: one stage of iterations from ``(C, T)``.
    shape : tuple (n_spectra, n_pixels)
    n_components : int
        Templates at the end.
    rng : numpy.random.Generator
        Draws the coefficients of each new template.
    dtype : numpy dtype
    data_scale : float
        The typical flux; new templates start flat at its square root.

    Returns
    -------
    tuple
        ``(C, T, None)``, or ``(None, None, result)`` if a stage was interrupted.
    """
    n, d = shape
    C = np.empty((n, 0), dtype=dtype)
    T = np.empty((0, d), dtype=dtype)
    for k in range(1, n_components + 1):
        flat = np.full((1, d), np.sqrt(data_scale), dtype=dtype)
        new_coef = rng.uniform(0.0, 2.0, size=(n, 1)).astype(dtype) * np.sqrt(data_scale) / k
        C = np.concatenate([C, new_coef], axis=1)
        T = np.concatenate([T, flat], axis=0)
        result = train(C, T)
        if result.interrupted:
            return None, None, result
        C, T = to_numpy(result.coefficients), to_numpy(result.templates)
    return C, T, None


def best_of(n_init, start, fit):
    """The best of ``n_init`` fits from fresh starts.

    Parameters
    ----------
    n_init : int
    start : callable
        ``start() -> (C, T, stopped)``: a new start, or ``(None, None, result)``
        when making it was interrupted (as :func:`sequential_start` returns).
    fit : callable
        ``fit(C, T) -> FitResult``.

    Returns
    -------
    FitResult
        The fit with the lowest final objective; an interrupted start or fit
        ends the search (an interrupted start is returned as it is).
    """
    best = None
    for _ in range(n_init):
        C, T, stopped = start()
        if stopped is not None:
            return stopped
        result = fit(C, T)
        if best is None or result.objective[-1] < best.objective[-1]:
            best = result
        if result.interrupted:
            break
    return best
