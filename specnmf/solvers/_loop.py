"""The iteration driver shared by every solver.

It owns the iteration count, the stopping rule, the objective history, the
callback and the ``ConvergenceWarning``; the solvers only provide pure update
rules (see :mod:`specnmf.solvers.multiplicative`).  Data arrive as blocks of
whole spectra (rows), so the same loop serves in-memory arrays (one block, or
a few to bound temporaries) and streamed or distributed data.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

from ..objective import _chi2

logger = logging.getLogger("specnmf")

__all__ = ["ConvergenceWarning", "FitResult", "run", "sum_stats"]


class ConvergenceWarning(UserWarning):
    """The fit stopped at ``max_iter`` before meeting ``tol``."""


@dataclass
class FitResult:
    """What :func:`run` returns: final factors and histories.

    ``history`` maps ``"chi2"`` and each penalty's name to a list of values,
    one before the first iteration and one after each iteration.
    """

    coefficients: object
    templates: object
    history: dict
    n_iter: int
    converged: bool
    interrupted: bool = False
    objective: list = field(default_factory=list)


def sum_stats(total, part):
    """Add one block's template statistics (a tuple of arrays) to a running total."""
    if total is None:
        return tuple(part)
    return tuple(a + b for a, b in zip(total, part))


def _evaluate(blocks, C, T, penalties, xp):
    chi = 0.0
    for rows, blk in blocks:
        chi += _chi2(blk.X, blk.ivar, C[rows, ...], T, xp)
    terms = {"chi2": chi}
    for p in penalties:
        terms[p.name] = float(p.value(C, T, xp))
    return terms


def run(solver, blocks, C, T, *, max_iter, tol, patience=1, penalties=(), xp,
        callback=None, verbose=False, start_iter=0, history=None):
    """Iterate ``solver`` from (C, T) until the stopping rule holds.

    Parameters
    ----------
    solver : object
        Provides ``coefficients_step(block, C_rows, T, rows=, C_all=)``,
        ``template_stats(block, C_rows, T)`` and ``templates_step(T, stats, C)``.
    blocks : callable
        ``blocks()`` returns an iterable of ``(rows, Block)`` pairs covering
        all spectra once, ``rows`` a slice into C; it is called once per pass.
    C, T : arrays of shape (n_spectra, n_components), (n_components, n_pixels)
        Start.  Neither is modified; new arrays are returned.
    max_iter : int
        Maximum number of iterations (one coefficient and one template update).
    tol : float
        Stop when the relative decrease of the objective over one iteration is
        below ``tol`` for ``patience`` consecutive iterations.  ``tol=0`` runs
        exactly ``max_iter`` iterations.
    penalties : sequence
        Penalty objects (``name``, ``value(C, T, xp)``), added to chi^2.
    callback : callable, optional
        ``callback(iteration, C, T, terms)`` after each iteration; returning
        ``True`` stops the fit (counted as converged=False).
    start_iter, history : for resuming; ``history`` is continued in place.

    Returns
    -------
    FitResult
    """
    if history is None:
        history = {k: [v] for k, v in _evaluate(blocks(), C, T, penalties, xp).items()}
    objective = [sum(vals) for vals in zip(*history.values())]
    converged = False
    interrupted = False
    below = 0
    it = start_iter
    try:
        while it < max_iter:
            stats = None
            C_new = None
            for rows, blk in blocks():
                Cb = solver.coefficients_step(blk, C[rows, ...], T, rows=rows, C_all=C)
                if rows == slice(None):
                    C_new = Cb
                else:
                    if C_new is None:
                        C_new = xp.empty_like(C)
                    C_new[rows, ...] = Cb
                stats = sum_stats(stats, solver.template_stats(blk, Cb, T))
            T = solver.templates_step(T, stats, C_new)
            C = C_new
            it += 1
            terms = _evaluate(blocks(), C, T, penalties, xp)
            for k, v in terms.items():
                history[k].append(v)
            prev, cur = objective[-1], sum(terms.values())
            objective.append(cur)
            if verbose and (it % 10 == 0 or it == max_iter):
                logger.info("iteration %d: objective %.6g (chi2 %.6g)", it, cur, terms["chi2"])
            if callback is not None and callback(it, C, T, terms):
                break
            if tol > 0:
                rel = (prev - cur) / prev if prev > 0 else 0.0
                below = below + 1 if rel < tol else 0
                if below >= patience:
                    converged = True
                    break
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("fit interrupted at iteration %d; returning the last complete iterate", it)
        # C and T are only rebound after a complete iteration, so they and the
        # history describe the same, last complete iterate
    if not converged and not interrupted and tol > 0 and 0 < max_iter <= it:
        warnings.warn(
            f"stopped at max_iter={max_iter} before the relative objective decrease "
            f"fell below tol={tol}; increase max_iter or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(C, T, history, it, converged, interrupted, objective)
