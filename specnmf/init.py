"""Starting points for the factorisation.

All initialisers work on the host (numpy), on validated data, and draw random
numbers only from the ``numpy.random.Generator`` they are given, so a fit is
reproducible from ``random_state`` whatever backend it then runs on.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

__all__ = ["check_random_state", "random_init", "nndsvd_init", "filled_positive", "INITS"]

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
