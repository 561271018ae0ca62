r"""Penalties (regularisers) added to the chi^2 objective.

The full objective of a regularised fit is ``chi2(C, T) + sum(P(C, T))`` over
the penalties ``P`` given to the solver.  Every penalty is an object with one
interface, so solvers never branch on which penalty they received (the split
between algorithms and operators of proxmin):

``value(C, T, xp) -> float``
    The penalty's value (added to chi^2 in ``objective_``).
``templates_grad_split(C, T, xp) -> (pos, neg)``
    The gradient with respect to the templates, written as ``pos - neg`` with
    both parts >= 0 and of the shape of ``T``; multiplicative solvers add
    ``neg/2`` to the numerator and ``pos/2`` to the denominator.
``coefficients_grad_split(C_rows, T, xp, *, rows, C_all) -> (pos, neg)``
    The same with respect to the coefficients of the spectra ``rows`` (a slice
    into ``C_all``, the coefficients of all spectra before this update; a
    penalty that couples spectra, such as a spatial one, reads neighbours
    there).  Shape of ``C_rows``.
``templates_lipschitz(C, T, xp)``, ``coefficients_lipschitz(C, T, xp) -> float``
    Lipschitz constants of those gradients (for proximal-gradient step sizes).
``check(solver, n_spectra, n_pixels)``
    Raise ``ValueError`` if the penalty cannot be used with that solver or
    data shape.

``acts_on_templates`` / ``acts_on_coefficients`` say which gradients are
non-zero.  The base class implements ``*_grad`` as ``pos - neg`` and a
``check`` that accepts everything.
"""

from __future__ import annotations

__all__ = ["Penalty"]


class Penalty:
    """Base class of the penalties; see the module docstring for the interface."""

    name = "penalty"
    acts_on_templates = False
    acts_on_coefficients = False

    def value(self, C, T, xp):
        raise NotImplementedError

    def templates_grad_split(self, C, T, xp):
        raise NotImplementedError

    def coefficients_grad_split(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        raise NotImplementedError

    def templates_grad(self, C, T, xp):
        pos, neg = self.templates_grad_split(C, T, xp)
        return pos - neg

    def coefficients_grad(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        pos, neg = self.coefficients_grad_split(C_rows, T, xp, rows=rows, C_all=C_all)
        return pos - neg

    def templates_lipschitz(self, C, T, xp):
        return 0.0

    def coefficients_lipschitz(self, C, T, xp):
        return 0.0

    def check(self, solver, n_spectra, n_pixels):
        return None
