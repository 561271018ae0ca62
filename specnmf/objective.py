r"""The objective: weighted chi^2 of a non-negative factorisation.

Conventions used everywhere in specnmf
--------------------------------------
* ``X`` and ``ivar`` have shape ``(n_spectra, n_pixels)``: one spectrum per row.
* ``coefficients`` (C) have shape ``(n_spectra, n_components)`` and
  ``templates`` (T) have shape ``(n_components, n_pixels)``; the model is
  ``coefficients @ templates``.
* ``ivar`` is the inverse variance, ``ivar >= 0``; ``ivar == 0`` marks a
  missing pixel.  Flux may be negative (noise); only C and T are >= 0.
* Index letters: ``i`` spectrum, ``j`` pixel, ``k`` component.

The objective minimised by every solver is

.. math::

    \chi^2(C, T) = \sum_{ij} \mathrm{ivar}_{ij}\,
                   \bigl(X_{ij} - \textstyle\sum_k C_{ik} T_{kj}\bigr)^2
    \quad\text{subject to}\quad C \ge 0,\; T \ge 0,

plus, for regularised fits, the penalties of :mod:`specnmf.penalties`.

Translating Green & Bailey (2024)
---------------------------------
The paper stores spectra as *columns*: its ``X`` is ``(d, n)`` = ``X.T`` here,
its templates ``W`` (``d x q``) are ``templates.T`` and its coefficients ``H``
(``q x n``) are ``coefficients.T``; its weights ``V`` are ``ivar.T``.  So the
paper's eq. (18), the Nearly-NMF coefficient update, reads here

    C <- C * [(ivar*X) T^T]^+ / ((ivar*(C T)) T^T + [(ivar*X) T^T]^-)

and eq. (19), the template update,

    T <- T * [C^T (ivar*X)]^+ / (C^T (ivar*(C T)) + [C^T (ivar*X)]^-)

where ``[A]^+ = max(A, 0)`` and ``[A]^- = max(-A, 0)``.  Shift-NMF (eqs. 7-8)
replaces ``X`` by ``X + y`` and ``C T`` by ``C T + y`` for a scalar shift y.

Accumulation
------------
Every chi^2 of specnmf (the public functions below, the value each solver
reports per iteration, the compiled kernels' fused value) follows one rule,
for float32 and float64 alike: the terms ``ivar * r^2`` of a spectrum are
formed and summed in the working precision (numpy's pairwise summation; the
kernels use several vectorised partial sums), the spectra's sums in float64.
All terms are >= 0, so nothing cancels: a spectrum's sum carries ~1e-7
relative rounding in float32 (~1e-16 in float64), no more than the residual
``r`` itself, and the total over many spectra loses nothing further.  A
float64 accumulator inside each spectrum would halve the float32 vector width
of the kernels and slow the numpy path, for no accuracy the residual has.
The compiled kernels (:func:`specnmf._kernels.mu_pass`) accelerate
:func:`block_chi2`: they form the model with fused multiply-adds in another
order and sum in other partial sums, so they agree with it to a few units of
the working precision, relative (measured: <1e-15 in float64, <1e-8 in
float32; ``specnmf/tests/test_compute.py`` holds them to 50 units).

The value from the Grams (:func:`chi2_from_grams`) is the same quadratic
expanded, ``sum ivar x^2 - 2 c.a + c^T G c``: free where the Grams exist, and
used only in float64, where its cancellation costs ~1e-16 of ``sum ivar x^2``.
"""

from __future__ import annotations

import numpy as np

from ._packing import quad_form
from .backends import get_namespace

__all__ = ["chi2", "chi2_per_spectrum", "reduced_chi2"]

# Rows per block when summing residuals, so no full (n_spectra, n_pixels)
# temporary is made for large inputs.
_BLOCK_ELEMENTS = 1 << 22


def _rows_per_block(n_pixels: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_pixels))


def chi2_terms(resid, ivar):
    """The chi^2 term ``ivar * resid^2`` of every pixel, in the working precision."""
    return ivar * resid * resid


def spectrum_chi2(resid, ivar, xp):
    """chi^2 of each spectrum of a block from its residual ``X - C T``, of shape (rows,).

    The terms are summed in the working precision, the result is float64
    (see the module's accumulation rule).
    """
    return xp.astype(xp.sum(chi2_terms(resid, ivar), axis=1), xp.float64, copy=False)


def residual_chi2(resid, ivar, xp):
    """chi^2 of a block from its residual ``X - C T``, as a Python float (spectra summed in float64)."""
    return float(xp.sum(spectrum_chi2(resid, ivar, xp)))


def block_chi2(X, ivar, C, T, xp):
    """chi^2 of one block at (C, T), as a Python float; see :func:`residual_chi2`."""
    return residual_chi2(X - C @ T, ivar, xp)


