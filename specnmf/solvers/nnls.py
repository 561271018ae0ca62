r"""Batched exact non-negative least squares on small Gram systems.

With the templates T (n_components, n_pixels) fixed, the coefficients of
spectrum i solve

.. math:: \min_{c \ge 0} \sum_j \mathrm{ivar}_{ij} (X_{ij} - \sum_k c_k T_{kj})^2
          = \min_{c \ge 0}\ c^T G_i c - 2 b_i^T c + \mathrm{const},

with the per-spectrum Gram matrix ``G_i = T diag(ivar_i) T^T`` (q x q) and
``b_i = T (ivar_i * X_i)``.  Everything here works on these small systems, so
the cost is one pass over the data (two matrix products, BLAS-3) plus an
O(q^3) solve per spectrum, vectorised over all spectra at once.

* :func:`nnls_gram` solves many independent problems
  ``min_x x^T G_m x - 2 b_m^T x, x >= 0`` exactly, by block principal pivoting
  (Kim & Park 2011, SIAM J. Sci. Comput. 33, 3261) run on every problem at
  once, with Kim & Park's single-exchange backup rule against cycling, and a
  per-problem fallback to :func:`scipy.optimize.nnls` for the rare problems
  that do not meet the KKT conditions after ``max_iter`` pivoting steps.
* :func:`weighted_nnls` builds the Grams of a block of spectra and solves them
  (this is ``SpectralNMF.transform``).
* :func:`spectrum_grams` returns the Grams themselves, and
  :func:`nnls_covariance` the covariance of the coefficients from them.

Numerical notes (what "exact" means here)
-----------------------------------------
Each problem is first equilibrated, ``G' = S G S``, ``b' = S b`` with
``S = diag(G_kk^-1/2)``, so that ``G'`` has a unit diagonal; the constraint
``x >= 0`` is unchanged by this positive rescaling, and all tolerances are
then relative.  A component with ``G_kk == 0`` (a template that is zero on all
observed pixels of the spectrum, or a spectrum with no weight at all) does not
enter the objective and gets exactly 0.  The free-set systems
``G'_FF x_F = b'_F`` are solved by elimination without pivoting on
``G'_FF + 1e-14 I`` (positive definite even when ``G'`` is singular, e.g. for
duplicate templates: the jitter then picks the minimum-norm split, which has
the same objective); when the smallest pivot is below 1e-3, two steps of
iterative refinement against the un-jittered ``G'_FF`` follow, so the jitter
changes the objective by a relative ``(1e-14 / lambda)^6`` along an
eigen-direction with eigenvalue ``lambda``.  A solution is accepted when, with
``g = G' x - b'`` and ``tol = 1e-11 (max|b'| + q max|x|)``, ``x_F >= -tol``,
``g_B >= -tol`` on the bound set, and ``|g_F| <= 1e3 tol`` on the free set;
complementarity holds by construction (``x_B = 0``) and the tiny negative
``x_F`` allowed by the tolerance are set to 0.

The accuracy is that of the normal equations.  For templates that are nearly
dependent on the observed pixels (two templates equal to a relative 1e-6, say:
``cond(G') ~ 1e12``), the Gram no longer carries the digits that decide
whether the pair should share the fit, and :func:`nnls_gram` can miss a
chi^2 improvement of order 1e-5 relative that a QR-based solver on the data
finds.  :func:`weighted_nnls`, which has the data, detects these spectra (a
pivot of the unit-diagonal Gram below 1e-9) and solves them with
:func:`scipy.optimize.nnls` on the weighted pixels, so its coefficients are
exact for any templates (at the speed of scipy for such spectra).
Problems are only well posed when ``b`` lies in the range of ``G`` (always true
when they come from least squares); otherwise the objective is unbounded below
along a null direction of ``G``, and such
components are returned as 0.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _kernels
from .gram import unpack as _gram_unpack

__all__ = ["nnls_gram", "nnls_gram_packed", "weighted_nnls", "spectrum_grams", "nnls_covariance"]

logger = logging.getLogger("specnmf")

# Diagonal jitter added to the unit-diagonal free-set matrices (see module notes).
_JITTER = 1e-14
# Iterative-refinement steps after a jittered solve whose smallest pivot is
# below _REFINE_BELOW (with larger pivots the jitter's effect, relative
# (1e-14 / pivot)^2, is below rounding).
_REFINE_STEPS = 2
_REFINE_BELOW = 1e-3
# Relative tolerance of the KKT test, in units of max|b'| + q max|x| (unit-diagonal G').
_KKT_RTOL = 1e-11
# Looser bound for the free-set gradient, which after the solve is only a
# rounding residual; kept well below anything that changes the objective.
_FREE_GRAD_FACTOR = 1e3
# Kim & Park's number of full exchanges allowed without progress before the
# backup (single-exchange) rule takes over.
_FULL_EXCHANGES = 3
# Elements of one (q, q, m) working array: bounds the memory per chunk of problems.
_CHUNK_ELEMENTS = 1 << 21
# Largest matrix product (multiply-adds) issued when forming Grams (see _tiles);
# OpenBLAS runs a product on one thread below 2 * 2^18 multiply-adds.
_GEMM_MAX_WORK = 7 << 16
# weighted_nnls re-solves from the data (QR) the spectra whose Gram, scaled
# to a unit diagonal, has a pivot below this (two templates that differ by a
# relative ~3e-5 on the observed pixels, or closer): the normal equations then
# carry too few correct digits for a chi^2 exact to 1e-8.
_FRAGILE_PIVOT = 1e-9
# Sub-blocks per threaded task, and the most threads used to form Grams.
_SUBS_PER_TASK = 64
_MAX_GRAM_THREADS = 4
# Default number of spectra whose Grams are built and solved together.
_DEFAULT_BLOCK_ELEMENTS = 1 << 21


# --------------------------------------------------------------------------
# Batched dense linear algebra on (q, q, m) stacks: the batch index is last so
# that every operation below is a contiguous vector operation over problems.
# --------------------------------------------------------------------------

def _factor(M):
    """In-place LU factorisation without pivoting of a stack of SPD matrices.

    ``M`` of shape (q, q, m) is overwritten: its upper triangle holds U and its
    strict lower triangle the multipliers of L.  Pivoting is unnecessary for
    symmetric positive definite matrices; pivots are floored at a tiny positive
    value so that an input that is not quite PSD gives finite (if inexact)
    numbers, which the KKT test then rejects.
    """
    q = M.shape[0]
    for k in range(q):
        piv = M[k, k]
        np.maximum(piv, 1e-3 * _JITTER, out=piv)
        if k + 1 < q:
            f = M[k + 1:, k] / piv
            M[k + 1:, k] = f
            M[k + 1:, k + 1:] -= f[:, None, :] * M[k, None, k + 1:]
    return M


def _lu_solve(LU, r):
    """Solve ``M x = r`` for stacked right-hand sides r of shape (q, m)."""
    q = LU.shape[0]
    x = r.copy()
    for k in range(1, q):
        x[k] -= np.einsum("km,km->m", LU[k, :k], x[:k])
    for k in range(q - 1, -1, -1):
        if k + 1 < q:
            x[k] -= np.einsum("km,km->m", LU[k, k + 1:], x[k + 1:])
        x[k] /= LU[k, k]
    return x


def _matvec(G, x):
    """``G @ x`` for stacks G of shape (q, q, m) and x of shape (q, m)."""
    return np.einsum("klm,lm->km", G, x)


def _masked_system(Gs, F):
    """``G'_FF`` padded with the identity outside the free set F, plus jitter on F."""
    M = np.where(F[:, None, :] & F[None, :, :], Gs, 0.0)
    q = Gs.shape[0]
    diag = np.arange(q)
    M[diag, diag] += np.where(F, _JITTER, 1.0)
    return M


