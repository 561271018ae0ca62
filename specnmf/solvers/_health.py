r"""Two checks on an iterate that every solver shares: dead components and stationarity.

Dead components
---------------
A component is *dead* when its contribution ``C[:, k] T[k]`` is nil: its
template row or its coefficient column is zero (to ``DEAD_RTOL`` of the
largest component).  A dead component is a stationary point of the
objective in its own variables (the gradient with respect to a zero
template row vanishes when its coefficients are zero, and vice versa), so no
solver revives it: exact block updates (ANLS) keep both at zero, and
multiplicative updates only ever rescale.  The fit then converges with one
component fewer (the Coelho demo with ``solver="anls", random_state=0``:
chi^2 2.5x the optimum after 37 iterations).

:func:`reseed` gives such a component a new start from what the fit
misses: the template is the positive part of the weighted residual of the
spectrum whose positive residual is largest (in chi^2), and each spectrum's
coefficient is its exact non-negative least-squares weight on that template
given everything else, ``c_i = max(0, <r_i, t>_w) / <t, t>_w``.  Each of these
1-d problems is solved exactly from 0, so chi^2 can only decrease.  With
penalties the coefficients are left at 0 instead (every penalty term is a
product with the coefficients, so the objective is then exactly unchanged),
and the next coefficient update decides -- for the alternating solvers; a
multiplicative solver cannot move a zero, so with penalties it is not
re-seeded.  Three passes over the data per re-seed, at most
``RESEEDS_PER_COMPONENT * n_components`` per fit.

Stationarity
------------
:func:`stationarity` measures the first-order (KKT) optimality of an
iterate without reference to the start: for each factor ``F`` (coefficients,
templates), with ``g`` the gradient of the objective (chi^2 plus penalties)
and ``h`` the diagonal of its Hessian, the projected Jacobi step
``F - max(0, F - g / h) = min(F, g / h)`` vanishes exactly at a KKT point
(``F >= 0``, ``g >= 0``, ``F g = 0``).  Relative to ``||F||`` it does not
depend on the units of flux or ivar, nor on how a component's scale is split
between its coefficients and template.  Unlike the plain projected gradient
it does not count a tiny positive entry with a positive gradient (which a
multiplicative update is still shrinking) as a violation of the size of the
gradient.  One pass over the data.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..backends import asarray, to_numpy
from ..objective import spectrum_chi2
from . import forms, gram

__all__ = ["DEAD_RTOL", "RESEEDS_PER_COMPONENT", "dead_components", "reseed", "stationarity"]

#: a component whose ||C[:, k]|| ||T[k]|| is below this fraction of the largest one is dead
DEAD_RTOL = 1e-10
#: re-seeds allowed per component and fit
RESEEDS_PER_COMPONENT = 2


def assemble_rows(parts, n, xp):
    """The rows of a pass's ``[(rows, part), ...]`` (block order) as one array of n rows."""
    if len(parts) == 1 and parts[0][0] == slice(0, n):
        return parts[0][1]
    return xp.concat([p for _, p in parts], axis=0)


def _residual(solver, T, block, C_rows):
    """``X - C T`` of one block (unshifted data; the clipped data for ``clip``), its
    templates, and the block with dense rows (a packed file's spans made dense)."""
    block = forms.dense_rows(block, T.shape[1])
    shift = solver.shift
    X = block.X - shift if shift else block.X
    Tc = T[:, block.cols]
    return X - C_rows @ Tc, Tc, block


def _positive_part(r, ivar, xp):
    return xp.where(ivar > 0, xp.clip(r, min=0), xp.zeros_like(r))


def _scores_block(solver, T, rows, block, C_rows):
    xp = solver.xp
    r, _, block = _residual(solver, T, block, C_rows)
    # the chi^2 of each spectrum's positive residual
    score = spectrum_chi2(_positive_part(r, block.ivar, xp), block.ivar, xp)
    return xp.reshape(score, (-1, 1)), (0.0,)


def _local(rows, i):
    """Position of spectrum ``i`` in a block's ``rows`` (a slice or an index array), or None."""
    if isinstance(rows, slice):
        start = rows.start or 0
        return i - start if start <= i < rows.stop else None
    hit = np.flatnonzero(np.asarray(to_numpy(rows)) == i)
    return int(hit[0]) if hit.size else None


