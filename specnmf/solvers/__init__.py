"""Solvers for the weighted, signed NMF objective of :mod:`specnmf.objective`.

``SOLVERS`` maps each public ``solver=`` name to a factory
``factory(xp, *, shift, penalties) -> solver object``; the execution loop in
:mod:`specnmf.solvers._loop` drives any of them.
"""

from ._loop import ConvergenceWarning, FitResult, run
from .multiplicative import ClipNMF, NearlyNMF, ShiftNMF, minimal_shift
from .nnls import weighted_nnls


def _nearly(xp, *, shift=None, penalties=()):
    return NearlyNMF(xp, penalties=penalties)


def _shift(xp, *, shift, penalties=()):
    return ShiftNMF(xp, shift=shift, penalties=penalties)


def _clip(xp, *, shift=None, penalties=()):
    return ClipNMF(xp, penalties=penalties)


SOLVERS = {"nearly": _nearly, "shift": _shift, "clip": _clip}

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
    "minimal_shift",
    "weighted_nnls",
]
