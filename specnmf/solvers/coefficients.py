r"""The coefficient solver: the exact minimiser over ``C >= 0`` with the templates fixed.

For fixed templates T the objective ``chi^2(C, T) + P(C, T)`` (with the
penalties P that act on coefficients) separates into one small quadratic per
spectrum,

.. math:: c_i^T (G_i + \mathrm{diag}\,d_i) c_i - 2 (a_i + l_i)^T c_i,
          \qquad G_i = T \mathrm{diag}(\mathrm{ivar}_i) T^T,\ a_i = T (\mathrm{ivar}_i X_i),

where ``(d_i, l_i)`` are the penalties' per-entry quadratic models.  Its
exact minimiser is a batched NNLS (:mod:`specnmf.solvers.nnls`).  A penalty
that couples neighbouring spectra (spatial) is solved colour by colour
(red-black Gauss-Seidel: the spectra of one colour do not interact), sweep
after sweep until the coefficients stop changing.

Two levels, used by ``SpectralNMF.transform``, by the coefficient half-step
of ANLS (and APG, which takes one proximal step per colour instead of the
exact solve) and, through :func:`specnmf.solvers.nnls.nnls_gram`, by the
redshift scan:

* :func:`from_data` -- from flux, weights and templates; builds the Grams
  with :func:`specnmf.solvers.gram.row_grams`.  Without penalties the Grams
  are summed in float64 with the templates scaled to a unit maximum, by the
  compiled kernel where it applies (which also solves the problems while
  their Grams are in cache, and checks the data as it reads them), and the
  spectra whose Grams are too ill-conditioned for the normal equations are
  re-solved from their weighted pixels, so the result is exact for any
  templates.
* :func:`from_grams` -- from the Grams and right-hand sides, with penalties.

The settings live here (the numerics of the NNLS itself -- KKT tolerances,
pivot thresholds, default pivoting steps -- are those of
:mod:`specnmf.solvers.nnls`).
"""

from __future__ import annotations

import logging

import numpy as np

from .. import _kernels
from . import gram
from .nnls import (
    KERNEL_KKT,
    KERNEL_PIVOTS,
    _default_max_iter,
    _scipy_nnls,
    hand_off,
    nnls_covariance,
    nnls_gram,
)

__all__ = ["weighted_nnls", "spectrum_grams", "UncheckedInputError", "from_data", "from_grams",
           "from_blocks", "from_pixels", "unchecked", "outputs", "exact", "coefficient_colours",
           "coefficient_quadratic", "colour_masks"]

logger = logging.getLogger("specnmf")

#: red-black sweeps of a coupling (spatial) penalty: at most MAX_SWEEPS, until
#: no coefficient changes by more than SWEEP_RTOL of the largest
MAX_SWEEPS = 200
SWEEP_RTOL = 1e-10
#: elements of the Grams of one block of spectra (bounds the working memory:
#: ~70 000 spectra for q = 5, ~100 MB whatever their number)
BLOCK_ELEMENTS = 1 << 21


class UncheckedInputError(ValueError):
    """Raised by ``from_data(..., checked=False)`` when the data fail its checks."""


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

def to_host(*arrays):
    """The arrays' namespace and the arrays as numpy arrays."""
    from ..backends import get_namespace, to_numpy

    xp = get_namespace(*arrays)
    return xp, [to_numpy(a) for a in arrays]


def check_templates(X, ivar, templates):
    """Templates as float64 after checking them against the spectra."""
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