# --------------------------------------------------------------------------
# Block principal pivoting
# --------------------------------------------------------------------------

def _equilibrate(G, b, symmetrize=True):
    """Scale to a unit diagonal: returns ``G' = S G S``, ``b' = S b``, S, live.

    G of shape (q, q, m) and b of shape (q, m); ``live`` marks components with
    ``G_kk > 0``.  With ``symmetrize``, G is replaced by ``(G + G^T) / 2`` on
    the way (user input may be asymmetric at the rounding level).
    """
    q = G.shape[0]
    diag = np.arange(q)
    d = G[diag, diag]
    live = d > 0
    s = np.zeros_like(d)
    np.divide(1.0, np.sqrt(d, where=live, out=np.zeros_like(d)), where=live, out=s)
    ss = s[:, None, :] * s[None, :, :]
    if symmetrize:
        Gs = (G + G.transpose(1, 0, 2)) * (0.5 * ss)
    else:
        Gs = G * ss
    Gs[diag, diag] = live
    return Gs, b * s, s, live


def _kkt(Gs, bs, x, F, live, bmax):
    """Violation masks of the current iterate.

    Returns ``(V, free_ok)``: V of shape (q, m) marks infeasible entries (free
    and negative, or bound with a negative gradient); free_ok of shape (m,) is
    False where the free-set gradient is more than a rounding residual.
    """
    q = Gs.shape[0]
    g = _matvec(Gs, x) - bs
    tol = _KKT_RTOL * (bmax + q * np.max(np.abs(x), axis=0))
    V = np.where(F, x < -tol, live & (g < -tol))
    free_ok = np.all(~F | (np.abs(g) <= _FREE_GRAD_FACTOR * tol), axis=0)
    return V, free_ok


def _solve_free(Gs, bs, F):
    """Minimiser over the free set F (zeros elsewhere).

    Also returns the smallest pivot of the unit-diagonal ``G'_FF`` (1 for an
    empty free set), a cheap measure of how close to singular it is; only
    systems with a small pivot get the iterative refinement that removes the
    effect of the jitter (elsewhere it is below rounding).
    """
    q = Gs.shape[0]
    LU = _factor(_masked_system(Gs, F))
    x = _lu_solve(LU, np.where(F, bs, 0.0))
    min_pivot = np.min(np.where(F, LU[np.arange(q), np.arange(q)], 1.0), axis=0)
    weak = np.flatnonzero(min_pivot < _REFINE_BELOW)
    if weak.size:
        LUw, Gw = np.take(LU, weak, axis=2), np.take(Gs, weak, axis=2)
        bw, Fw, xw = bs[:, weak], F[:, weak], x[:, weak]
        for _ in range(_REFINE_STEPS):
            xw += _lu_solve(LUw, np.where(Fw, bw - _matvec(Gw, xw), 0.0))
        x[:, weak] = xw
    return np.where(F, x, 0.0), min_pivot


