r"""Weighted Gram matrices: the BLAS-3 form of every update.

For fixed templates T, spectrum i's chi^2 is a quadratic in its coefficients,

    chi2_i(c) = sum_j v_ij x_ij^2 - 2 c . a_i + c^T G_i c,
    G_i = T diag(v_i) T^T,   a_i = T (v_i * x_i),

and for fixed coefficients, pixel j's chi^2 is a quadratic in its template
column t_j with ``G'_j = sum_i v_ij c_i c_i^T`` and ``b_j = sum_i v_ij x_ij c_i``.
All n Grams are one matrix product ``ivar @ P(T)^T`` where ``P(T)`` holds the
q(q+1)/2 distinct products ``T[k] * T[l]`` (k <= l), so the data are read once
and the work is done by BLAS at high arithmetic intensity.  The multiplicative
updates need exactly these quantities too: the Nearly-NMF denominators are
``G_i c_i`` and ``G'_j t_j`` (Green & Bailey eqs. 18-19).

Grams are returned *packed*, of shape (..., q(q+1)/2), and expanded with
:func:`unpack` where a full (q, q) matrix is needed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _kernels
from .._packing import pairs, products, quad_form, unpack

__all__ = ["pairs", "unpack", "row_grams", "kernel_applies", "pixel_grams", "quad_form", "gram_matvec"]


class TemplateProducts:
    """``T^T`` and the packed pair products ``P(T)^T`` of one template matrix.

    Every block of a pass multiplies by the same two matrices, so they are
    made once per pass (the cache holds T itself, so identity is safe).
    """

    def __init__(self):
        self._key = None
        self._value = None

    def __call__(self, T, xp):
        if self._key is not T:
            self._value = (xp.matrix_transpose(T), xp.matrix_transpose(products(T, xp, axis=0)))
            self._key = T
        return self._value

    def __getstate__(self):  # travels to workers empty
        return {"_key": None, "_value": None}


def crop(T, products_, cols):
    """``(T, T^T, P(T)^T)`` restricted to the pixels ``cols`` of a cropped block."""
    Tt, PT = products_
    if cols == slice(None):
        return T, Tt, PT
    return T[:, cols], Tt[cols, :], PT[cols, :]


def widen(stat, cols, d, xp):
    """A block statistic over the pixels ``cols`` as a full-width (rows, d) array of zeros elsewhere."""
    if cols == slice(None) or not hasattr(stat, "shape"):
        return stat
    full = xp.zeros((stat.shape[0], d), dtype=stat.dtype)
    full[:, cols] = stat
    return full


def row_grams(ivar_b, T, xp, *, PT=None, X=None, float64=False):
    """Packed per-spectrum Grams ``T diag(ivar_i) T^T``, of shape (b, q(q+1)/2).

    With ``X``, also the right-hand sides ``b_i = T (ivar_i * X_i)``, of shape
    (b, q): returns ``(G, b)``.  The one definition of these statistics,
    computed in one of two ways:

    * by default in the working dtype and namespace, as one BLAS product
      (the fits' form).  ``PT`` is ``P(T)^T`` if the caller already has it
      (see :class:`TemplateProducts`).  In float64 computed as
      ``(P(T) ivar_b^T)^T``: the same product, but OpenBLAS runs that
      orientation of a 15-column result ~1.6x faster (measured; float32 shows
      no gain).
    * with ``float64=True`` (numpy arrays, ``X`` required, T float64), summed
      in float64 whatever the data's dtype (the exact coefficient solver's
      form): by the compiled kernel where it applies (:func:`kernel_applies`,
      its acceleration, tested equal to the BLAS form), else by small
      single-threaded BLAS products spread over up to 4 Python threads.
    """
    if float64:
        return _row_grams64(X, ivar_b, T)
    if ivar_b.dtype != xp.float64:
        G = ivar_b @ (xp.matrix_transpose(products(T, xp, axis=0)) if PT is None else PT)
    else:
        P = products(T, xp, axis=0) if PT is None else xp.matrix_transpose(PT)
        G = xp.matrix_transpose(P @ xp.matrix_transpose(ivar_b))
    return G if X is None else (G, (ivar_b * X) @ xp.matrix_transpose(T))


# Largest matrix product (multiply-adds) issued by the float64 row_grams (see _tiles);
# OpenBLAS runs a product on one thread below 2 * 2^18 multiply-adds.
_GEMM_MAX_WORK = 7 << 16
# Sub-blocks per threaded task, and the most threads used to form Grams.
_SUBS_PER_TASK = 64
_MAX_GRAM_THREADS = 4


def kernel_applies(X, ivar, q):
    """Whether the compiled Gram kernel computes ``row_grams(..., float64=True)`` of these arrays."""
    return (q <= _kernels.MAX_Q
            and isinstance(X, np.ndarray) and isinstance(ivar, np.ndarray)
            and X.dtype == ivar.dtype and X.dtype in (np.float32, np.float64)
            and X.flags.c_contiguous and ivar.flags.c_contiguous
            and _kernels.worthwhile(X.size))


def fit_kernels_apply(xp, q):
    """Whether the compiled kernel forms the alternating solvers' row Grams (:func:`fit_row_grams`)
    in a fit with ``q`` components (None: a fit too small to compile) in namespace ``xp``."""
    from ..backends import is_numpy_namespace

    return q is not None and q <= _kernels.MAX_Q and is_numpy_namespace(xp) and _kernels.available()


def fit_prepare(ivar):
    """``ivar`` as the compiled fit kernels read it (C-contiguous) and each spectrum's
    observed span (:func:`specnmf._kernels.spans`)."""
    ivar = np.ascontiguousarray(ivar)
    return ivar, _kernels.spans(ivar)


def fit_row_grams(ivar_b, vx, T, spans):
    """``row_grams(ivar_b, T, np, X=X)`` of validated fit data by the compiled kernel, from
    ``vx = ivar_b * X`` and the spectra's observed ``spans``: float64, summed in another
    order than BLAS (and, for float32 data, in float64)."""
    return _kernels.fit_row_grams(ivar_b, vx, T, *spans)


def fit_pixel_stats(ivar_b, vx, C, spans):
    """``(C.T @ vx, pixel_grams(ivar_b, C, np))`` of validated fit data by the compiled
    kernel, with the spectra's observed ``spans``: float64, summed in another order than
    BLAS (and, for float32 data, in float64)."""
    return _kernels.fit_pixel_stats(ivar_b, vx, C, *spans)


def _row_grams64(X, ivar, T):
    """``row_grams(ivar, T, np, X=X, float64=True)``; the kernel's check of the data
    (validated already) can only fail on an overflow, which the BLAS path then reproduces."""
    q = T.shape[0]
    if kernel_applies(X, ivar, q):
        G, b, ok = _kernels.checked_row_grams(X, ivar, T)
        if ok:
            return G, b
    return _grams_tiled(X, ivar, T)


def _padded_products(T):
    """``P(T)^T`` of shape (n_pixels, n_pad), with zero columns up to a multiple of 8,
    which suits the register blocking of BLAS kernels (measurably faster for small q)."""
    P = products(T, np, axis=0)
    out = np.zeros((T.shape[1], -(-P.shape[0] // 8) * 8))
    out[:, :P.shape[0]] = P.T
    return out


def _n_workers():
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_GRAM_THREADS, cpus))


def _tiles(d, n_cols):
    """Tile sizes (rows, pixels, columns) for the Gram products.

    Every matrix product then has rows * pixels * columns <= _GEMM_MAX_WORK,
    small enough that BLAS runs it on one thread (OpenBLAS threads a product
    of more than 2^19 multiply-adds; its threads spin-wait, which costs many
    times the work itself on a loaded machine) and that its operands stay in
    cache.
    Parallelism comes from Python threads over groups of rows instead.
    """
    cols = min(n_cols, 16)
    pix = min(d, max(1, _GEMM_MAX_WORK // cols))
    rows = max(1, _GEMM_MAX_WORK // (pix * cols))
    return rows, pix, cols


def _grams_rows(X, ivar, P, TT, Gu, bu, start, stop):
    """Fill rows start:stop of Gu (pair sums) and bu (projections)."""
    d, n_pad = P.shape
    q = TT.shape[1]
    sub, pix, cols = _tiles(d, n_pad)
    buf = np.empty((min(sub, stop - start), d))
    for a in range(start, stop, sub):
        z = min(stop, a + sub)
        iv = ivar[a:z]
        if iv.dtype != np.float64:
            iv = iv.astype(np.float64)
        w = np.multiply(iv, X[a:z], out=buf[:z - a])
        if pix == d and cols == n_pad and q <= cols:
            np.matmul(iv, P, out=Gu[a:z])
            np.matmul(w, TT, out=bu[a:z])
            continue
        Gu[a:z] = 0.0
        bu[a:z] = 0.0
        for j in range(0, d, pix):
            jz = min(d, j + pix)
            for c in range(0, n_pad, cols):
                Gu[a:z, c:c + cols] += iv[:, j:jz] @ P[j:jz, c:c + cols]
            for c in range(0, q, cols):
                bu[a:z, c:c + cols] += w[:, j:jz] @ TT[j:jz, c:c + cols]


def _grams_tiled(X, ivar, T):
    """The BLAS form of ``row_grams(..., float64=True)``.

    The pixel products ``ivar * X`` are formed a few rows at a time so that
    they stay in cache instead of making a full-size temporary; the matrix
    products of a few rows are too small for BLAS to thread, so groups of
    rows go to a few Python threads instead (numpy releases the GIL).
    """
    P = _padded_products(T)
    TT = np.ascontiguousarray(T.T)
    rows, d = ivar.shape
    q = T.shape[0]
    Gu = np.empty((rows, P.shape[1]))
    bu = np.empty((rows, q))
    group = _tiles(d, P.shape[1])[0] * _SUBS_PER_TASK
    n_tasks = -(-rows // group)
    workers = min(_n_workers(), n_tasks)
    if workers <= 1:
        _grams_rows(X, ivar, P, TT, Gu, bu, 0, rows)
    else:
        with ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(_grams_rows, X, ivar, P, TT, Gu, bu, a, min(rows, a + group))
                    for a in range(0, rows, group)]
            for job in jobs:
                job.result()
    return Gu[:, :q * (q + 1) // 2], bu


def pixel_grams(ivar_b, C_b, xp):
    """Packed per-pixel Grams ``sum_i ivar_ij c_i c_i^T`` of one block, of shape (q(q+1)/2, d)."""
    return xp.matrix_transpose(products(C_b, xp, axis=1)) @ ivar_b


def gram_matvec(G_full, F, xp):
    """``G_i f_i`` for stacked full Grams G of shape (m, q, q) and F of shape (m, q)."""
    return xp.sum(G_full * F[:, None, :], axis=-1)


def add_diagonal(G_full, diag, xp):
    """``G + diag_embed(diag)`` for stacked (m, q, q) matrices and diag of shape (m, q)."""
    q = G_full.shape[-1]
    eye = xp.eye(q, dtype=G_full.dtype)
    return G_full + diag[:, :, None] * eye
