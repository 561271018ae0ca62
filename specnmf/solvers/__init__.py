"""Solvers for the weighted, signed NMF objective of :mod:`specnmf.objective`.

``SOLVERS`` maps each public ``solver=`` name to a factory
``factory(xp, *, shift, penalties, n_components)`` (:class:`specnmf.protocols.SolverFactory`)
of a solver (:class:`specnmf.protocols.SolverProtocol`); the execution loop in
:mod:`specnmf.solvers._loop` drives any of them over any engine.

Which solver when (measured figures in README.md and docs/solvers.md):

* ``"anls"`` -- exact alternating weighted NNLS.  Fewest iterations and, for
  the few-component fits of spectra (q <~ 10), the least time to a converged
  fit.  Works with every penalty.
* ``"apg"`` -- accelerated proximal gradient (Xu & Yin 2013), cheaper per
  iteration than ANLS for many components; monotone by a per-block restart.
* ``"nearly"`` -- Nearly-NMF (Green & Bailey eqs. 18-19), the published
  multiplicative rule, reproduced exactly; simplest and most robust, slow to
  converge.
* ``"shift"`` -- Shift-NMF (eqs. 7-8), for comparison; slower as the shift grows.
* ``"clip"`` -- the prior-work baseline that clips negative flux; biased.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from ..protocols import PenaltyProtocol, SolverFactory, SolverProtocol
from ._loop import ConvergenceWarning, FitResult, run
from .anls import ANLS
from .apg import APG
from .multiplicative import ClipNMF, NearlyNMF, ShiftNMF, minimal_shift
from .coefficients import weighted_nnls


def _nearly(xp: ModuleType, *, shift: float | None = None,
            penalties: Sequence[PenaltyProtocol] = (),
            n_components: int | None = None) -> SolverProtocol:
    return NearlyNMF(xp, penalties=penalties, n_components=n_components)


def _shift(xp: ModuleType, *, shift: float, penalties: Sequence[PenaltyProtocol] = (),
           n_components: int | None = None) -> SolverProtocol:
    return ShiftNMF(xp, shift=shift, penalties=penalties, n_components=n_components)


def _clip(xp: ModuleType, *, shift: float | None = None,
          penalties: Sequence[PenaltyProtocol] = (),
          n_components: int | None = None) -> SolverProtocol:
    return ClipNMF(xp, penalties=penalties, n_components=n_components)


def _anls(xp: ModuleType, *, shift: float | None = None,
          penalties: Sequence[PenaltyProtocol] = (),
          n_components: int | None = None) -> SolverProtocol:
    return ANLS(xp, penalties=penalties, n_components=n_components)


def _apg(xp: ModuleType, *, shift: float | None = None,
         penalties: Sequence[PenaltyProtocol] = (),
         n_components: int | None = None) -> SolverProtocol:
    return APG(xp, penalties=penalties, n_components=n_components)


SOLVERS: dict[str, SolverFactory] = {"nearly": _nearly, "shift": _shift, "clip": _clip,
                                     "anls": _anls, "apg": _apg}

#: solvers whose updates only rescale entries (zeros in a start stay zero)
MULTIPLICATIVE = {"nearly", "shift", "clip"}

__all__ = [
    "SOLVERS",
    "MULTIPLICATIVE",
    "ConvergenceWarning",
    "FitResult",
    "run",
    "NearlyNMF",
    "ShiftNMF",
    "ClipNMF",
    "ANLS",
    "APG",
    "minimal_shift",
    "weighted_nnls",
]