def _bpp(Gs, bs, live, F0, max_iter):
    """Block principal pivoting on equilibrated problems of shape (q, q, m).

    Returns ``(x, ok, min_pivot)``: x of shape (q, m) (in the scaled
    variables), a boolean of shape (m,) that is False where the KKT test still
    fails after ``max_iter`` iterations, and the smallest pivot of the final
    free-set system of each problem (see :func:`_solve_free`).
    """
    q, m = bs.shape
    x_out = np.zeros((q, m))
    ok_out = np.zeros(m, dtype=bool)
    piv_out = np.ones(m)
    idx = np.arange(m)
    F = F0 & live
    bmax = np.max(np.abs(bs), axis=0)
    n_inf = np.full(m, q + 1)
    budget = np.full(m, _FULL_EXCHANGES)
    rows = np.arange(q)[:, None]
    for _ in range(max_iter + 1):
        x, min_pivot = _solve_free(Gs, bs, F)
        V, free_ok = _kkt(Gs, bs, x, F, live, bmax)
        n_v = V.sum(axis=0)
        done = n_v == 0
        if done.any():
            x_out[:, idx[done]] = x[:, done]
            ok_out[idx[done]] = free_ok[done]
            piv_out[idx[done]] = min_pivot[done]
            keep = np.flatnonzero(~done)
            if keep.size == 0:
                break
            idx, n_v, n_inf, budget, bmax, min_pivot = (
                a[keep] for a in (idx, n_v, n_inf, budget, bmax, min_pivot))
            Gs = np.take(Gs, keep, axis=2)
            bs, live, F, V, x = (np.take(a, keep, axis=1) for a in (bs, live, F, V, x))
        # Kim & Park: exchange every infeasible index while their number keeps
        # falling (or for a few steps without progress), otherwise only the
        # last one, which guarantees termination for positive definite G.
        better = n_v < n_inf
        n_inf = np.where(better, n_v, n_inf)
        budget = np.where(better, _FULL_EXCHANGES, budget - 1)
        single = budget < 0
        if single.any():
            budget[single] = 0
            Vs = V[:, single]
            last = (q - 1) - np.argmax(Vs[::-1], axis=0)
            V[:, single] = Vs & (rows == last)
        F = F ^ V
    else:
        # Out of iterations: report the last iterate; the caller falls back.
        x_out[:, idx] = x
        piv_out[idx] = min_pivot
    return x_out, ok_out, piv_out


def _scipy_nnls(A, y, **options):
    """:func:`scipy.optimize.nnls`, imported on first use: importing
    scipy.optimize takes ~0.3 s, too much for ``import specnmf``."""
    from scipy.optimize import nnls

    return nnls(A, y, **options)


def _fallback(Gs, bs, live):
    """One problem by :func:`scipy.optimize.nnls` on an equivalent least squares.

    With ``G' = V diag(w) V^T`` (eigenvalues w > cutoff), ``A = diag(sqrt(w)) V^T``
    and ``y = diag(1/sqrt(w)) V^T b'`` give ``|A x - y|^2 = x^T G' x - 2 b'^T x
    + const`` for b' in the range of G'.
    """
    q = bs.shape[0]
    x = np.zeros(q)
    k = np.flatnonzero(live)
    if k.size == 0:
        return x
    w, vec = np.linalg.eigh(Gs[np.ix_(k, k)])
    keep = w > k.size * np.finfo(float).eps * max(w[-1], 0.0)
    if not keep.any():
        return x
    root = np.sqrt(w[keep])
    A = root[:, None] * vec[:, keep].T
    y = (vec[:, keep].T @ bs[k]) / root
    try:
        x[k], _ = _scipy_nnls(A, y, maxiter=50 * max(q, 3))
    except RuntimeError:  # pragma: no cover - scipy's own iteration limit
        logger.warning("scipy.optimize.nnls did not converge on a fallback problem; "
                       "keeping the block-principal-pivoting iterate")
        return None
    return x


def _nnls_chunk(G, b, F0, max_iter, symmetrize=True):
    """Solve one chunk; G of shape (q, q, m), b (q, m), F0 (q, m) or None.

    Returns x of shape (q, m) and, for each problem, the smallest pivot of its
    whole unit-diagonal G' (over the components with ``G_kk > 0``): below
    about 1e-9 the components are so nearly dependent that the Gram has lost
    digits that can decide the answer (see :func:`weighted_nnls`).
    """
    Gs, bs, s, live = _equilibrate(G, b, symmetrize)
    if F0 is None:
        F0 = live
    x, ok, _ = _bpp(Gs, bs, live, F0, max_iter)
    bad = np.flatnonzero(~ok)
    if bad.size:
        logger.debug("nnls_gram: %d of %d problems fail the KKT test after %d pivoting "
                     "steps; solving them with scipy.optimize.nnls", bad.size, ok.size, max_iter)
        for i in bad:
            xi = _fallback(Gs[:, :, i], bs[:, i], live[:, i])
            if xi is not None:
                x[:, i] = xi
    np.maximum(x, 0.0, out=x)
    q = Gs.shape[0]
    LU = _factor(_masked_system(Gs, live))
    min_pivot = np.min(np.where(live, LU[np.arange(q), np.arange(q)], 1.0), axis=0)
    return x * s, min_pivot


