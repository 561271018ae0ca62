"""Multiplicative update solvers: Nearly-NMF, Shift-NMF and the clipping baseline.

Each solver is a set of pure update rules on arrays of one namespace ``xp``
(see :mod:`specnmf.backends`), split the way the execution loop needs them:

* ``block_step(block, C_b, T)`` updates the coefficients of the spectra in
  one block of rows (rows are independent given T) and returns them with the
  chi^2 of the incoming iterate on the block and the block's contribution to
  the template update -- arrays whose size does not depend on the number of
  spectra, so blocks can be streamed from disk or reduced across workers;
* ``templates_step(T, stats, C)`` applies the template update to the summed
  statistics.

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

from ..protocols import Block, SolverProtocol
from . import forms

__all__ = ["NearlyNMF", "ShiftNMF", "ClipNMF", "ZERO_DIVISION", "Block", "minimal_shift",
           "resolve_shift"]

#: Value given to an entry whose update has a zero denominator (published code: 1e-6).
ZERO_DIVISION = 1e-6


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


class _Multiplicative(SolverProtocol):
    """Shared plumbing of the three multiplicative solvers.

    The update rules are written once, here and in the subclasses'
    ``_coef_num_den``; the block statistics they consume come from one of
    three equivalent forms (:mod:`specnmf.solvers.forms`: Gram matrices,
    the paper's dense model, or the fused compiled kernel), chosen by
    :func:`specnmf.solvers.forms.select` from ``form`` and the number of
    components q.  ``form="auto"`` picks the fused form on the CPU when
    numba is installed and ``q <= _kernels.MAX_Q``, else Gram for small q and
    dense above.

    ``n_components`` lets ``form="auto"`` decide before the first pass (the
    engine asks ``crops_blocks`` then); without it the fused form is used
    only when asked for.
    """

    name = ""
    #: the solver only ever multiplies, so exact zeros in a start stay zero
    multiplicative = True

    def __init__(self, xp, *, penalties=(), zero_division=ZERO_DIVISION, form="auto",
                 n_components=None):
        self.xp = xp
        self.penalties = tuple(penalties)
        self.zero_division = zero_division
        self.form = forms.check(form, xp)
        self.n_components = n_components
        self._forms = {}
        # the fused kernel skips each spectrum's unobserved pixels itself
        self.crops_blocks = (self._form(n_components).crops_blocks
                             and not any(p.needs_all_coefficients for p in self.penalties))

    def _form(self, q):
        """The form (:mod:`specnmf.solvers.forms`) for q components, chosen once per q."""
        form = self._forms.get(q)
        if form is None:
            form = self._forms[q] = forms.select(self.form, q, self.n_components, self.xp)
        return form

    def preferred_block_rows(self, n_pixels, n_components):
        """Spectra per in-memory block: what the form runs fastest on.

        The Gram and fused forms make no (rows, n_pixels) temporaries and
        prefer large blocks; the dense form makes several, and is fastest
        when they stay in cache.
        """
        return max(8, self._form(n_components).block_elements // max(1, n_pixels))

    def prepare_key(self):
        # the fused kernel's blocks hold observed spans, the other forms' weighted flux
        return (type(self).__name__, self.shift, self._form(self.n_components).name == "fused")

    # -- penalty hooks ---------------------------------------------------
    def _coef_splits(self, C, T, rows, C_all):
        return [p.coefficients_grad_split(C, T, self.xp, rows=rows, C_all=C_all)
                for p in self.penalties if p.acts_on_coefficients]

    def _templ_splits(self, C, T):
        return [p.templates_grad_split(C, T, self.xp) for p in self.penalties
                if p.acts_on_templates]

    # -- the update rules ---------------------------------------------------
    def coefficient_update(self, C, a, model_term, splits):
        """Eq. (18) (Nearly-NMF) or (7) (Shift-NMF) from ``a = (ivar*X') T^T`` and
        ``model_term = (ivar*(C T + y)) T^T``, with the penalties' ``splits``."""
        num, den = self._coef_num_den(a, model_term)
        if splits:
            num, den = _add_penalty_split(num, den, splits)
        return multiplicative_update(C, num, den, self.xp, self.zero_division)

    # -- the protocol ------------------------------------------------------
    takes_spans = True

    def reads_packed(self, n_components):
        """Whether ``prepare_block`` takes spans packed one after another (see
        ``SolverProtocol.reads_packed``): with the compiled form."""
        return self._form(n_components).reads_packed

    def prepare_block(self, X, ivar, spans=None):
        """Per-block constants of the form: the (shifted) data and what the form reads with it.

        ``spans``: each spectrum's observed ``(lo, hi)`` if the engine knows them.
        """
        return self._form(self.n_components).prepare(X, self._data(X), ivar, spans)

    def _data(self, X):
        return X

    def block_chi2(self, block, C, T):
        """chi^2 of the *unshifted* data of one block at (C, T) (see :mod:`specnmf.objective`)."""
        return self._form(T.shape[0]).chi2(block, C, T, self.shift)

    def block_gradient(self, block, C, T):
        """chi^2's gradient and Hessian diagonal on one block, where the form computes them."""
        return self._form(T.shape[0]).gradient(block, C, T, self.shift)

    def block_step(self, block, C, T, *, rows=slice(None), C_all=None):
        """New coefficients of one block, its template statistics, and chi^2 at (C, T).

        Returns ``(C_new, (chi2, *template_stats))``.
        """
        splits = self._coef_splits(C, T, rows, C_all) if self.penalties else ()
        return self._form(T.shape[0]).block_step(block, C, T, self, splits)

    def templates_step(self, T, stats, C=None):
        """Template update (eq. 19 or 8) from summed block statistics (``C`` only for penalties)."""
        A, model_term = self._form(T.shape[0]).template_terms(stats, T, self.shift)
        num, den = self._coef_num_den(A, model_term)
        if self.penalties:
            num, den = _add_penalty_split(num, den, self._templ_splits(C, T))
        return multiplicative_update(T, num, den, self.xp, self.zero_division)

    def state(self):
        """Iteration state beyond (C, T): none for multiplicative updates."""
        return {}

    def load_state(self, state):
        return None


class NearlyNMF(_Multiplicative):
    """Nearly-NMF, Green & Bailey eqs. (18)-(19); signed data, no shift needed.

    The +/- split is of the *total* products ``(ivar*X) T^T`` and
    ``C^T (ivar*X)``, so blocks contribute the raw products and the split is
    taken after summing.
    """

    name = "nearly"
    shift = 0.0
    #: the +/- split of the signed numerator (eq. 18), for the fused kernel
    nearly = True

    def _coef_num_den(self, a, model_term):
        xp = self.xp
        return _pos(a, xp), model_term + _neg(a, xp)


class ShiftNMF(_Multiplicative):
    """Shift-NMF, Green & Bailey eqs. (7)-(8), with a fixed scalar shift ``y``.

    The data are shifted to ``X + y >= 0`` and the model to ``C T + y``; the
    fit minimises the same chi^2 as Nearly-NMF.  Larger ``y`` converges more
    slowly (paper Fig. 2).
    """

    name = "shift"
    nearly = False

    def __init__(self, xp, *, shift, penalties=(), zero_division=ZERO_DIVISION, form="auto",
                 n_components=None):
        self.shift = float(shift)
        super().__init__(xp, penalties=penalties, zero_division=zero_division, form=form,
                         n_components=n_components)

    def _data(self, X):
        return X + self.shift if self.shift else X

    def _coef_num_den(self, a, model_term):
        return a, model_term


class ClipNMF(ShiftNMF):
    """The prior-work baseline: negative flux clipped to 0, then weighted MU (Zhu 2016).

    Included to show what the paper argues against: clipping biases the fit
    upwards where the true signal is near 0.  It minimises -- and its
    ``chi2_`` reports -- the chi^2 of the *clipped* data, the only objective
    it decreases monotonically; ``specnmf.chi2`` of the returned factors on
    the data as given measures the damage.
    """

    name = "clip"

    def __init__(self, xp, *, penalties=(), zero_division=ZERO_DIVISION, form="auto",
                 n_components=None):
        super().__init__(xp, shift=0.0, penalties=penalties, zero_division=zero_division,
                         form=form, n_components=n_components)

    def _data(self, X):
        return _pos(X, self.xp)

    def prepare_block(self, X, ivar, spans=None):
        return super().prepare_block(_pos(X, self.xp), ivar, spans)


def minimal_shift(X, ivar):
    """Smallest scalar shift ``y`` with ``X + y >= 0`` on observed pixels (``ivar > 0``).

    ``X`` and ``ivar`` are validated numpy arrays.  Returns 0 for non-negative data.
    """
    import numpy as np

    observed = X[ivar > 0]
    if observed.size == 0:
        return 0.0
    return float(max(0.0, -np.min(observed)))


def resolve_shift(shift, min_observed):
    """The shift of a Shift-NMF fit: ``shift``, or the minimal one if None.

    ``min_observed`` is the smallest observed flux (``DataSummary.min_observed``);
    a shift below ``-min_observed`` would leave ``X + shift`` negative: an error.
    """
    y_min = max(0.0, -float(min_observed))
    if shift is None:
        return y_min
    if shift < y_min:
        raise ValueError(f"shift must be at least the minimal shift -min(X) = {y_min:.6g} "
                         f"so that X + shift >= 0; got {shift!r}")
    return float(shift)