def block_rows(block_size, n, q):
    """Spectra per block: ``block_size``, checked, or the default of :data:`BLOCK_ELEMENTS`."""
    if block_size is None:
        return max(1, min(n, BLOCK_ELEMENTS // max(1, q * q + q)))
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    return int(block_size)


# --------------------------------------------------------------------------
# Penalties as per-entry quadratic models
# --------------------------------------------------------------------------

def colour_masks(colours, n, xp, like):
    """Boolean masks (namespace ``xp``) from a penalty's list of index arrays."""
    masks = []
    for idx in colours:
        m = np.zeros(n, dtype=bool)
        m[np.asarray(idx)] = True
        masks.append(m if xp is np else xp.asarray(m, device=getattr(like, "device", None)))
    return masks


def coefficient_colours(penalties, n_rows, xp, like):
    """Masks of the rows solved together (red-black), or ``[None]``: all at once."""
    for p in penalties:
        if p.acts_on_coefficients:
            colours = p.coefficients_colors(n_rows)
            if len(colours) > 1:
                return colour_masks(colours, n_rows, xp, like)
    return [None]


def coefficient_quadratic(penalties, C, T, xp, *, rows, C_all):
    """Sum of the coefficient penalties' quadratic models ``(diag, lin)``, None if there are none."""
    diag = lin = None
    for p in penalties:
        if p.acts_on_coefficients:
            d, l_ = p.coefficients_quadratic(C, T, xp, rows=rows, C_all=C_all)
            diag = d if diag is None else diag + d
            lin = l_ if lin is None else lin + l_
    return diag, lin


# --------------------------------------------------------------------------
# From Grams
# --------------------------------------------------------------------------

def exact(G, b, x0, xp):
    """:func:`~specnmf.solvers.nnls.nnls_gram` of full Grams (m, q, q) in the namespace ``xp``.

    The batched pivoting runs on the host: only the small (m, q, q) systems
    travel, the data and their Grams stay on the device.
    """
    from ..backends import asarray, is_numpy_namespace, to_numpy

    if is_numpy_namespace(xp):
        return nnls_gram(G, b, x0=x0)
    x = nnls_gram(to_numpy(G), to_numpy(b), x0=to_numpy(x0))
    return asarray(x, xp, dtype=x.dtype, device=getattr(x0, "device", None))


def from_grams(G, a, T, C, *, penalties=(), xp=np, rows=slice(None), C_all=None,
               sweeps=MAX_SWEEPS, solve=None):
    """Coefficients minimising chi^2 + coefficient penalties, from the Grams.

    Parameters
    ----------
    G : array of shape (m, q, q)
        Full per-spectrum Grams ``T diag(ivar_i) T^T``.
    a : array of shape (m, q)
        Right-hand sides ``T (ivar_i X_i)``.
    T : array of shape (q, d)
        The templates (the penalties' models read them).
    C : array of shape (m, q)
        Current coefficients: the warm start, and the neighbours a coupling
        penalty reads.
    penalties : sequence of penalties
        Those that do not act on coefficients are ignored.
    xp : array namespace
    rows, C_all : slice and array, optional
        Which spectra of ``C_all`` (all coefficients before this update)
        these are; only a coupling penalty reads them, and it needs every
        spectrum in one call (``C_all`` then defaults to the current ``C``).
    sweeps : int, default MAX_SWEEPS
        Red-black sweeps at most, while a coupling penalty still changes the
        coefficients by more than ``SWEEP_RTOL`` (ANLS makes one per iteration).
    solve : callable, optional
        ``solve(G, b, C) -> C_new``, the per-colour solver; default the
        exact NNLS (:func:`exact`).  APG passes its proximal step.

    Returns
    -------
    C : array of shape (m, q)
    Gq : array of shape (m, q, q)
        The Grams of the last colour plus the penalties' curvature there (the
        Fisher matrix of the penalised problem, for the covariance).
    """
    if solve is None:
        def solve(Gq, b, C0):
            return exact(Gq, b, C0, xp)
    coupled = any(p.needs_all_coefficients for p in penalties)
    for sweep in range(sweeps):
        before = C
        Gq = G
        for mask in coefficient_colours(penalties, C.shape[0], xp, C):
            diag, lin = coefficient_quadratic(
                penalties, C, T, xp, rows=rows,
                C_all=C if mask is not None or C_all is None else C_all)
            Gq = G if diag is None else gram.add_diagonal(G, diag, xp)
            b = a if lin is None else a + lin
            F = solve(Gq, b, C)
            C = F if mask is None else xp.where(mask[:, None], F, C)
        if not coupled or sweep + 1 == sweeps or C.size == 0:
            break
        change = float(xp.max(xp.abs(C - before)))
        if change <= SWEEP_RTOL * max(1e-300, float(xp.max(xp.abs(C)))):
            break
    return C, Gq


# --------------------------------------------------------------------------
# From data
# --------------------------------------------------------------------------

def from_data(X, ivar, templates, *, penalties=(), block_size=None, x0=None,
              return_covariance=False, free_only=False, checked=True, dtype=None):
    """Coefficients minimising chi^2 + coefficient penalties, from the data (numpy arrays).

    The parameters are those of :func:`weighted_nnls`
    (which is this function without penalties), plus ``penalties``: those
    acting on coefficients enter the problem; with any, the spectra are
    solved together (a coupling penalty needs them all in one call) from the
    Grams of :func:`~specnmf.solvers.gram.row_grams` in float64, the
    covariance is that of the penalised Fisher matrix, and ``checked=False``
    raises :class:`UncheckedInputError`.

    Returns
    -------
    C : ndarray of shape (n_spectra, n_components)
        A spectrum with no weight gets zeros.
    cov : ndarray of shape (n_spectra, n_components, n_components) or None
        None unless ``return_covariance``.
    """
    T = check_templates(X, ivar, templates)
    n, q = X.shape[0], T.shape[0]
    if x0 is not None and x0.shape != (n, q):
        raise ValueError(f"x0 must have shape {(n, q)}; got {x0.shape}")
    if dtype is None:
        dtype = X.dtype if X.dtype.kind == "f" else np.float64
    penalties = [p for p in penalties if p.acts_on_coefficients]
    if penalties:
        if not checked:
            raise UncheckedInputError("penalised problems are solved from validated data")
        Gp, a = gram.row_grams(ivar, T, np, X=X)
        G = gram.unpack(Gp, q, np)
        C, Gq = from_grams(G, a, T, nnls_gram(G, a, x0=x0), penalties=penalties)
        cov = nnls_covariance(Gq, C, free_only=free_only) if return_covariance else None
        return C.astype(dtype, copy=False), cov
    return _unpenalised(X, ivar, T, block_rows(block_size, n, q), x0, return_covariance,
                        free_only, checked, dtype)


def _unpenalised(X, ivar, T, rows, x0, return_covariance, free_only, checked, dtype):
    """:func:`from_data` without penalties, one block of ``rows`` spectra at a time."""
    n, q = X.shape[0], T.shape[0]
    # Templates scaled to a maximum of 1 so that their Gram products neither
    # underflow nor overflow (the answer is scaled back below).
    t_scale = np.max(np.abs(T), axis=1)
    t_scale[t_scale == 0] = 1.0
    T = T / t_scale[:, None]
    compiled = gram.kernel_applies(X, ivar, q)
    if not compiled and not checked:
        raise UncheckedInputError("these arrays cannot be checked on the fly")
    max_iter = _default_max_iter(q)
    coef = np.empty((n, q), dtype=dtype)
    cov = np.empty((n, q, q)) if return_covariance else None
    for start in range(0, n, rows):
        sl = slice(start, min(n, start + rows))
        ok = False
        if compiled:
            # the compiled acceleration of row_grams and nnls_gram together:
            # each problem is solved while its Gram is in cache
            G, b, ok, x, status = _kernels.checked_row_grams(
                X[sl], ivar[sl], T, solve=True, pivots=KERNEL_PIVOTS, kkt=KERNEL_KKT)
            if not ok and not checked:
                raise UncheckedInputError("X or ivar failed the checks (negative or non-finite "
                                          "weights, or non-finite flux where ivar > 0)")
        if not ok:
            G, b = gram.row_grams(ivar[sl], T, np, X=X[sl], float64=True)
            x = np.zeros(b.shape)
            status = np.full(b.shape[0], _kernels.HARD, dtype=np.int8)
        fragile = np.flatnonzero(hand_off(G, b, x, status, max_iter,
                                          None if ok or x0 is None else x0[sl]))
        if fragile.size:
            # Templates (nearly) dependent on this spectrum's observed pixels:
            # the Gram (normal equations) may have lost the digits that decide
            # the answer, so solve these few from the weighted data by QR.
            logger.debug("weighted_nnls: %d spectra with near-singular Grams solved "
                         "with scipy.optimize.nnls on the weighted data", fragile.size)
            for i in fragile:
                x[i] = from_pixels(X[start + i], ivar[start + i], T)
        coef[sl] = x / t_scale
        if return_covariance:
            cb = nnls_covariance(gram.unpack(G, q, np), x, free_only=free_only)
            cov[sl] = cb / (t_scale[:, None] * t_scale[None, :])
    return coef, cov


def from_pixels(x, ivar, T, *, nonnegative=True):
    """Coefficients of one spectrum solved on its weighted pixels, not from its Gram.

    For the problems whose Gram is too ill-conditioned to trust (nearly
    dependent templates on the observed pixels): :func:`scipy.optimize.nnls`
    (or least squares, ``nonnegative=False``) on ``sqrt(ivar) x`` with the
    templates scaled to unit weighted norm.

    Parameters
    ----------
    x, ivar : ndarray of shape (n_pixels,)
    T : ndarray of shape (n_components, n_pixels)
    nonnegative : bool, default=True

    Returns
    -------
    ndarray of shape (n_components,)
        Zeros for a spectrum without weight, and for templates without weight in it.
    """
    w = np.sqrt(np.asarray(ivar, dtype=np.float64))
    obs = w > 0
    if not obs.any():
        return np.zeros(T.shape[0])
    A = (T[:, obs] * w[obs]).T
    y = np.asarray(x[obs], dtype=np.float64) * w[obs]
    norm = np.linalg.norm(A, axis=0)
    scale = np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0)
    if not nonnegative:
        return np.linalg.lstsq(A * scale, y, rcond=None)[0] * scale
    try:
        c, _ = _scipy_nnls(A * scale, y, maxiter=50 * max(T.shape[0], 3))
    except RuntimeError:  # pragma: no cover - scipy's own iteration limit
        As = A * scale
        c = nnls_gram(As.T @ As, As.T @ y)
    return c * scale


def from_blocks(blocks, n, templates, *, penalties=(), return_covariance=False):
    """:func:`from_data` over an engine's ``(rows, X, ivar)`` blocks of ``n`` spectra.

    Returns float64 coefficients (n, q) and, with ``return_covariance``, their
    covariance (n, q, q), else None.
    """
    q = templates.shape[0]
    C = np.zeros((n, q))
    cov = np.zeros((n, q, q)) if return_covariance else None
    for rows, Xb, ib in blocks:
        C[rows], cb = from_data(Xb.astype(np.float64, copy=False),
                                ib.astype(np.float64, copy=False), templates,
                                penalties=penalties, return_covariance=return_covariance)
        if cov is not None:
            cov[rows] = cb
    return C, cov


def unchecked(X, ivar, templates, *, return_covariance=False):
    """:func:`from_data` of unvalidated plain arrays, checked by the compiled kernel as it reads them.

    Returns ``(C, cov)`` in float64, or None where the kernel cannot check
    these arrays or they fail its checks: the caller then validates them
    properly (which explains what is wrong) and calls :func:`from_data`.
    """
    if (not isinstance(X, np.ndarray) or not isinstance(ivar, np.ndarray) or X.ndim != 2
            or X.shape != ivar.shape or X.shape[0] == 0 or X.shape[1] != templates.shape[1]):
        return None
    try:
        return from_data(X, ivar, templates, return_covariance=return_covariance,
                         checked=False, dtype=np.float64)
    except UncheckedInputError:
        return None


def spectrum_grams(X, ivar, templates, *, block_size=None):
    """Per-spectrum weighted Gram matrices and projections.

    Parameters
    ----------
    X, ivar, templates
        As in :func:`weighted_nnls`.
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
    _, (X, ivar, templates) = to_host(X, ivar, templates)
    T = check_templates(X, ivar, templates)
    n, q = X.shape[0], T.shape[0]
    rows = block_rows(block_size, n, q)
    G = np.empty((n, q, q))
    b = np.empty((n, q))
    for start in range(0, n, rows):
        sl = slice(start, min(n, start + rows))
        Gp, b[sl] = gram.row_grams(ivar[sl], T, np, X=X[sl], float64=True)
        G[sl] = gram.unpack(Gp, q, np)
    return G, b


def weighted_nnls(X, ivar, templates, *, block_size=None, x0=None, return_covariance=False,
                  free_only=False, checked=True, dtype=None):
    """Exact weighted NNLS coefficients of every spectrum.

    For each spectrum i, ``argmin_{c >= 0} sum_j ivar_ij (X_ij - c @ T[:, j])^2``,
    computed from the per-spectrum Grams (float64) with
    :func:`~specnmf.solvers.nnls.nnls_gram`,
    one block of spectra at a time so that memory stays bounded.  The Grams
    are formed with small single-threaded matrix products spread over up to
    4 Python threads.  Spectra whose templates are nearly dependent on their
    observed pixels are solved from the data with :func:`scipy.optimize.nnls`
    instead (see the module notes), so the result is exact for any templates.
    This is :func:`from_data` without penalties.

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
        Also return :func:`~specnmf.solvers.nnls.nnls_covariance` of each spectrum's coefficients.
    free_only : bool, default False
        Passed to :func:`nnls_covariance`.
    checked : bool, default True
        Whether X and ivar were validated.  With ``checked=False`` the
        compiled Gram kernel checks them as it reads them (one pass over the
        data instead of two) and
        :class:`UncheckedInputError` is raised
        if they fail, or if they are not arrays it can check; the caller then
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
    from ..backends import asarray

    xp, (X, ivar, templates, *rest) = to_host(
        X, ivar, templates, *(() if x0 is None else (x0,)))
    coef, cov = from_data(X, ivar, templates, block_size=block_size,
                          x0=rest[0] if rest else None, return_covariance=return_covariance,
                          free_only=free_only, checked=checked, dtype=dtype)
    if xp is not np:
        coef = asarray(coef, xp)
        cov = None if cov is None else asarray(cov, xp)
    return (coef, cov) if return_covariance else coef


def outputs(C, cov, dtype, return_uncertainty, return_covariance):
    """What ``transform`` returns, in ``dtype``: the coefficients, then the 1-sigma
    errors (square roots of the covariance's diagonal) and the covariance if asked."""
    sigma = (np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))
             if return_uncertainty else None)
    out = tuple(a.astype(dtype, copy=False)
                for a in (C, sigma, cov if return_covariance else None) if a is not None)
    return out[0] if len(out) == 1 else out