def _check_gram_problems(G, b, x0):
    G = np.asarray(G)
    b = np.asarray(b)
    for name, a in (("G", G), ("b", b)):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array; got dtype {a.dtype}")
    single = G.ndim == 2 and b.ndim == 1
    if single:
        G, b = G[None], b[None]
    if G.ndim != 3 or G.shape[1] != G.shape[2]:
        raise ValueError(f"G must have shape (n_problems, q, q); got {G.shape}")
    if b.shape != G.shape[:2]:
        raise ValueError(f"b must have shape {G.shape[:2]} to match G; got {b.shape}")
    if G.shape[1] == 0:
        raise ValueError("G must have at least one component (q >= 1)")
    if not (np.all(np.isfinite(G)) and np.all(np.isfinite(b))):
        raise ValueError("G and b must be finite")
    diag = np.diagonal(G, axis1=1, axis2=2)
    if np.any(diag < 0):
        raise ValueError("G must be positive semi-definite; found negative diagonal entries")
    if x0 is not None:
        x0 = np.asarray(x0)
        if single and x0.ndim == 1:
            x0 = x0[None]
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of b {b.shape}; got {x0.shape}")
        if not np.all(np.isfinite(x0)):
            raise ValueError("x0 must be finite")
    return G, b, x0, single


def _default_max_iter(q):
    return max(50, 10 * q)


