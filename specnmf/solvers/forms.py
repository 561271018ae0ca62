r"""The block statistics of the multiplicative updates, in three interchangeable forms.

A multiplicative iteration (:mod:`specnmf.solvers.multiplicative`) needs, for
each block of spectra with flux ``X'`` (the solver's data: shifted by ``y``
for Shift-NMF) and weights ``ivar``:

* *row statistics* at the incoming coefficients C: ``a = (ivar*X') T^T``, the
  model term ``(ivar*(C T + y)) T^T`` (``G_i c_i + y ivar_i T^T`` in Gram
  terms) and the chi^2 of (C, T) (of the unshifted data,
  :mod:`specnmf.objective`);
* *pixel statistics* at the new coefficients, summed over blocks and turned
  into the template update's terms ``C^T (ivar*X')`` and
  ``C^T (ivar*(C T + y))`` by :meth:`template_terms`.

Each form computes exactly these; the update rules themselves (numerators,
denominators, zero divisions, penalties) stay with the solver, which each
form calls back through ``rule.coefficient_update``.

* :class:`GramForm` -- per-spectrum and per-pixel Gram matrices with one
  BLAS-3 product each (:mod:`specnmf.solvers.gram`), never an
  (n_spectra, n_pixels) model; work grows as q^2.
* :class:`DenseForm` -- the paper's form: the model ``C T``, then products with
  it; work grows as q, several (rows, n_pixels) temporaries.
* :class:`FusedForm` -- the compiled acceleration (:func:`specnmf._kernels.mu_pass`,
  numba) of the dense form: row statistics, the coefficient rule and pixel
  statistics in one sweep over each spectrum's observed pixels.  It applies
  the same rule (``rule.nearly``, ``rule.zero_division`` and the penalty
  splits); ``specnmf/tests/test_kernels.py`` holds it to the other two.

:func:`select` is the one place a form is chosen.  Every form offers
``name``, ``crops_blocks`` (whether an engine may crop blocks to the pixels
their spectra observe), ``reads_packed`` (whether ``prepare`` takes spans
packed one after another, see :meth:`FusedForm.prepare`), ``block_elements`` (elements per in-memory block it
runs fastest on), ``prepare`` (given the spans when an engine knows them),
``chi2``, ``block_step`` and ``template_terms``.
"""

from __future__ import annotations

from .. import _kernels, objective
from ..backends import is_numpy_namespace
from ..protocols import Block
from . import gram

__all__ = ["Block", "FORMS", "GRAM_MAX_Q", "GramForm", "DenseForm", "FusedForm", "check", "select"]

#: the ``form=`` values of the multiplicative solvers
FORMS = ("auto", "gram", "dense", "fused")

#: largest q for which ``form="auto"`` picks the Gram form (Gram work grows as
#: q^2, dense as q; the crossover measured on a 2-core x86 machine is near 8)
GRAM_MAX_Q = 8



