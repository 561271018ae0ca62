"""Multiplicative update solvers: Nearly-NMF, Shift-NMF and the clipping baseline.

Each solver is a set of pure update rules on arrays of one namespace ``xp``
(see :mod:`specnmf.backends`), split the way the execution loop needs them:

* ``coefficients_step(block, C, T)`` updates the coefficients of the spectra in
  one block of rows (rows are independent given T);
* ``template_stats(block, C, T)`` returns that block's contribution to the
  template update: arrays of shape (n_components, n_pixels) whose sum over all
  blocks is what the template step needs (so blocks can be streamed from disk
  or reduced across workers);
* ``templates_step(T, stats)`` applies the template update.

One iteration is "coefficients, then templates", as in the paper's code.

Zero denominators
-----------------
An update ``F * num / den`` has ``den == 0`` only where an entry does not
influence chi^2 to first order (e.g. a spectrum or pixel without weight, or a
pixel where every template is 0).  Such entries are set to ``ZERO_DIVISION``
(1e-6), exactly what the published implementation does when it replaces the
NaN/inf of 0/0 with 1e-6; the published outputs depend on it.  The estimator
sets template pixels and coefficients that no data constrain to 0 at the end
of a fit.
"""

from __future__ import annotations

from collections import namedtuple

__all__ = ["NearlyNMF", "ShiftNMF", "ClipNMF", "ZERO_DIVISION", "Block", "minimal_shift"]

#: Value given to an entry whose update has a zero denominator (published code: 1e-6).
ZERO_DIVISION = 1e-6

#: One block of rows: flux, inverse variance and solver-specific precomputed data.
Block = namedtuple("Block", ["X", "ivar", "aux"])


def _pos(a, xp):
    """[A]^+ of the paper: negative entries set to 0."""
    return xp.clip(a, min=0.0)


def _neg(a, xp):
    """[A]^- of the paper: |negative entries|, positive entries set to 0."""
    return xp.clip(-a, min=0.0)


def multiplicative_update(F, num, den, xp, zero_division=ZERO_DIVISION):
    """Return ``F * num / den`` with entries of zero ``den`` set to ``zero_division``.

    ``F``, ``num`` and ``den`` are non-negative arrays of one shape.  The
    product is evaluated as ``(F * num) / den``, the order of the published
    code, so iterates agree to the last bit where ``den > 0``.
    """
    zero = den == 0
    safe = xp.where(zero, xp.ones_like(den), den)
    return xp.where(zero, xp.full_like(F, zero_division), F * num / safe)


def _add_penalty_split(num, den, splits):
    """Fold penalty gradients, split as ``grad = pos - neg``, into a MU ratio.

    The chi^2 update is ``F * num / den`` with ``num - den = -grad(chi^2)/2``;
    a penalty P adds ``neg/2`` to the numerator and ``pos/2`` to the
    denominator, which keeps the ratio a majorisation step for convex P with a
    suitable split (see :mod:`specnmf.penalties`).
    """
    for pos, neg in splits:
        num = num + 0.5 * neg
        den = den + 0.5 * pos
    return num, den


class _Multiplicative:
    """Shared plumbing of the three multiplicative solvers."""

    name = ""
    #: the solver only ever multiplies, so exact zeros in a start stay zero
    multiplicative = True

    def __init__(self, xp, *, penalties=(), zero_division=ZERO_DIVISION):
        self.xp = xp
        self.penalties = tuple(penalties)
        self.zero_division = zero_division

    # -- penalty hooks ---------------------------------------------------
    def _coef_splits(self, C, T, rows, C_all):
        return [p.coefficients_grad_split(C, T, self.xp, rows=rows, C_all=C_all)
                for p in self.penalties if p.acts_on_coefficients]

    def _templ_splits(self, C, T):
        return [p.templates_grad_split(C, T, self.xp) for p in self.penalties
                if p.acts_on_templates]

    def prepare_block(self, X, ivar):
        """Precompute per-block data that does not change between iterations."""
        return Block(X, ivar, self._aux(X, ivar))

    def templates_step(self, T, stats, C=None):
        """Template update from summed ``template_stats`` (``C`` only for penalties)."""
        num, den = self._template_num_den(stats)
        if self.penalties:
            num, den = _add_penalty_split(num, den, self._templ_splits(C, T))
        return multiplicative_update(T, num, den, self.xp, self.zero_division)