def _row_block(solver, T, i, d, rows, block, C_rows):
    xp = solver.xp
    row = xp.zeros((1, d), dtype=xp.float64)
    j = _local(rows, i)
    if j is not None:
        r, _, block = _residual(solver, T, block, C_rows)
        pos = xp.astype(_positive_part(r[j:j + 1, ...], block.ivar[j:j + 1, ...], xp), xp.float64)
        row = gram.widen(pos, block.cols, d, xp)
    return None, (0.0, row)


def _coefficient_block(solver, T, t, rows, block, C_rows):
    xp = solver.xp
    r, _, block = _residual(solver, T, block, C_rows)
    tc = xp.astype(t[block.cols], r.dtype)
    p = xp.sum(block.ivar * r * tc, axis=1)
    q = xp.sum(block.ivar * tc * tc, axis=1)
    c = xp.where(q > 0, xp.clip(p, min=0) / xp.where(q > 0, q, xp.ones_like(q)), xp.zeros_like(q))
    f64 = xp.float64
    return xp.stack([xp.astype(c, f64), xp.astype(p, f64), xp.astype(q, f64)], axis=1), (0.0,)


def _norms(C, T, xp):
    c = to_numpy(xp.sqrt(xp.sum(xp.astype(C, xp.float64) ** 2, axis=0)))
    t = to_numpy(xp.sqrt(xp.sum(xp.astype(T, xp.float64) ** 2, axis=1)))
    return np.asarray(c, dtype=np.float64), np.asarray(t, dtype=np.float64)


def dead_components(C, T, xp):
    """Indices of the components whose contribution ``||C[:, k]|| ||T[k]||`` is nil.

    Nil means at most ``DEAD_RTOL`` times the largest contribution, or 0; if
    every contribution is 0 all components are dead.
    """
    c, t = _norms(C, T, xp)
    size = c * t
    top = float(size.max()) if size.size else 0.0
    return [int(k) for k in np.flatnonzero(size <= DEAD_RTOL * top)]


def reseed(solver, engine, C, T, k, xp, *, coefficients=True, positive=False):
    """A new start for the dead component ``k`` from the largest positive residual.

    Returns ``(C, T)`` (new arrays) or ``None`` when nothing is left to fit
    (no observed residual above 0).  ``coefficients=False`` leaves
    ``C[:, k] = 0`` (objective exactly unchanged).  ``positive=True`` (for
    multiplicative solvers, which never move a zero) makes every entry of
    the new template and coefficients > 0: the template gets a floor of 1 %
    of its peak, and the coefficients that would be 0 a common value small
    enough that they give back at most half of what the others gain.
    """
    n, d = C.shape[0], T.shape[1]
    keep_c = asarray(np.arange(C.shape[1]) != k, xp, device=getattr(C, "device", None))
    C = xp.where(keep_c[None, :], C, xp.zeros_like(C))
    T = xp.where(keep_c[:, None], T, xp.zeros_like(T))
    parts, _ = engine.run_pass(solver, partial(_scores_block, solver, T), C)
    scores = np.asarray(to_numpy(assemble_rows(parts, n, xp)), dtype=np.float64).reshape(-1)
    if scores.size == 0 or not np.isfinite(scores).all() or scores.max() <= 0:
        return None
    i = int(np.argmax(scores))
    _, total = engine.run_pass(solver, partial(_row_block, solver, T, i, d), C)
    t = xp.reshape(total[1], (-1,))
    if not float(xp.max(t)) > 0:
        return None
    if positive:
        t = t + 0.01 * xp.max(t)
    t = xp.astype(t, T.dtype)
    onehot = asarray(np.arange(C.shape[1]) == k, xp, device=getattr(C, "device", None))
    T = xp.where(onehot[:, None], xp.reshape(t, (1, -1)), T)
    if coefficients:
        parts, _ = engine.run_pass(solver, partial(_coefficient_block, solver, T, t), C)
        cpq = assemble_rows(parts, n, xp)
        c, p, q = cpq[:, 0], cpq[:, 1], cpq[:, 2]
        if positive:
            c = _positive_coefficients(c, p, q, xp)
        c = xp.astype(xp.reshape(c, (-1, 1)), C.dtype)
        C = xp.where(onehot[None, :], c, C)
    return C, T


