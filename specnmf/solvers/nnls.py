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
  Grams packed as their upper triangles are solved by the compiled
  acceleration (Lawson & Hanson on the same unit-diagonal problems, with the
  same KKT test) where numba is available; the problems it hands back go to
  the pivoting.
* :func:`~specnmf.solvers.coefficients.weighted_nnls` solves the problems of weighted spectra from the data
  (the coefficient solver of :mod:`specnmf.solvers.coefficients`, which
  ``SpectralNMF.transform`` uses).
* :func:`~specnmf.solvers.coefficients.spectrum_grams` returns the Grams themselves
  (:func:`specnmf.solvers.gram.row_grams`), and :func:`nnls_covariance` the
  covariance of the coefficients from them.

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
eigen-direction with eigenvalue ``lambda``.

The KKT test (one definition, :func:`_kkt`; the compiled acceleration's
``_kernels._kkt_ok`` evaluates the same operations in the same order and is
tested to give the same verdict): with ``g = G' x - b'`` summed as
``g_k = -b'_k + G'_k0 x_0 + G'_k1 x_1 + ...`` (in that order) and
``tol = 1e-11 (max|b'| + q max|x|)``, a solution is accepted when
``x_F >= -tol`` on the free set, ``g_B >= -tol`` on the bound set (components
with ``G_kk > 0``), and ``|g_F| <= 1e3 tol`` on the free set;
complementarity holds by construction (``x_B = 0``) and the tiny negative
``x_F`` allowed by the tolerance are set to 0.

The accuracy is that of the normal equations.  For templates that are nearly
dependent on the observed pixels (two templates equal to a relative 1e-6, say:
``cond(G') ~ 1e12``), the Gram no longer carries the digits that decide
whether the pair should share the fit, and :func:`nnls_gram` can miss a
chi^2 improvement of order 1e-5 relative that a QR-based solver on the data
finds.  ``return_fragile=True`` reports these problems (a pivot of the
unit-diagonal Gram below 1e-9); :func:`~specnmf.solvers.coefficients.weighted_nnls`, which has the data,
solves them with :func:`scipy.optimize.nnls` on the weighted pixels, so its
coefficients are exact for any templates (at the speed of scipy for such
spectra).
Problems are only well posed when ``b`` lies in the range of ``G`` (always true
when they come from least squares); otherwise the objective is unbounded below
along a null direction of ``G``, and such
components are returned as 0.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import _kernels
from . import gram

__all__ = ["nnls_gram", "nnls_covariance"]

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
# A problem whose Gram, scaled to a unit diagonal, has a pivot below this is
# "fragile" (two templates that differ by a relative ~3e-5 on the observed
# pixels, or closer): the normal equations then carry too few correct digits
# for a chi^2 exact to 1e-8, and a caller with the data re-solves it by QR.
_FRAGILE_PIVOT = 1e-9
# The arguments that make the compiled acceleration (``_kernels._nnls_rows``,
# ``_kernels.checked_row_grams(solve=True)``) solve this module's problems: it
# hands back those with a pivot below the refinement threshold, which it lacks.
KERNEL_PIVOTS = (_FRAGILE_PIVOT, _REFINE_BELOW)
KERNEL_KKT = (_KKT_RTOL, _FREE_GRAD_FACTOR)


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
    """The KKT test of the module notes: violation masks of the current iterate.

    ``Gs`` (q, q, m) and ``bs`` (q, m) are the unit-diagonal problems, ``F``
    the free set, ``live`` the components with ``G_kk > 0`` and ``bmax`` of
    shape (m,) is ``max|b'|``.  Returns ``(V, free_ok)``: V of shape (q, m)
    marks infeasible entries (free and negative, or bound with a negative
    gradient); free_ok of shape (m,) is False where the free-set gradient is
    more than a rounding residual.  A problem is accepted where V is empty and
    free_ok holds.  The gradient is summed in the order of the compiled
    ``_kernels._kkt_ok``, so that the two give the same verdict bit for bit.
    """
    q = Gs.shape[0]
    g = -bs
    for e in range(q):
        g += Gs[:, e, :] * x[e]
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
            Gx = gram.gram_matvec(Gw.transpose(2, 0, 1), xw.T, np).T
            xw += _lu_solve(LUw, np.where(Fw, bw - Gx, 0.0))
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
    digits that can decide the answer (see :func:`~specnmf.solvers.coefficients.weighted_nnls`).
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


def nnls_gram(G, b, *, x0=None, max_iter=None, packed=False, return_fragile=False):
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
    G : array-like of shape (n_problems, q, q), or (n_problems, q(q+1)/2) if ``packed``
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
    packed : bool, default False
        ``G`` holds the upper triangles, row by row (the order of
        ``numpy.triu_indices(q)``, :func:`specnmf._packing.pairs`).  Such
        problems (made by the million by :mod:`specnmf.redshift`) are solved
        by the compiled acceleration where numba is available (q <= 10): the
        same unit-diagonal problems and KKT test, by Lawson & Hanson; those
        with a pivot below 1e-3 or failing the test go to the pivoting.
    return_fragile : bool, default False
        Also return which problems' unit-diagonal Gram has a pivot below
        1e-9: the normal equations then carry too few digits for an exact
        chi^2, and a caller with the data should re-solve them from it (as
        :func:`~specnmf.solvers.coefficients.weighted_nnls` does).

    Returns
    -------
    x : ndarray of shape (n_problems, q)
        The minimisers, float64, ``>= 0`` (shape (q,) for a single problem).
    fragile : ndarray of bool, shape (n_problems,)
        Only with ``return_fragile``.

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf.solvers.nnls import nnls_gram
    >>> G = np.array([[[2.0, 1.0], [1.0, 2.0]]])
    >>> nnls_gram(G, np.array([[3.0, -1.0]]))  # unconstrained optimum has x_1 < 0
    array([[1.5, 0. ]])
    """
    if packed:
        x, fragile = _nnls_packed(G, b, x0, max_iter)
        return (x, fragile) if return_fragile else x
    G, b, x0, single = _check_gram_problems(G, b, x0)
    max_iter = _check_max_iter(max_iter, G.shape[1])
    m, q, _ = G.shape
    out = np.zeros((m, q))
    fragile = np.zeros(m, dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // (q * q))
    for start in range(0, m, step):
        sl = slice(start, min(m, start + step))
        Gc = np.ascontiguousarray(np.transpose(G[sl], (1, 2, 0)), dtype=np.float64)
        bc = np.ascontiguousarray(b[sl].T, dtype=np.float64)
        F0 = None if x0 is None else np.ascontiguousarray(x0[sl].T > 0)
        x, pivot = _nnls_chunk(Gc, bc, F0, max_iter)
        out[sl] = x.T
        fragile[sl] = pivot < _FRAGILE_PIVOT
    if single:
        out, fragile = out[0], fragile[0]
    return (out, fragile) if return_fragile else out


def _check_max_iter(max_iter, q):
    if max_iter is None:
        return _default_max_iter(q)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer; got {max_iter!r}")
    return int(max_iter)


def _nnls_packed(G, b, x0, max_iter):
    """``nnls_gram(G, b, packed=True)``: the compiled acceleration, then :func:`hand_off`."""
    G = np.ascontiguousarray(G, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    m, q = b.shape
    if G.shape != (m, q * (q + 1) // 2):
        raise ValueError(f"G must have shape ({m}, {q * (q + 1) // 2}) for b of shape "
                         f"{b.shape}; got {G.shape}")
    max_iter = _check_max_iter(max_iter, q)
    x = np.zeros((m, q))
    status = np.full(m, _kernels.HARD, dtype=np.int8)
    if m and _kernels.available() and q <= _kernels.MAX_Q:
        status[:] = _kernels.SOLVED
        _kernels.nnls_rows(G, b, x, status, *KERNEL_PIVOTS, *KERNEL_KKT)
    return x, hand_off(G, b, x, status, max_iter, x0)


def hand_off(G, b, x, status, max_iter, x0=None):
    """Complete the compiled acceleration's work in place; returns the fragile problems.

    ``G`` packed (m, q(q+1)/2), ``b`` (m, q) and the kernel's solutions ``x``
    (m, q) and ``status`` (m,): the problems it did not solve (HARD: small
    pivot or failed KKT test; FRAGILE) are solved by the pivoting, warm
    started from ``x0`` (m, q) if given (with every status HARD, this is the
    pivoting on packed problems).  Returns a boolean mask (m,) of the
    fragile problems (pivot below ``_FRAGILE_PIVOT``).
    """
    q = b.shape[1]
    fragile = status == _kernels.FRAGILE
    rest = np.flatnonzero(status != _kernels.SOLVED)
    step = max(1, _CHUNK_ELEMENTS // (q * q))
    for start in range(0, rest.size, step):
        idx = rest[start:start + step]
        Gt = gram.unpack(np.take(G, idx, axis=0).T, q, np, axis=0)
        F0 = None if x0 is None else np.ascontiguousarray(np.asarray(x0)[idx].T > 0)
        xs, pivot = _nnls_chunk(Gt, np.ascontiguousarray(b[idx].T), F0, max_iter,
                                symmetrize=False)
        x[idx] = xs.T
        fragile[idx] |= pivot < _FRAGILE_PIVOT
    return fragile


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
        Per-spectrum Gram (Fisher) matrices, e.g. from :func:`~specnmf.solvers.coefficients.spectrum_grams`.
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
