"""The iteration driver shared by every solver.

It owns the iteration count, the stopping rule, the objective history, the
callback, checkpoints and the ``ConvergenceWarning``; the solvers provide pure
update rules and the engine (:mod:`specnmf.engine`) the pass over the data.

One pass over the data does three things at once: it updates the coefficients
of each block, accumulates the template statistics, and measures the chi^2 of
the iterate it started from (the solvers get it almost free from the Grams
they compute anyway).  So the chi^2 of iterate k is known only during the pass
that computes iterate k+1: the loop runs one pass ahead and, when the stopping
rule holds at iterate k, returns iterate k and discards the speculative k+1.
At ``max_iter`` a cheaper evaluation-only pass measures the last iterate.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from functools import partial

logger = logging.getLogger("specnmf")

__all__ = ["ConvergenceWarning", "FitResult", "run"]


class ConvergenceWarning(UserWarning):
    """The fit stopped at ``max_iter`` before meeting ``tol``."""


@dataclass
class FitResult:
    """What :func:`run` returns: final factors and histories.

    ``history`` maps ``"chi2"`` and each penalty's name to a list of values,
    one before the first iteration and one after each iteration; ``objective``
    is their sum.  ``solver_state`` is the solver's extra state (e.g. the
    previous iterate of an accelerated method) needed to continue exactly.
    """

    coefficients: object
    templates: object
    history: dict
    n_iter: int
    converged: bool
    interrupted: bool = False
    objective: list = field(default_factory=list)
    solver_state: dict = field(default_factory=dict)


def _block_pass(solver, T, C_all, rows, block, C_rows):
    """One block of one iteration (module level, so distributed engines can ship it)."""
    return solver.block_step(block, C_rows, T, rows=rows, C_all=C_all)


def _block_chi2(solver, T, rows, block, C_rows):
    return None, (solver.block_chi2(block, C_rows, T),)


def _assemble(parts, C, xp):
    if len(parts) == 1 and parts[0][0] == slice(0, C.shape[0]):
        return parts[0][1]
    return xp.concat([p for _, p in parts], axis=0)


def run(solver, engine, C, T, *, max_iter, tol, patience=1, penalties=(), xp,
        callback=None, checkpoint=None, verbose=False, start_iter=0, history=None,
        solver_state=None):
    """Iterate ``solver`` from (C, T) until the stopping rule holds.

    Parameters
    ----------
    solver : object
        Provides ``block_step``, ``block_chi2``, ``templates_step``, ``state``
        and ``load_state`` (see docs/architecture.md).
    engine : specnmf.engine.Engine
        The data, and the pass over them.
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
        ``callback(iteration, C, T, terms)`` after each iteration's objective
        is known; returning ``True`` stops the fit (``converged=False``).
    checkpoint : callable, optional
        ``checkpoint(iteration, C, T, history, solver_state)`` after each
        iteration; it decides itself whether to write.
    start_iter, history, solver_state : for resuming from a checkpoint.

    Returns
    -------
    FitResult
    """
    needs_all = any(getattr(p, "needs_all_coefficients", False) for p in penalties)
    if solver_state:
        solver.load_state(solver_state)

    def advance(C, T):
        fn = partial(_block_pass, solver, T, C if needs_all else None)
        # solvers with per-spectrum state (APG) send it along with the rows
        P = solver.row_inputs(C) if hasattr(solver, "row_inputs") else C
        parts, total = engine.run_pass(solver, fn, P)
        C_new = _assemble(parts, C, xp)
        if hasattr(solver, "row_outputs"):
            C_new = solver.row_outputs(C_new, C)
        T_new = solver.templates_step(T, total[1:], C_new)
        return float(total[0]), C_new, T_new

    def terms_at(chi, C, T):
        terms = {"chi2": chi}
        for p in penalties:
            terms[p.name] = float(p.value(C, T, xp))
        return terms

    state = solver.state()
    if start_iter >= max_iter:  # nothing to iterate: measure the start only
        _, total = engine.run_pass(solver, partial(_block_chi2, solver, T), C)
        chi, C_next, T_next = float(total[0]), None, None
    else:
        chi, C_next, T_next = advance(C, T)
    if history is None:
        history = {k: [v] for k, v in terms_at(chi, C, T).items()}
    objective = [sum(vals) for vals in zip(*history.values())]
    converged = interrupted = False
    below = 0
    it = start_iter
    try:
        while it < max_iter:
            next_state = solver.state()
            if it + 1 < max_iter:
                chi, C_after, T_after = advance(C_next, T_next)
            else:
                fn = partial(_block_chi2, solver, T_next)
                _, total = engine.run_pass(solver, fn, C_next)
                chi, C_after, T_after = float(total[0]), None, None
            # iterate it+1 is now complete: adopt it
            C, T, state = C_next, T_next, next_state
            C_next, T_next = C_after, T_after
            it += 1
            terms = terms_at(chi, C, T)
            for k, v in terms.items():
                history[k].append(v)
            prev, cur = objective[-1], sum(terms.values())
            objective.append(cur)
            if verbose and (it % 10 == 0 or it == max_iter):
                logger.info("iteration %d: objective %.6g (chi2 %.6g)", it, cur, terms["chi2"])
            if checkpoint is not None:
                checkpoint(it, C, T, history, state)
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
        # C, T, state and history are rebound together after a complete
        # iteration, so they describe the same, last complete iterate
    if not converged and not interrupted and tol > 0 and 0 < max_iter <= it:
        warnings.warn(
            f"stopped at max_iter={max_iter} before the relative objective decrease "
            f"fell below tol={tol}; increase max_iter or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(C, T, history, it, converged, interrupted, objective, state)