def chi2_from_grams(vx2, a, Gp, C, xp):
    """chi^2 of a block from its Grams, as a Python float.

    ``sum_i vx2_i - 2 c_i . a_i + c_i^T G_i c_i`` with ``vx2`` the per-spectrum
    ``sum ivar*X^2``, ``a = (ivar*X) T^T`` and ``Gp`` the packed Grams
    (:func:`specnmf.solvers.gram.row_grams`): free once the Grams exist.  For
    float64 only: its cancellation costs ~1e-16 of ``sum ivar*X^2``, ~1e-7 in
    float32, where callers use :func:`block_chi2` instead.
    """
    return float(xp.sum(vx2) - 2 * xp.sum(C * a) + xp.sum(quad_form(Gp, C, xp)))


def problem_chi2_from_grams(vx2, a, Gc, c):
    """chi^2 of each of m problems from its Gram system, of shape (m,): ``vx2 - 2 c.a + c.(G c)``.

    ``Gc`` is ``G c`` (:func:`specnmf.solvers.gram.gram_matvec`); numpy arrays,
    float64 (the redshift scan's many (spectrum, redshift) problems).
    """
    return vx2 - 2 * np.einsum("mk,mk->m", c, a) + np.einsum("mk,mk->m", c, Gc)


def _chi2_rows(X, ivar, coefficients, templates, xp):
    """Per-spectrum chi^2 (float64) of validated arrays (finite X, ivar >= 0)."""
    n = X.shape[0]
    step = _rows_per_block(X.shape[1])
    out = []
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        out.append(spectrum_chi2(X[sl, ...] - coefficients[sl, ...] @ templates, ivar[sl, ...], xp))
    if len(out) == 1:
        return out[0]
    return xp.concat(out)


def _chi2(X, ivar, coefficients, templates, xp):
    """Total chi^2 of validated arrays, as a Python float."""
    return float(xp.sum(_chi2_rows(X, ivar, coefficients, templates, xp)))


def _prepare(X, coefficients, templates, ivar):
    """Light checks for the public functions, which accept raw user arrays."""
    from ._validation import check_spectra, check_factor

    X, ivar = check_spectra(X, ivar, dtype=None)
    n, d = X.shape
    if coefficients is None or templates is None:
        raise ValueError("coefficients and templates are both required")
    coefficients = check_factor(coefficients, "coefficients", ncols=None, nrows=n, dtype=X.dtype)
    k = coefficients.shape[1]
    templates = check_factor(templates, "templates", nrows=k, ncols=d, dtype=X.dtype,
                             allow_negative=True)
    return X, ivar, coefficients, templates


def chi2(X, coefficients, templates, *, ivar=None):
    r"""Weighted chi^2 of a factorisation: the one objective of specnmf.

    .. math:: \chi^2 = \sum_{ij,\ \mathrm{ivar}_{ij}>0} \mathrm{ivar}_{ij}
              (X_{ij} - [C T]_{ij})^2

    Parameters
    ----------
    X : array-like of shape (n_spectra, n_pixels)
        Flux; may be negative.  NaN/inf are allowed where ``ivar == 0``.
    coefficients : array-like of shape (n_spectra, n_components)
    templates : array-like of shape (n_components, n_pixels)
    ivar : array-like of shape (n_spectra, n_pixels), optional (keyword-only)
        Inverse variance (0 = missing).  ``None`` means unit weights.

    Returns
    -------
    float
        The chi^2: each spectrum's terms summed in the data's precision, the
        spectra in float64 (see the module's accumulation rule).

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf import chi2
    >>> X = np.array([[1.0, -1.0], [2.0, 0.5]])
    >>> ivar = np.array([[1.0, 4.0], [0.0, 1.0]])
    >>> chi2(X, np.ones((2, 1)), np.zeros((1, 2)), ivar=ivar)
    5.25
    """
    X, ivar, C, T = _prepare(X, coefficients, templates, ivar)
    return _chi2(X, ivar, C, T, get_namespace(X))


def chi2_per_spectrum(X, coefficients, templates, *, ivar=None):
    """Chi^2 of each spectrum, of shape (n_spectra,); see :func:`chi2`."""
    X, ivar, C, T = _prepare(X, coefficients, templates, ivar)
    return np.asarray(_chi2_rows(X, ivar, C, T, get_namespace(X)))


def reduced_chi2(X, coefficients, templates, *, ivar=None):
    """Chi^2 divided by the degrees of freedom.

    The degrees of freedom are the number of observed entries (``ivar > 0``)
    minus the number of free parameters, ``n_components * (n_spectra +
    n_pixels)``, floored at 1.
    """
    X, ivar, C, T = _prepare(X, coefficients, templates, ivar)
    xp = get_namespace(X)
    n_obs = int(xp.sum(ivar > 0))
    dof = max(1, n_obs - C.shape[1] * (C.shape[0] + T.shape[1]))
    return _chi2(X, ivar, C, T, xp) / dof
