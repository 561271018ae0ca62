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

from .. import _kernels
from ..backends import is_numpy_namespace
from ..protocols import Block, SolverProtocol
from . import gram

__all__ = ["NearlyNMF", "ShiftNMF", "ClipNMF", "ZERO_DIVISION", "Block", "minimal_shift"]

#: Value given to an entry whose update has a zero denominator (published code: 1e-6).
ZERO_DIVISION = 1e-6

#: the equivalent forms of the update rules (see ``_Multiplicative``)
FORMS = ("auto", "gram", "dense", "fused")


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

    Two equivalent forms of the same update rules, chosen by the number of
    components q (``form="auto"``): the *Gram* form computes the per-spectrum
    and per-pixel Gram matrices with one BLAS-3 product each (see
    :mod:`specnmf.solvers.gram`) and never forms an (n_spectra, n_pixels)
    model; the *dense* form follows the paper (model ``C T``, then products
    with it).  Gram work grows as q^2, dense work as q, so Gram wins for small
    q (measured in ``benchmarks/``; the crossover on a 2-core x86 machine is
    near q = 8).  Both read the data several times per iteration; the *fused*
    form (:mod:`specnmf._kernels`, numba) computes the dense form's
    quantities in one sweep over each spectrum's observed pixels, and is
    what ``form="auto"`` picks on the CPU when numba is installed and
    ``q <= _kernels.MAX_Q`` (10; measured: 2.5-3x faster than the Gram form).

    ``n_components`` lets ``form="auto"`` decide before the first pass (the
    engine asks ``crops_blocks`` then); without it the fused form is used
    only when asked for.
    """

    name = ""
    #: the solver only ever multiplies, so exact zeros in a start stay zero
    multiplicative = True
    #: largest q for which ``form="auto"`` picks the Gram form
    GRAM_MAX_Q = 8

    def __init__(self, xp, *, penalties=(), zero_division=ZERO_DIVISION, form="auto",
                 n_components=None):
        self.xp = xp
        self.penalties = tuple(penalties)
        self._tprod = gram.TemplateProducts()
        self.zero_division = zero_division
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}; got {form!r}")
        if form == "fused" and not (_kernels.available() and is_numpy_namespace(xp)):
            raise ValueError("form='fused' needs numba and numpy arrays")
        self.form = form
        self.n_components = n_components
        # the fused kernel skips each spectrum's unobserved pixels itself
        self.crops_blocks = (self._form(n_components) != "fused"
                             and not any(p.needs_all_coefficients for p in self.penalties))

    def _form(self, q):
        """The form used for q components (``form="auto"``: fused if the solver was
        built for q components, else Gram for small q and dense above)."""
        if self.form != "auto":
            return self.form
        if (q is not None and q == self.n_components and q <= _kernels.MAX_Q
                and _kernels.available() and is_numpy_namespace(self.xp)):
            return "fused"
        return "gram" if q is not None and q <= self.GRAM_MAX_Q else "dense"

    def _use_gram(self, q):
        return self._form(q) == "gram"

    def preferred_block_rows(self, n_pixels, n_components):
        """Spectra per in-memory block.

        The Gram form makes no (rows, n_pixels) temporaries and its products
        are most efficient on large blocks (the fused kernel makes none
        either, and has per-call costs); the dense form makes several, and
        is fastest when they stay in cache (measured: ~16 spectra of 5700
        pixels beat both 64 and 2000 by 1.5-2.5x).
        """
        elements = (1 << 17) if self._form(n_components) == "dense" else (1 << 23)
        return max(8, elements // max(1, n_pixels))

    def prepare_key(self):
        # the fused kernel's blocks hold observed spans, the other forms' weighted flux
        return (type(self).__name__, self.shift, self._form(self.n_components) == "fused")

    # -- penalty hooks ---------------------------------------------------
    def _coef_splits(self, C, T, rows, C_all):
        return [p.coefficients_grad_split(C, T, self.xp, rows=rows, C_all=C_all)
                for p in self.penalties if p.acts_on_coefficients]

    def _templ_splits(self, C, T):
        return [p.templates_grad_split(C, T, self.xp) for p in self.penalties
                if p.acts_on_templates]

    # -- the protocol ------------------------------------------------------
    def prepare_block(self, X, ivar):
        """Per-block constants: the (shifted) data, and the weighted flux and
        per-spectrum sum ivar*X^2 (BLAS forms) or observed spans (fused form)."""
        xp = self.xp
        Xs = self._data(X)
        if self._form(self.n_components) == "fused":
            import numpy as np

            Xs = np.ascontiguousarray(Xs)
            return Block(Xs, np.ascontiguousarray(ivar, dtype=Xs.dtype), _kernels.spans(ivar))
        vx = ivar * Xs
        vx2 = xp.sum(ivar * X * X, axis=1, dtype=xp.float64)
        return Block(Xs, ivar, (vx, vx2))

    def _data(self, X):
        return X

    def block_chi2(self, block, C, T):
        """chi^2 of the *unshifted* data of one block at (C, T), accumulated in float64."""
        xp = self.xp
        if self._form(T.shape[0]) == "fused":
            # a full pass of the kernel costs less than the residual in numpy
            lo, hi = block.aux
            return _kernels.mu_pass(block.ivar, block.X, lo, hi, C, T[:, block.cols],
                                    shift=self.shift, nearly=True)[1]
        X = block.X - self.shift if self.shift else block.X
        return gram.block_chi2(X, block.ivar, C, T[:, block.cols], xp)

    def block_step(self, block, C, T, *, rows=slice(None), C_all=None):
        """New coefficients of one block, its template statistics, and chi^2 at (C, T).

        Returns ``(C_new, (chi2, *template_stats))``.
        """
        xp = self.xp
        y = self.shift
        q, d = T.shape
        if self._form(q) == "fused":
            return self._fused_step(block, C, T, rows, C_all)
        vx, vx2 = block.aux[:2]
        T_full = T
        T, Tt, PT = gram.crop(T, self._tprod(T, xp), block.cols)   # the block's pixels
        a = vx @ Tt                                  # (ivar*X') T^T
        if self._use_gram(q):
            Gp = gram.row_grams(block.ivar, T, xp, PT=PT)
            if y:
                vt = block.ivar @ Tt
                a_data = a - y * vt                  # (ivar*X) T^T of the unshifted data
            else:
                a_data = a
            if C.dtype == xp.float64:
                chi = gram.chi2_from_grams(vx2, a_data, Gp, C, xp)
            else:
                # float32 sums of products cancel badly; recompute from the residual
                chi = self.block_chi2(block, C, T_full)
            model_term = gram.gram_matvec(gram.unpack(Gp, q, xp), C, xp)
            if y:
                model_term = model_term + y * vt
        else:
            M = C @ T
            resid = (block.X - y - M) if y else (block.X - M)
            chi = float(xp.sum(block.ivar * resid * resid, dtype=xp.float64))
            model_term = (block.ivar * (M + y if y else M)) @ Tt
        num, den = self._coef_num_den(a, model_term)
        if self.penalties:
            num, den = _add_penalty_split(num, den, self._coef_splits(C, T_full, rows, C_all))
        C_new = multiplicative_update(C, num, den, xp, self.zero_division)
        stats = (gram.widen(s_, block.cols, d, xp) for s_ in self._template_stats(block, C_new, T))
        return C_new, (chi, *stats)

    def _fused_step(self, block, C, T, rows, C_all):
        pen_num = pen_den = None
        if self.penalties:
            splits = self._coef_splits(C, T, rows, C_all)
            pen_num = sum(0.5 * neg for _, neg in splits)
            pen_den = sum(0.5 * pos for pos, _ in splits)
        lo, hi = block.aux
        C_new, chi, A, D = _kernels.mu_pass(
            block.ivar, block.X, lo, hi, C, T[:, block.cols], shift=self.shift,
            nearly=self.name == "nearly", pen_num=pen_num, pen_den=pen_den,
            zero_division=self.zero_division)
        d = T.shape[1]
        return C_new, (chi, gram.widen(A, block.cols, d, self.xp), gram.widen(D, block.cols, d, self.xp))

    def _template_stats(self, block, C, T):
        xp = self.xp
        vx = block.aux[0]
        A = xp.astype(xp.matrix_transpose(C) @ vx, xp.float64)
        if self._use_gram(T.shape[0]):
            Gpix = xp.astype(gram.pixel_grams(block.ivar, C, xp), xp.float64)
            if self.shift:
                return A, Gpix, xp.astype(xp.matrix_transpose(C) @ block.ivar, xp.float64)
            return A, Gpix
        M = C @ T
        if self.shift:
            M = M + self.shift
        return A, xp.astype(xp.matrix_transpose(C) @ (block.ivar * M), xp.float64)

    def templates_step(self, T, stats, C=None):
        """Template update from summed block statistics (``C`` only for penalties)."""
        xp = self.xp
        q = T.shape[0]
        A = xp.astype(stats[0], T.dtype)
        if self._use_gram(q):
            G = gram.unpack(stats[1], q, xp, axis=0)           # (q, q, d)
            model_term = xp.astype(xp.sum(G * xp.astype(T, xp.float64)[None, :, :], axis=1), T.dtype)
            if self.shift:
                model_term = model_term + self.shift * xp.astype(stats[2], T.dtype)
        else:
            model_term = xp.astype(stats[1], T.dtype)
        num, den = self._coef_num_den(A, model_term)
        if self.penalties:
            num, den = _add_penalty_split(num, den, self._templ_splits(C, T))
        return multiplicative_update(T, num, den, xp, self.zero_division)

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

    def prepare_block(self, X, ivar):
        return super().prepare_block(_pos(X, self.xp), ivar)


def minimal_shift(X, ivar):
    """Smallest scalar shift ``y`` with ``X + y >= 0`` on observed pixels (``ivar > 0``).

    ``X`` and ``ivar`` are validated numpy arrays.  Returns 0 for non-negative data.
    """
    import numpy as np

    observed = X[ivar > 0]
    if observed.size == 0:
        return 0.0
    return float(max(0.0, -np.min(observed)))