def nnls_gram(G, b, *, x0=None, max_iter=None):
    r"""Exact solutions of many small non-negative quadratic problems.

    For every problem m, minimise

    .. math:: x^T G_m x - 2 b_m^T x \quad\text{subject to}\quad x \ge 0,

    which is non-negative least squares ``min |A x - y|^2`` written with
    ``G = A^T A`` and ``b = A^T y``.  All problems are solved together by block
    principal pivoting (Kim & Park 2011) with masked, vectorised solves, and
    terminate on the KKT conditions (see the module notes for tolerances and
    for how singular ``G`` is handled); problems that still fail them after
    ``max_iter`` pivoting steps are solved one by one with
    :func:`scipy.optimize.nnls`.

    Parameters
    ----------
    G : array-like of shape (n_problems, q, q)
        Symmetric positive semi-definite matrices (singular allowed: a zero
        row/column gives a zero coefficient).  A single (q, q) matrix with
        ``b`` of shape (q,) is accepted too.
    b : array-like of shape (n_problems, q)
        Linear terms; they should lie in the range of ``G``.
    x0 : array-like of shape (n_problems, q), optional
        Warm start: the pivoting starts from the free set ``x0 > 0`` (e.g. the
        previous iteration's coefficients).  Only the support is used, so any
        start gives the same answer.  Default: every component free.
    max_iter : int, optional
        Pivoting steps before the fallback; default ``max(50, 10 q)``.

    Returns
    -------
    ndarray of shape (n_problems, q)
        The minimisers, float64, ``>= 0`` (shape (q,) for a single problem).

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf.solvers.nnls import nnls_gram
    >>> G = np.array([[[2.0, 1.0], [1.0, 2.0]]])
    >>> nnls_gram(G, np.array([[3.0, -1.0]]))  # unconstrained optimum has x_1 < 0
    array([[1.5, 0. ]])
    """
    G, b, x0, single = _check_gram_problems(G, b, x0)
    if max_iter is None:
        max_iter = _default_max_iter(G.shape[1])
    elif isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer; got {max_iter!r}")
    m, q, _ = G.shape
    out = np.zeros((m, q))
    step = max(1, _CHUNK_ELEMENTS // (q * q))
    for start in range(0, m, step):
        sl = slice(start, min(m, start + step))
        Gc = np.ascontiguousarray(np.transpose(G[sl], (1, 2, 0)), dtype=np.float64)
        bc = np.ascontiguousarray(b[sl].T, dtype=np.float64)
        F0 = None if x0 is None else np.ascontiguousarray(x0[sl].T > 0)
        out[sl] = _nnls_chunk(Gc, bc, F0, int(max_iter))[0].T
    return out[0] if single else out


def nnls_gram_packed(G, b, *, return_fragile=False):
    r""":func:`nnls_gram` for Grams packed as their upper triangles.

    The compiled route to the same problems (used by
    :mod:`specnmf.redshift`, which makes millions of them): with numba, the
    well-conditioned problems are solved by the kernel of
    :func:`weighted_nnls` (same unit-diagonal scaling and KKT test), the
    others (pivot below ``1e-3`` or failing the test) by :func:`nnls_gram`'s
    pivoting; without numba, :func:`nnls_gram` solves them all.

    Parameters
    ----------
    G : array-like of shape (n_problems, q (q + 1) / 2)
        Upper triangles of symmetric positive semi-definite (q, q) matrices,
        row by row (the order of ``numpy.triu_indices(q)``).
    b : array-like of shape (n_problems, q)
    return_fragile : bool, default False
        Also return which problems' unit-diagonal Gram has a pivot below
        1e-9: the normal equations then carry too few digits for an exact
        chi^2, and the caller should re-solve them from the data (as
        :func:`weighted_nnls` does).

    Returns
    -------
    x : ndarray of shape (n_problems, q)
    fragile : ndarray of bool, shape (n_problems,)
        Only with ``return_fragile``.
    """
    G = np.ascontiguousarray(G, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    m, q = b.shape
    if G.shape != (m, q * (q + 1) // 2):
        raise ValueError(f"G must have shape ({m}, {q * (q + 1) // 2}) for b of shape "
                         f"{b.shape}; got {G.shape}")
    x = np.zeros((m, q))
    fragile = np.zeros(m, dtype=bool)
    if m == 0:
        return (x, fragile) if return_fragile else x
    if _kernels.available() and q <= _kernels.MAX_Q:
        status = np.zeros(m, dtype=np.int8)
        _kernels._nnls_rows(G, b, x, status, _FRAGILE_PIVOT, _REFINE_BELOW, _KKT_RTOL,
                            _FREE_GRAD_FACTOR)
        rest = np.flatnonzero(status != _kernels.SOLVED)
        fragile[status == _kernels.FRAGILE] = True
    else:
        rest = np.arange(m)
    if rest.size:
        iu = np.triu_indices(q)
        Gf = np.zeros((rest.size, q, q))
        Gf[:, iu[0], iu[1]] = G[rest]
        Gf[:, iu[1], iu[0]] = G[rest]
        if not return_fragile:
            x[rest] = nnls_gram(Gf, b[rest])
        else:
            step = max(1, _CHUNK_ELEMENTS // (q * q))
            for start in range(0, rest.size, step):
                sl = slice(start, min(rest.size, start + step))
                xs, pivot = _nnls_chunk(np.ascontiguousarray(np.transpose(Gf[sl], (1, 2, 0))),
                                        np.ascontiguousarray(b[rest[sl]].T), None,
                                        _default_max_iter(q))
                x[rest[sl]] = xs.T
                fragile[rest[sl]] |= pivot < _FRAGILE_PIVOT
    return (x, fragile) if return_fragile else x


# --------------------------------------------------------------------------
# Grams of weighted spectra
# --------------------------------------------------------------------------

def _pair_products(T):
    """Pixel products ``T_k * T_l`` (k <= l), as columns of shape (n_pixels, n_pad).

    The q(q+1)/2 columns are padded with zeros to a multiple of 8, which suits
    the register blocking of BLAS kernels (measurably faster for small q).
    Also returns the pair indices and ``T^T`` (contiguous).
    """
    q, d = T.shape
    ku, lu = np.triu_indices(q)
    n_pad = -(-ku.size // 8) * 8
    P = np.zeros((d, n_pad))
    P[:, :ku.size] = (T[ku] * T[lu]).T
    return P, ku, lu, np.ascontiguousarray(T.T)


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


def _grams_rows(X, ivar, pairs, Gu, bu, start, stop):
    """Fill rows start:stop of Gu (pair sums) and bu (projections)."""
    P, _, _, TT = pairs
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


def _grams_t(X, ivar, pairs):
    """Grams of a block of rows, batch last: G (q, q, rows) and b (q, rows).

    Accumulates in float64: ``G_i = T diag(ivar_i) T^T``, ``b_i = T (ivar_i X_i)``.
    The pixel products ``ivar * X`` are formed a few rows at a time so that
    they stay in cache instead of making a full-size temporary; the matrix
    products of a few rows are too small for BLAS to thread, so groups of
    rows go to a few Python threads instead (numpy releases the GIL).
    """
    P, ku, _, TT = pairs
    rows, d = ivar.shape
    q = TT.shape[1]
    Gu = np.empty((rows, P.shape[1]))
    bu = np.empty((rows, q))
    sub = _tiles(d, P.shape[1])[0]
    group = sub * _SUBS_PER_TASK
    n_tasks = -(-rows // group)
    workers = min(_n_workers(), n_tasks)
    if workers == 1:
        _grams_rows(X, ivar, pairs, Gu, bu, 0, rows)
    else:
        with ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(_grams_rows, X, ivar, pairs, Gu, bu, a, min(rows, a + group))
                    for a in range(0, rows, group)]
            for job in jobs:
                job.result()
    return _gram_unpack(Gu[:, :ku.size].T, q, np, axis=0), np.ascontiguousarray(bu.T)


class UncheckedInputError(ValueError):
    """Raised by ``weighted_nnls(..., checked=False)`` when the data fail its checks."""


def _kernel_ok(X, ivar, q):
    return (q <= _kernels.MAX_Q
            and isinstance(X, np.ndarray) and isinstance(ivar, np.ndarray)
            and X.dtype == ivar.dtype and X.dtype in (np.float32, np.float64)
            and X.flags.c_contiguous and ivar.flags.c_contiguous
            and _kernels.worthwhile(X.size))


def _grams(X, ivar, T, pairs):
    """``_grams_t``, by the compiled kernel when it applies (validated data: a failed
    check can only be an overflow, which the BLAS path then reproduces)."""
    q = T.shape[0]
    if _kernel_ok(X, ivar, q):
        G, b, ok = _kernels.spectrum_grams(X, ivar, T)
        if ok:
            return _gram_unpack(G.T, q, np, axis=0), np.ascontiguousarray(b.T)
    return _grams_t(X, ivar, pairs)


def _kernel_nnls(X, ivar, T, max_iter, grams=False):
    """Grams and NNLS of a block by the compiled kernel, which also checks the data.

    The kernel solves the well-conditioned problems (Lawson & Hanson on the
    unit-diagonal Gram, same KKT test as here); those with a pivot below
    ``_REFINE_BELOW`` or failing the test are solved by :func:`_nnls_chunk`
    with its refinement.  Returns x (q, m) in the scaled-template variables,
    NaN columns for the fragile problems the caller re-solves from the data,
    and, with ``grams``, the Grams (q, q, m) (else None); or None if the data
    fail the kernel's checks.
    """
    q = T.shape[0]
    G, b, ok, x, status = _kernels.spectrum_grams(
        X, ivar, T, solve=True, pivots=(_FRAGILE_PIVOT, _REFINE_BELOW),
        kkt=(_KKT_RTOL, _FREE_GRAD_FACTOR))
    if not ok:
        return None
    Gt = _gram_unpack(G.T, q, np, axis=0) if grams else None
    x = np.ascontiguousarray(x.T)
    x[:, status == _kernels.FRAGILE] = np.nan
    hard = np.flatnonzero(status == _kernels.HARD)
    if hard.size:
        Gh = _gram_unpack(np.take(G, hard, axis=0).T, q, np, axis=0)
        xh, pivot = _nnls_chunk(Gh, np.ascontiguousarray(b[hard].T),
                                None, max_iter, symmetrize=False)
        xh[:, pivot < _FRAGILE_PIVOT] = np.nan
        x[:, hard] = xh
    return x, Gt


def _data_nnls(x, ivar, T):
    """One spectrum by :func:`scipy.optimize.nnls` on its weighted pixels."""
    w = np.sqrt(np.asarray(ivar, dtype=np.float64))
    obs = w > 0
    if not obs.any():
        return np.zeros(T.shape[0])
    A = (T[:, obs] * w[obs]).T
    try:
        c, _ = _scipy_nnls(A, np.asarray(x[obs], dtype=np.float64) * w[obs],
                           maxiter=50 * max(T.shape[0], 3))
    except RuntimeError:  # pragma: no cover - scipy's own iteration limit
        G = A.T @ A
        c = nnls_gram(G, A.T @ (np.asarray(x[obs], dtype=np.float64) * w[obs]))
    return c


def _check_templates(X, ivar, templates):
    T = np.asarray(templates)
    if T.dtype.kind not in "biuf":
        raise TypeError(f"templates must be a real numeric array; got dtype {T.dtype}")
    if T.ndim != 2 or T.shape[1] != X.shape[1]:
        raise ValueError(f"templates must have shape (n_components, {X.shape[1]}); got {T.shape}")
    if T.shape[0] == 0:
        raise ValueError("templates must have at least one component")
    if not np.all(np.isfinite(T)):
        raise ValueError("templates contain NaN or inf")
    if ivar.shape != X.shape:
        raise ValueError(f"ivar must have the shape of X {X.shape}; got {ivar.shape}")
    return T.astype(np.float64, copy=False)


def _block_rows(block_size, n, d, q):
    if block_size is None:
        return max(1, min(n, _DEFAULT_BLOCK_ELEMENTS // max(1, q * q + q)))
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    return int(block_size)


def _to_host(*arrays):
    from ..backends import get_namespace, to_numpy

    xp = get_namespace(*arrays)
    return xp, [to_numpy(a) for a in arrays]


def spectrum_grams(X, ivar, templates, *, block_size=None):
    """Per-spectrum weighted Gram matrices and projections.

    Parameters
    ----------
    X, ivar : ndarray of shape (n_spectra, n_pixels)
        Validated flux and inverse variance (finite, ``ivar >= 0``).
    templates : ndarray of shape (n_components, n_pixels)
    block_size : int, optional
        Spectra per block of work (memory bound only; the result is the same).

    Returns
    -------
    G : ndarray of shape (n_spectra, n_components, n_components)
        ``G_i = T diag(ivar_i) T^T`` (float64): the Fisher matrix of the
        coefficients of spectrum i.
    b : ndarray of shape (n_spectra, n_components)
        ``b_i = T (ivar_i * X_i)``, so that ``chi^2_i(c) = c^T G_i c - 2 b_i^T c
        + sum_j ivar_ij X_ij^2``.
    """
    _, (X, ivar, templates) = _to_host(X, ivar, templates)
    T = _check_templates(X, ivar, templates)
    n, d = X.shape
    q = T.shape[0]
    rows = _block_rows(block_size, n, d, q)
    pairs = _pair_products(T)
    G = np.empty((n, q, q))
    b = np.empty((n, q))
    for start in range(0, n, rows):
        sl = slice(start, min(n, start + rows))
        Gt, bt = _grams(X[sl], ivar[sl], T, pairs)
        G[sl] = Gt.transpose(2, 0, 1)
        b[sl] = bt.T
    return G, b


def weighted_nnls(X, ivar, templates, *, block_size=None, x0=None, return_covariance=False,
                  free_only=False, checked=True, dtype=None):
    """Exact weighted NNLS coefficients of every spectrum.

    For each spectrum i, ``argmin_{c >= 0} sum_j ivar_ij (X_ij - c @ T[:, j])^2``,
    computed from the per-spectrum Grams (float64) with :func:`nnls_gram`,
    one block of spectra at a time so that memory stays bounded.  The Grams
    are formed with small single-threaded matrix products spread over up to
    4 Python threads.  Spectra whose templates are nearly dependent on their
    observed pixels are solved from the data with :func:`scipy.optimize.nnls`
    instead (see the module notes), so the result is exact for any templates.

    Parameters
    ----------
    X, ivar : ndarray of shape (n_spectra, n_pixels)
        Validated flux and inverse variance (finite, ``ivar >= 0``).
    templates : ndarray of shape (n_components, n_pixels)
    block_size : int, optional
        Spectra per block; default about 2e6 / (q^2 + q) (e.g. ~70 000 for
        q = 5), which bounds the working memory to ~100 MB whatever n_spectra.
    x0 : ndarray of shape (n_spectra, n_components), optional
        Warm start for the pivoting (e.g. the previous coefficients).
    return_covariance : bool, default False
        Also return :func:`nnls_covariance` of each spectrum's coefficients.
    free_only : bool, default False
        Passed to :func:`nnls_covariance`.
    checked : bool, default True
        Whether X and ivar were validated.  With ``checked=False`` the
        compiled Gram kernel checks them as it reads them (one pass over the
        data instead of two) and :class:`UncheckedInputError` is raised if
        they fail, or if they are not arrays it can check; the caller then
        validates them properly.
    dtype : numpy dtype, optional
        Of the coefficients; default the (floating) dtype of ``X``.

    Returns
    -------
    coefficients : ndarray of shape (n_spectra, n_components)
        A spectrum with no weight gets zeros.
    covariance : ndarray of shape (n_spectra, n_components, n_components)
        Only with ``return_covariance=True``.
    """
    xp, (X, ivar, templates, *rest) = _to_host(
        X, ivar, templates, *(() if x0 is None else (x0,)))
    x0 = rest[0] if rest else None
    T = _check_templates(X, ivar, templates)
    n, d = X.shape
    q = T.shape[0]
    if x0 is not None and x0.shape != (n, q):
        raise ValueError(f"x0 must have shape {(n, q)}; got {x0.shape}")
    rows = _block_rows(block_size, n, d, q)
    # Templates scaled to a maximum of 1 so that their Gram products neither
    # underflow nor overflow (the answer is scaled back below).
    t_scale = np.max(np.abs(T), axis=1)
    t_scale[t_scale == 0] = 1.0
    T = T / t_scale[:, None]
    compiled = _kernel_ok(X, ivar, q)
    if not compiled and not checked:
        raise UncheckedInputError("these arrays cannot be checked on the fly")
    pairs = None
    max_iter = _default_max_iter(q)
    if dtype is None:
        dtype = X.dtype if X.dtype.kind == "f" else np.float64
    coef = np.empty((n, q), dtype=dtype)
    cov = np.empty((n, q, q)) if return_covariance else None
    for start in range(0, n, rows):
        sl = slice(start, min(n, start + rows))
        solved = (_kernel_nnls(X[sl], ivar[sl], T, max_iter, grams=return_covariance)
                  if compiled else None)
        if solved is None and not checked:
            raise UncheckedInputError("X or ivar failed the checks (negative or non-finite "
                                      "weights, or non-finite flux where ivar > 0)")
        if solved is not None:
            x, Gt = solved
            fragile = np.flatnonzero(np.isnan(x[0]))
        else:
            pairs = _pair_products(T) if pairs is None else pairs
            Gt, bt = _grams_t(X[sl], ivar[sl], pairs)
            F0 = None if x0 is None else np.ascontiguousarray(np.asarray(x0[sl]).T > 0)
            x, min_pivot = _nnls_chunk(Gt, bt, F0, max_iter, symmetrize=False)
            fragile = np.flatnonzero(min_pivot < _FRAGILE_PIVOT)
        if fragile.size:
            # Templates (nearly) dependent on this spectrum's observed pixels:
            # the Gram (normal equations) may have lost the digits that decide
            # the answer, so solve these few from the weighted data by QR.
            logger.debug("weighted_nnls: %d spectra with near-singular Grams solved "
                         "with scipy.optimize.nnls on the weighted data", fragile.size)
            for i in fragile:
                x[:, i] = _data_nnls(X[start + i], ivar[start + i], T)
        coef[sl] = x.T / t_scale
        if return_covariance:
            cov_t = _covariance_t(Gt, x > 0 if free_only else None)
            cov[sl] = cov_t.transpose(2, 0, 1) / (t_scale[:, None] * t_scale[None, :])
    if xp is not np:
        from ..backends import asarray

        coef = asarray(coef, xp)
        cov = None if cov is None else asarray(cov, xp)
    return (coef, cov) if return_covariance else coef


# --------------------------------------------------------------------------
# Covariance
# --------------------------------------------------------------------------

def _covariance_t(G, free):
    """Batched (pseudo-)inverse of G (q, q, m), restricted to ``free`` if given."""
    q, _, m = G.shape
    live = G[np.arange(q), np.arange(q)] > 0
    if free is not None:
        live = live & free
    Gs, _, s, _ = _equilibrate(G, np.zeros((q, m)))
    M = np.where(live[:, None, :] & live[None, :, :], Gs, 0.0)
    diag = np.arange(q)
    M[diag, diag] = 1.0
    LU = _factor(M.copy())
    # A pivot this small means G'_FF is numerically singular: use the
    # eigendecomposition there instead of the (jitter-free) elimination.
    singular = np.any(LU[diag, diag] < 1e3 * q * np.finfo(float).eps, axis=0)
    inv = np.empty_like(M)
    ok = ~singular
    if ok.any():
        LUo = LU[:, :, ok]
        for k in range(q):
            e = np.zeros((q, LUo.shape[2]))
            e[k] = 1.0
            inv[:, k, ok] = _lu_solve(LUo, e)
    if singular.any():
        Ms = M[:, :, singular].transpose(2, 0, 1)
        w, vec = np.linalg.eigh(Ms)
        cut = q * np.finfo(float).eps * np.max(w, axis=1, keepdims=True)
        big = w > cut
        winv = np.divide(1.0, w, where=big, out=np.zeros_like(w))
        inv[:, :, singular] = np.einsum("mik,mk,mjk->ijm", vec, winv, vec)
    inv = np.where(live[:, None, :] & live[None, :, :], inv, 0.0)
    inv = 0.5 * (inv + inv.transpose(1, 0, 2))
    return inv * (s[:, None, :] * s[None, :, :])


def nnls_covariance(G, x, *, free_only=False):
    r"""Covariance of NNLS coefficients from the weighted Fisher matrix.

    For ``chi^2 = sum_j ivar_j (X_j - c T_j)^2`` the Fisher matrix of the
    coefficients is ``F = T diag(ivar) T^T = G`` (so ``chi^2 - chi^2_min``
    rises by 1 one standard deviation away), and the covariance is ``F^-1``.

    Parameters
    ----------
    G : array-like of shape (n_problems, q, q)
        Per-spectrum Gram (Fisher) matrices, e.g. from :func:`spectrum_grams`.
    x : array-like of shape (n_problems, q)
        The NNLS solutions; only their support (``x > 0``) is used, and only
        with ``free_only=True``.
    free_only : bool, default False
        How coefficients at the zero bound are treated.

        * ``False`` (default): the full inverse ``G^-1`` -- the uncertainty each
          coefficient would have without the bound.  This is the covariance of
          the unconstrained estimate, honest for coefficients well away from
          0, and it keeps a finite, non-zero sigma for a coefficient that the
          data put at 0 (an upper limit can be read from it).
        * ``True``: the inverse of G restricted to the free set ``x > 0``, with
          zero rows and columns for bound coefficients -- the covariance of the
          free coefficients conditional on the active set (the bound ones are
          treated as exactly known).

    Returns
    -------
    ndarray of shape (n_problems, q, q)
        Symmetric, finite (never NaN).  For a singular ``G`` (restricted to the
        free set if ``free_only``) it is a pseudo-inverse computed in the
        equilibrated basis: ``S (S G S)^+ S`` with ``S = diag(G_kk^-1/2)``,
        which equals ``G^-1`` whenever G is invertible and, unlike the
        Moore-Penrose inverse of G, does not depend on the units of each
        template.  Its variances along directions the data do not constrain
        (duplicate templates, a template zero on all observed pixels:
        ``G_kk = 0`` gives variance 0 in that row and column) are *not*
        meaningful -- check for them through the diagonal of G.

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf.solvers.nnls import nnls_covariance
    >>> G = np.array([[[4.0, 0.0], [0.0, 0.25]]])
    >>> nnls_covariance(G, np.array([[1.0, 0.0]]))
    array([[[0.25, 0.  ],
            [0.  , 4.  ]]])
    >>> nnls_covariance(G, np.array([[1.0, 0.0]]), free_only=True)
    array([[[0.25, 0.  ],
            [0.  , 0.  ]]])
    """
    G, x, _, single = _check_gram_problems(G, x, None)
    m, q, _ = G.shape
    out = np.empty((m, q, q))
    step = max(1, _CHUNK_ELEMENTS // (q * q))
    for start in range(0, m, step):
        sl = slice(start, min(m, start + step))
        Gc = np.ascontiguousarray(np.transpose(G[sl], (1, 2, 0)), dtype=np.float64)
        free = np.ascontiguousarray(x[sl].T > 0) if free_only else None
        out[sl] = _covariance_t(Gc, free).transpose(2, 0, 1)
    return out[0] if single else out