def check(form, xp):
    """``form`` if it is a valid ``form=`` value for arrays of namespace ``xp``, else ValueError."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {form!r}")
    if form == "fused" and not (_kernels.available() and is_numpy_namespace(xp)):
        raise ValueError("form='fused' needs numba and numpy arrays")
    return form


def select(form, q, n_components, xp):
    """The form object for q components.

    ``form="auto"``: fused if the solver was built for q components
    (``n_components == q``, so prepared blocks and steps agree), numba is
    available, the arrays are numpy's and ``q <= _kernels.MAX_Q`` (measured:
    2.5-3x faster than the Gram form); else Gram for ``q <= GRAM_MAX_Q`` and
    dense above (or when q is not known yet).
    """
    if form == "auto":
        if (q is not None and q == n_components and q <= _kernels.MAX_Q
                and _kernels.available() and is_numpy_namespace(xp)):
            form = "fused"
        else:
            form = "gram" if q is not None and q <= GRAM_MAX_Q else "dense"
    return {"gram": GramForm, "dense": DenseForm, "fused": FusedForm}[form](xp)


def _dense_template_terms(stats, T, xp):
    """``(C^T (ivar*X'), C^T (ivar*(C T + y)))`` summed over blocks, in T's dtype."""
    return xp.astype(stats[0], T.dtype), xp.astype(stats[1], T.dtype)


def dense_rows(block, n_pixels):
    """``block`` with (n, n_pixels) rows: as it is, unless prepared from spans packed
    one after another (:meth:`FusedForm.prepare` with ``starts``), which are then
    copied into zeroed rows (for the code that reads whole rows: the fit's checks)."""
    import numpy as np

    if block.X.ndim == 2:
        return block
    lo, hi, starts = (np.asarray(a, np.int64) for a in block.aux)
    X = np.zeros((lo.size, n_pixels), block.X.dtype)
    ivar = np.zeros_like(X)
    for i, (a, b, s) in enumerate(zip(lo.tolist(), hi.tolist(), starts.tolist())):
        X[i, a:b] = block.X[s + a:s + b]
        ivar[i, a:b] = block.ivar[s + a:s + b]
    return Block(X, ivar, block.aux[:2], block.cols)


class _BlasForm:
    """What the numpy/BLAS forms share: the prepared block, chi^2 and the step's outline."""

    crops_blocks = True
    reads_packed = False
    block_elements = 1 << 23

    def __init__(self, xp):
        self.xp = xp
        self._tprod = gram.TemplateProducts()

    def prepare(self, X, Xs, ivar, spans=None):
        """The block of data ``Xs`` (X as the solver sees it) with ``ivar*Xs`` and, per
        spectrum, ``sum ivar*X^2`` (the chi^2 of a zero model); ``spans`` is not needed."""
        xp = self.xp
        return Block(Xs, ivar, (ivar * Xs, objective.spectrum_chi2(X, ivar, xp)))

    def gradient(self, block, C, T, shift):
        """None: the fit's stationarity check computes it from the block's residual."""
        return None

    def chi2(self, block, C, T, shift):
        """chi^2 of the unshifted data of ``block`` at (C, T) (T of full width)."""
        X = block.X - shift if shift else block.X
        return objective.block_chi2(X, block.ivar, C, T[:, block.cols], self.xp)

    def block_step(self, block, C, T, rule, splits):
        """New coefficients of one block and ``(chi2, *pixel statistics)`` of full width.

        ``rule.coefficient_update(C, a, model_term, splits)`` is the solver's
        update; ``splits`` the penalties' gradient splits at (C, T).
        """
        xp = self.xp
        d = T.shape[1]
        Tc, Tt, PT = gram.crop(T, self._tprod(T, xp), block.cols)   # the block's pixels
        a, model_term, chi = self.row_stats(block, C, Tc, Tt, PT, rule.shift)
        C_new = rule.coefficient_update(C, a, model_term, splits)
        stats = self.pixel_stats(block, C_new, Tc, rule.shift)
        return C_new, (chi, *(gram.widen(s, block.cols, d, xp) for s in stats))


class GramForm(_BlasForm):
    """Row and pixel statistics from the weighted Gram matrices (BLAS-3, no model)."""

    name = "gram"

    def row_stats(self, block, C, T, Tt, PT, shift):
        """``a``, the model term ``G_i c_i (+ y ivar_i T^T)`` and chi^2 at (C, T), T cropped."""
        xp = self.xp
        vx, vx2 = block.aux
        a = vx @ Tt                                  # (ivar*X') T^T
        Gp = gram.row_grams(block.ivar, T, xp, PT=PT)
        if shift:
            vt = block.ivar @ Tt
            a_data = a - shift * vt                  # (ivar*X) T^T of the unshifted data
        else:
            a_data = a
        if C.dtype == xp.float64:
            chi = objective.chi2_from_grams(vx2, a_data, Gp, C, xp)
        else:
            # float32 sums of products cancel badly; the residual does not
            X = block.X - shift if shift else block.X
            chi = objective.block_chi2(X, block.ivar, C, T, xp)
        model_term = gram.gram_matvec(gram.unpack(Gp, T.shape[0], xp), C, xp)
        if shift:
            model_term = model_term + shift * vt
        return a, model_term, chi

    def pixel_stats(self, block, C, T, shift):
        """``C^T (ivar*X')``, the packed per-pixel Grams (and ``C^T ivar`` with a shift), float64."""
        xp = self.xp
        A = xp.astype(xp.matrix_transpose(C) @ block.aux[0], xp.float64)
        Gpix = xp.astype(gram.pixel_grams(block.ivar, C, xp), xp.float64)
        if shift:
            return A, Gpix, xp.astype(xp.matrix_transpose(C) @ block.ivar, xp.float64)
        return A, Gpix

    def template_terms(self, stats, T, shift):
        """``C^T (ivar*X')`` and the model term ``G'_j t_j (+ y C^T ivar)`` from summed statistics."""
        xp = self.xp
        q = T.shape[0]
        G = gram.unpack(stats[1], q, xp, axis=0)           # (q, q, d)
        model_term = xp.astype(xp.sum(G * xp.astype(T, xp.float64)[None, :, :], axis=1), T.dtype)
        if shift:
            model_term = model_term + shift * xp.astype(stats[2], T.dtype)
        return xp.astype(stats[0], T.dtype), model_term


class DenseForm(_BlasForm):
    """Row and pixel statistics through the model ``C T``, as the paper writes them.

    Its (rows, n_pixels) temporaries are fastest when they stay in cache
    (measured: ~16 spectra of 5700 pixels beat both 64 and 2000 by 1.5-2.5x).
    """

    name = "dense"
    block_elements = 1 << 17

    def row_stats(self, block, C, T, Tt, PT, shift):
        """``a``, the model term ``(ivar*(C T + y)) T^T`` and chi^2 at (C, T), T cropped."""
        xp = self.xp
        M = C @ T
        resid = (block.X - shift - M) if shift else (block.X - M)
        chi = objective.residual_chi2(resid, block.ivar, xp)
        model_term = (block.ivar * (M + shift if shift else M)) @ Tt
        return block.aux[0] @ Tt, model_term, chi

    def pixel_stats(self, block, C, T, shift):
        """``C^T (ivar*X')`` and ``C^T (ivar*(C T + y))``, float64."""
        xp = self.xp
        A = xp.astype(xp.matrix_transpose(C) @ block.aux[0], xp.float64)
        M = C @ T
        if shift:
            M = M + shift
        return A, xp.astype(xp.matrix_transpose(C) @ (block.ivar * M), xp.float64)

    def template_terms(self, stats, T, shift):
        return _dense_template_terms(stats, T, self.xp)


class FusedForm:
    """The dense form's statistics and the coefficient rule in one compiled sweep per spectrum.

    Skips each spectrum's unobserved pixels itself, so blocks are not cropped,
    and has per-call costs, so it prefers large blocks.
    """

    name = "fused"
    crops_blocks = False
    reads_packed = True
    block_elements = 1 << 23

    def __init__(self, xp):
        self.xp = xp

    def prepare(self, X, Xs, ivar, spans=None):
        """The block as the kernel reads it: C-contiguous arrays and each spectrum's observed
        span, found here unless the engine knows it (``spans``: ``(lo, hi)``; or
        ``(lo, hi, starts)`` with 1-D ``X`` and ``ivar`` holding spectrum ``i``'s pixel
        ``j`` at ``starts[i] + j``: a packed file's spans, read where they lie)."""
        import numpy as np

        Xs = np.ascontiguousarray(Xs)
        if spans is None:
            spans = _kernels.spans(ivar)
        else:  # in the kernel's index type, as _kernels.spans returns them
            spans = tuple(np.asarray(s).astype(np.uint64, copy=False) for s in spans)
        return Block(Xs, np.ascontiguousarray(ivar, dtype=Xs.dtype), spans)

    @staticmethod
    def _spans(block):
        lo, hi, *starts = block.aux
        return lo, hi, (starts[0] if starts else None)

    def gradient(self, block, C, T, shift):
        """chi^2's ``(gC, hC, gT, hT)`` at (C, T) on ``block`` (see
        :meth:`SolverProtocol.block_gradient`): one compiled read of each span, where
        the residual in numpy needs dense float64 rows (~15 passes' time on packed files)."""
        lo, hi, starts = self._spans(block)
        return _kernels.gradient_pass(block.ivar, block.X, lo, hi, C, T[:, block.cols],
                                      shift=shift, starts=starts)

    def chi2(self, block, C, T, shift):
        # a full pass of the kernel costs less than the residual in numpy
        lo, hi, starts = self._spans(block)
        return _kernels.mu_pass(block.ivar, block.X, lo, hi, C, T[:, block.cols],
                                shift=shift, nearly=True, starts=starts)[1]

    def block_step(self, block, C, T, rule, splits):
        pen_num = pen_den = None
        if splits:
            pen_num = sum(0.5 * neg for _, neg in splits)
            pen_den = sum(0.5 * pos for pos, _ in splits)
        lo, hi, starts = self._spans(block)
        C_new, chi, A, D = _kernels.mu_pass(
            block.ivar, block.X, lo, hi, C, T[:, block.cols], shift=rule.shift,
            nearly=rule.nearly, pen_num=pen_num, pen_den=pen_den,
            zero_division=rule.zero_division, starts=starts)
        d = T.shape[1]
        return C_new, (chi, gram.widen(A, block.cols, d, self.xp), gram.widen(D, block.cols, d, self.xp))

    def template_terms(self, stats, T, shift):
        return _dense_template_terms(stats, T, self.xp)