def _positive_coefficients(c, p, q, xp):
    """``c`` with its zeros raised to the largest common eps that keeps chi^2 decreasing.

    The exact weights lower chi^2 by ``D = sum max(p, 0)^2 / q``; giving the
    spectra Z with weight 0 the value eps raises it by at most
    ``eps^2 sum_Z q + 2 eps sum_Z |p|``, which is set to ``D / 2``.
    """
    zero = c <= 0
    live = q > 0
    gain = float(xp.sum(xp.where(live, xp.clip(p, min=0) ** 2 / xp.where(live, q, 1.0), 0.0)))
    a = float(xp.sum(xp.where(zero & live, q, 0.0)))
    b = 2 * float(xp.sum(xp.where(zero & live, xp.abs(p), 0.0)))
    if a > 0:
        eps = (-b + np.sqrt(b * b + 2 * a * gain)) / (2 * a)
    else:  # spectra without weight: any value; a small one
        eps = 1e-3 * float(xp.max(c)) if c.shape[0] else 0.0
    return xp.where(zero, eps, c)


# -- stationarity ------------------------------------------------------------------
def _gradient_block(solver, T, rows, block, C_rows):
    xp = solver.xp
    d = T.shape[1]
    compiled = solver.block_gradient(block, C_rows, T)
    if compiled is not None:
        gC, hC, gT, hT = compiled
        return xp.concat([gC, hC], axis=1), (0.0, gram.widen(gT, block.cols, d, xp),
                                             gram.widen(hT, block.cols, d, xp))
    r, Tc, block = _residual(solver, T, block, C_rows)
    f64 = xp.float64
    v = xp.astype(block.ivar, f64, copy=False)
    wr = v * xp.astype(r, f64, copy=False)         # chi^2 gradient in the model: -2 ivar r
    Tt = xp.astype(xp.matrix_transpose(Tc), f64, copy=False)
    C64 = xp.astype(C_rows, f64, copy=False)
    gC = -2 * (wr @ Tt)
    hC = 2 * (v @ (Tt * Tt))                      # diagonal of the Hessian in C
    gT = -2 * (xp.matrix_transpose(C64) @ wr)
    hT = 2 * (xp.matrix_transpose(C64 * C64) @ v)
    return xp.concat([gC, hC], axis=1), (0.0, gram.widen(gT, block.cols, d, xp),
                                         gram.widen(hT, block.cols, d, xp))


def _relative_step(F, g, h, xp):
    """``||min(F, g / h)|| / ||F||``: a diagonally scaled projected-gradient step, relative."""
    F = xp.astype(F, xp.float64)
    live = h > 0
    step = xp.where(live, g / xp.where(live, h, xp.ones_like(h)), xp.zeros_like(g))
    move = xp.minimum(F, step)                    # F - max(0, F - step)
    size = float(xp.sum(F * F))
    return float(np.sqrt(float(xp.sum(move * move)) / size)) if size > 0 else 0.0


def stationarity(solver, engine, C, T, xp, penalties=()):
    """Scale-free first-order (KKT) residual of the objective at (C, T) (one pass).

    For each factor F (coefficients, templates) with gradient g and Hessian
    diagonal h of the objective, the projected Jacobi step
    ``F - max(0, F - g / h) = min(F, g / h)`` is 0 exactly at a KKT point;
    its norm relative to ``||F||`` is unchanged by the units of flux, of ivar,
    and by rescaling a component (``C[:, k] a``, ``T[k] / a``).  Returns
    ``sqrt(s_C^2 + s_T^2)`` of the two relative steps.
    """
    n, q = C.shape
    parts, total = engine.run_pass(solver, partial(_gradient_block, solver, T), C)
    P = assemble_rows(parts, n, xp)
    gC, hC = P[:, :q], P[:, q:]
    gT, hT = total[1], total[2]
    for p in penalties:
        if p.acts_on_coefficients:
            gC = gC + xp.astype(p.coefficients_grad(C, T, xp, C_all=C), xp.float64)
            hC = hC + xp.astype(p.coefficients_curvature(C, T, xp, C_all=C), xp.float64)
        if p.acts_on_templates:
            gT = gT + xp.astype(p.templates_grad(C, T, xp), xp.float64)
            hT = hT + xp.astype(p.templates_curvature(C, T, xp), xp.float64)
    sC = _relative_step(C, gC, hC, xp)
    sT = _relative_step(T, gT, hT, xp)
    return float(np.sqrt(sC * sC + sT * sT))
