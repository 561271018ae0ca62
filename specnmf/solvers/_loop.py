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
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType

from ..protocols import (
    Array,
    Block,
    EngineProtocol,
    PenaltyProtocol,
    Rows,
    SolverProtocol,
    Stat,
)
from . import _health

logger = logging.getLogger("specnmf")

__all__ = ["ConvergenceWarning", "FitResult", "run"]


class ConvergenceWarning(UserWarning):
    """The fit stopped at ``max_iter`` before meeting ``tol``, or met ``tol`` away from a stationary point."""


def stationarity_tol(tol):
    """Largest KKT residual (:func:`specnmf.solvers._health.stationarity`) of a converged fit.

    ``sqrt(tol)``: near a minimum a step of relative size s lowers the
    objective by a relative ~s^2, so a method that stops at relative
    decrease ``tol`` *because it is at a stationary point* has a residual
    ~sqrt(tol) or less (measured: ANLS/APG 1e-4 at tol=1e-6), while one that
    stops because its steps are slow (multiplicative updates creeping along
    a valley) does not.
    """
    return math.sqrt(tol)


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
    n_reseeds: int = 0
    dead: list = field(default_factory=list)
    stationarity: float = float("nan")
    stopped_by_tol: bool = False


def _block_pass(solver: SolverProtocol, T: Array, C_all: Array | None, rows: Rows, block: Block,
                C_rows: Array) -> tuple[Array, tuple[Stat, ...]]:
    """One block of one iteration (module level, so distributed engines can ship it)."""
    return solver.block_step(block, C_rows, T, rows=rows, C_all=C_all)


def _block_chi2(solver: SolverProtocol, T: Array, rows: Rows, block: Block,
                C_rows: Array) -> tuple[None, tuple[float]]:
    return None, (solver.block_chi2(block, C_rows, T),)


#: ``callback(iteration, C, T, terms)``; True stops the fit
Callback = Callable[[int, Array, Array, dict[str, float]], object]
#: ``checkpoint(iteration, C, T, history, solver_state)``
Checkpoint = Callable[[int, Array, Array, dict[str, list[float]], dict[str, object]], object]


