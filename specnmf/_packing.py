"""The packed layout of symmetric (q, q) matrices: one concern, no dependencies.

A per-spectrum Gram ``G_i = T diag(ivar_i) T^T`` is symmetric, so specnmf
stores its q(q+1)/2 distinct entries, the pairs (k, l) with k <= l in the
order of ``numpy.triu_indices``.  The weighted Grams
(:mod:`specnmf.solvers.gram`), chi^2 from Grams (:mod:`specnmf.objective`)
and the compiled kernels (:mod:`specnmf._kernels`) all use this one map.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .backends import index_like

__all__ = ["pairs", "products", "unpack", "quad_form"]


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


def quad_form(G_packed, F, xp):
    """``f_i^T G_i f_i`` for packed Grams (m, p) and F (m, q), without unpacking.

    Off-diagonal pairs appear twice in the full form.
    """
    q = F.shape[-1]
    ku, lu, _ = pairs(q)
    w = np.where(ku == lu, 1.0, 2.0)
    prod = products(F, xp, axis=F.ndim - 1)
    return xp.sum(G_packed * prod * xp.asarray(w, dtype=G_packed.dtype), axis=-1)