class NearlyNMF(_Multiplicative):
    """Nearly-NMF, Green & Bailey eqs. (18)-(19); signed data, no shift needed."""

    name = "nearly"

    def _aux(self, X, ivar):
        return ivar * X

    def coefficients_step(self, block, C, T, *, rows=slice(None), C_all=None):
        xp = self.xp
        a = block.aux @ T.T                       # (ivar*X) T^T
        num = _pos(a, xp)
        den = (block.ivar * (C @ T)) @ T.T + _neg(a, xp)
        if self.penalties:
            num, den = _add_penalty_split(num, den, self._coef_splits(C, T, rows, C_all))
        return multiplicative_update(C, num, den, xp, self.zero_division)

    def template_stats(self, block, C, T):
        # the +/- split of eq. (19) is of the *total* C^T(ivar*X), so the raw
        # product is what blocks contribute
        return (C.T @ block.aux, C.T @ (block.ivar * (C @ T)))

    def _template_num_den(self, stats):
        a, b = stats
        return _pos(a, self.xp), b + _neg(a, self.xp)


class ShiftNMF(_Multiplicative):
    """Shift-NMF, Green & Bailey eqs. (7)-(8), with a fixed scalar shift ``y``.

    The data are shifted to ``X + y >= 0`` and the model to ``C T + y``; the
    fit minimises the same chi^2 as Nearly-NMF.  Larger ``y`` converges more
    slowly (paper Fig. 2).
    """

    name = "shift"

    def __init__(self, xp, *, shift, penalties=(), zero_division=ZERO_DIVISION):
        super().__init__(xp, penalties=penalties, zero_division=zero_division)
        self.shift = float(shift)

    def _aux(self, X, ivar):
        return ivar * (X + self.shift)

    def coefficients_step(self, block, C, T, *, rows=slice(None), C_all=None):
        num = block.aux @ T.T
        den = (block.ivar * (C @ T + self.shift)) @ T.T
        if self.penalties:
            num, den = _add_penalty_split(num, den, self._coef_splits(C, T, rows, C_all))
        return multiplicative_update(C, num, den, self.xp, self.zero_division)

    def template_stats(self, block, C, T):
        return (C.T @ block.aux, C.T @ (block.ivar * (C @ T + self.shift)))

    def _template_num_den(self, stats):
        return stats


class ClipNMF(ShiftNMF):
    """The prior-work baseline: negative flux clipped to 0, then weighted MU (Zhu 2016).

    Included to show what the paper argues against: clipping biases the fit
    upwards where the true signal is near 0.  The chi^2 it reports (and
    decreases monotonically) is that of the *clipped* data; ``chi2_`` of the
    estimator is always the chi^2 of the data as given.
    """

    name = "clip"

    def __init__(self, xp, *, penalties=(), zero_division=ZERO_DIVISION):
        super().__init__(xp, shift=0.0, penalties=penalties, zero_division=zero_division)

    def prepare_block(self, X, ivar):
        Xc = _pos(X, self.xp)
        return Block(Xc, ivar, ivar * Xc)


def minimal_shift(X, ivar):
    """Smallest scalar shift ``y`` with ``X + y >= 0`` on observed pixels (``ivar > 0``).

    ``X`` and ``ivar`` are validated numpy arrays.  Returns 0 for non-negative data.
    """
    import numpy as np

    observed = X[ivar > 0]
    if observed.size == 0:
        return 0.0
    return float(max(0.0, -np.min(observed)))