def run(solver: SolverProtocol, engine: EngineProtocol, C: Array, T: Array, *, max_iter: int,
        tol: float, patience: int = 1, penalties: Sequence[PenaltyProtocol] = (), xp: ModuleType,
        callback: Callback | None = None, checkpoint: Checkpoint | None = None,
        verbose: bool = False, start_iter: int = 0, history: dict[str, list[float]] | None = None,
        solver_state: Mapping[str, object] | None = None, reseed: bool = True) -> FitResult:
    """Iterate ``solver`` from (C, T) until the stopping rule holds.

    Parameters
    ----------
    solver : specnmf.protocols.SolverProtocol
        The update rules.
    engine : specnmf.protocols.EngineProtocol
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
    reseed : bool, default=True
        Re-seed dead components (:func:`specnmf.solvers._health.reseed`).

    The fit has ``converged`` when the ``tol`` rule stopped it *and* it is
    stationary: the scale-free KKT residual of the last iterate
    (:func:`specnmf.solvers._health.stationarity`) is at most ``sqrt(tol)``.

    Returns
    -------
    FitResult
    """
    needs_all = any(p.needs_all_coefficients for p in penalties)
    solver_state = dict(solver_state or {})
    # the loop's own state travels in the solver state of checkpoints
    # a number, or a 0-d array read back from a checkpoint
    n_reseeds = int(solver_state.pop("loop_reseeds", 0))  # type: ignore[call-overload]
    if solver_state:
        solver.load_state(solver_state)
    budget = _health.RESEEDS_PER_COMPONENT * int(C.shape[1])
    # a multiplicative solver cannot move the zero coefficients a penalised re-seed leaves
    can_reseed = reseed and not (solver.multiplicative and penalties)
    nothing_left = False

    def revive(C, T):
        """Re-seed dead components of a fresh iterate (see solvers._health)."""
        nonlocal n_reseeds, nothing_left
        if not can_reseed or nothing_left or n_reseeds >= budget:
            return C, T, False
        dead = _health.dead_components(C, T, xp)
        changed = False
        for k in dead:
            if n_reseeds >= budget:
                break
            out = _health.reseed(solver, engine, C, T, k, xp, coefficients=not penalties,
                                 positive=solver.multiplicative)
            if out is None:
                nothing_left = True
                break
            C, T = out
            n_reseeds += 1
            changed = True
            logger.info("component %d is dead (zero template or coefficients): re-seeded from "
                        "the largest positive residual (re-seed %d of at most %d)",
                        k, n_reseeds, budget)
        return C, T, changed

    def advance(C, T):
        fn = partial(_block_pass, solver, T, C if needs_all else None)
        # solvers with per-spectrum state (APG) send it along with the rows
        parts, total = engine.run_pass(solver, fn, solver.row_inputs(C))
        C_new = solver.row_outputs(_health.assemble_rows(parts, C.shape[0], xp), C)
        T_new = solver.templates_step(T, total[1:], C_new)
        return float(total[0]), C_new, T_new

    def terms_at(chi, C, T):
        terms = {"chi2": chi}
        for p in penalties:
            terms[p.name] = float(p.value(C, T, xp))
        return terms

    fresh = start_iter == 0 and history is None
    if fresh and max_iter > 0:
        # a start with a dead component (e.g. NNDSVD's all-zero pairs) is revived first
        C, T, _ = revive(C, T)
    state = solver.state()
    if start_iter >= max_iter:  # nothing to iterate: measure the start only
        _, total = engine.run_pass(solver, partial(_block_chi2, solver, T), C)
        chi, C_next, T_next = float(total[0]), None, None
    else:
        chi, C_next, T_next = advance(C, T)
    if history is None:
        history = {k: [v] for k, v in terms_at(chi, C, T).items()}
    objective = [sum(vals) for vals in zip(*history.values())]
    converged = interrupted = stopped_by_tol = False
    below = 0
    it = start_iter
    try:
        while it < max_iter:
            next_state = solver.state()
            C_next, T_next, revived = revive(C_next, T_next)
            if revived:
                below = 0
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
                checkpoint(it, C, T, history, {**state, "loop_reseeds": n_reseeds})
            if callback is not None and callback(it, C, T, terms):
                break
            if tol > 0:
                rel = (prev - cur) / prev if prev > 0 else 0.0
                below = below + 1 if rel < tol else 0
                if below >= patience:
                    stopped_by_tol = True
                    break
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("fit interrupted at iteration %d; returning the last complete iterate", it)
        # C, T, state and history are rebound together after a complete
        # iteration, so they describe the same, last complete iterate
    stationarity = float("nan")
    if not interrupted and int(C.shape[0]):
        stationarity = _health.stationarity(solver, engine, C, T, xp, penalties)
    converged = stopped_by_tol and stationarity <= stationarity_tol(tol)
    if stopped_by_tol and not converged:
        warnings.warn(
            f"the relative objective decrease fell below tol={tol} at iteration {it}, but the "
            f"fit is not stationary (KKT residual {stationarity:.3g}; converged_ needs <= "
            f"sqrt(tol) = {stationarity_tol(tol):.3g}); lower tol, or use solver='anls'",
            ConvergenceWarning,
            stacklevel=3,
        )
    if not stopped_by_tol and not interrupted and tol > 0 and 0 < max_iter <= it:
        warnings.warn(
            f"stopped at max_iter={max_iter} before the relative objective decrease "
            f"fell below tol={tol}; increase max_iter or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    dead = _health.dead_components(C, T, xp) if int(C.shape[0]) else []
    if dead and it > 0:
        warnings.warn(
            f"component(s) {dead} carry no signal at the end of the fit (zero template or "
            f"coefficients) after {n_reseeds} re-seed(s); the data may not support "
            f"{int(C.shape[1])} components",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(C, T, history, it, converged, interrupted, objective, state,
                     n_reseeds=n_reseeds, dead=dead, stationarity=stationarity,
                     stopped_by_tol=stopped_by_tol)
