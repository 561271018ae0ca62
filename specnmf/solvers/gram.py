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

from functools import lru_cache

import numpy as np

from ..backends import index_like
# chi^2 is computed in specnmf.objective; the alternating solvers reach it from here
from ..objective import block_chi2, chi2_from_grams  # noqa: F401

__all__ = ["pairs", "unpack", "row_grams", "pixel_grams", "quad_form", "gram_matvec"]


@lru_cache(maxsize=64)
def pairs(q: int):
    """Index arrays ``(k, l)`` of the packed upper triangle and the unpack map.

    Returns
    -------
    ku, lu : ndarray of shape (q(q+1)/2,)
    full : ndarray of shape (q*q,)
        ``full[k*q + l]`` is the packed index of the pair (min(k,l), max(k,l)).
    """
    ku, lu = np.triu_indices(q)
    index = np.empty((q, q), dtype=np.int64)
    index[ku, lu] = np.arange(ku.size)
    index[lu, ku] = np.arange(ku.size)
    return ku, lu, index.reshape(-1)


def _take(a, idx, axis, xp):
    return xp.take(a, index_like(idx, a, xp), axis=axis)


def products(F, xp, *, axis):
    """Packed pairwise products of the rows (axis=0) or columns (axis=1) of F."""
    q = F.shape[axis]
    ku, lu, _ = pairs(q)
    return _take(F, ku, axis, xp) * _take(F, lu, axis, xp)


def unpack(G, q, xp, *, axis=-1):
    """Expand packed Grams along ``axis`` to a trailing/leading (q, q) pair of axes.

    ``G`` of shape (m, p) with ``axis=-1`` gives (m, q, q); of shape (p, d)
    with ``axis=0`` gives (q, q, d).
    """
    _, _, full = pairs(q)
    if axis in (-1, G.ndim - 1):
        return xp.reshape(_take(G, full, G.ndim - 1, xp), (*G.shape[:-1], q, q))
    return xp.reshape(_take(G, full, 0, xp), (q, q, *G.shape[1:]))


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


def row_grams(ivar_b, T, xp, *, PT=None):
    """Packed per-spectrum Grams ``T diag(ivar_i) T^T``, of shape (b, q(q+1)/2).

    ``PT`` is ``P(T)^T`` if the caller already has it (see :class:`TemplateProducts`).
    In float64 computed as ``(P(T) ivar_b^T)^T``: the same product, but
    OpenBLAS runs that orientation of a 15-column result ~1.6x faster (measured;
    float32 shows no gain).
    """
    if ivar_b.dtype != xp.float64:
        return ivar_b @ (xp.matrix_transpose(products(T, xp, axis=0)) if PT is None else PT)
    P = products(T, xp, axis=0) if PT is None else xp.matrix_transpose(PT)
    return xp.matrix_transpose(P @ xp.matrix_transpose(ivar_b))


def pixel_grams(ivar_b, C_b, xp):
    """Packed per-pixel Grams ``sum_i ivar_ij c_i c_i^T`` of one block, of shape (q(q+1)/2, d)."""
    return xp.matrix_transpose(products(C_b, xp, axis=1)) @ ivar_b


def gram_matvec(G_full, F, xp):
    """``G_i f_i`` for stacked full Grams G of shape (m, q, q) and F of shape (m, q)."""
    return xp.sum(G_full * F[:, None, :], axis=-1)


def quad_form(G_packed, F, xp):
    """``f_i^T G_i f_i`` for packed Grams (m, p) and F (m, q), without unpacking.

    Off-diagonal pairs appear twice in the full form.
    """
    q = F.shape[-1]
    ku, lu, _ = pairs(q)
    w = np.where(ku == lu, 1.0, 2.0)
    prod = products(F, xp, axis=F.ndim - 1)
    return xp.sum(G_packed * prod * xp.asarray(w, dtype=G_packed.dtype), axis=-1)


def add_diagonal(G_full, diag, xp):
    """``G + diag_embed(diag)`` for stacked (m, q, q) matrices and diag of shape (m, q)."""
    q = G_full.shape[-1]
    eye = xp.eye(q, dtype=G_full.dtype)
    return G_full + diag[:, :, None] * eye
