r"""Alternating non-negative least squares (ANLS) on the weighted objective.

With the templates fixed, the objective separates into one small quadratic
per spectrum, ``c^T G_i c - 2 a_i . c`` with the weighted Gram matrix
``G_i = T diag(ivar_i) T^T`` (q x q); with the coefficients fixed, into one per
pixel with ``G'_j = sum_i ivar_ij c_i c_i^T``.  ANLS solves each of them
*exactly* under the non-negativity constraint (batched NNLS, see
:mod:`specnmf.solvers.nnls`), so every half-step is the best possible and the
objective can only decrease.  Signed data need no special treatment: the
right-hand sides ``a_i`` may be negative.

Penalties enter through their per-entry quadratic models
(``*_quadratic``): a diagonal added to each Gram matrix and a shift of the
right-hand side.  A penalty that couples neighbouring entries (smoothness
along pixels, spatial along spaxels) is handled colour by colour (red-black
Gauss-Seidel): entries of one colour do not interact, so each colour's
subproblems are still solved exactly and the objective still cannot increase.
The coefficient half-step is one sweep of the coefficient solver
(:func:`specnmf.solvers.coefficients.from_grams`), the one ``transform`` uses.

:class:`_Alternating` is shared with the accelerated proximal-gradient solver
(:mod:`specnmf.solvers.apg`), which takes one extrapolated projected-gradient
step on the same quadratics instead of solving them.
"""

from __future__ import annotations

from .. import objective
from ..protocols import Block, SolverProtocol
from . import coefficients, gram
from .nnls import nnls_gram

__all__ = ["ANLS"]


class _Alternating(SolverProtocol):
    """Gram-based alternating solver; subclasses define ``_solve(G, b, F, which, rows)``."""

    name = ""
    multiplicative = False

    def __init__(self, xp, *, shift=None, penalties=(), n_components=None):
        self.xp = xp
        self.penalties = tuple(penalties)
        self._tprod = gram.TemplateProducts()
        # the compiled kernels form the Grams where the fit's work repays loading
        # them (the caller passes n_components then, as to the multiplicative solvers)
        self.compiled = gram.fit_kernels_apply(xp, n_components)
        # blocks may be cropped to the pixels their spectra observe (see
        # engine.InMemory), unless a penalty reads neighbouring spectra in order;
        # the compiled kernels skip each spectrum's unobserved pixels themselves
        self.crops_blocks = not (self.compiled
                                 or any(p.needs_all_coefficients for p in self.penalties))

    def prepare_key(self):
        return ("gram", self.compiled)

    def preferred_block_rows(self, n_pixels, n_components):
        """Spectra per in-memory block: large, since the Gram form makes no
        (rows, n_pixels) temporaries and its products prefer big operands."""
        return max(8, (1 << 23) // max(1, n_pixels))

    def prepare_block(self, X, ivar):
        xp = self.xp
        vx2 = objective.spectrum_chi2(X, ivar, xp)        # chi^2 at a zero model
        if self.compiled:
            # as the kernels read it: C-contiguous, with each spectrum's observed span
            ivar, spans = gram.fit_prepare(ivar)
            return Block(X, ivar, (ivar * X, vx2, spans))
        return Block(X, ivar, (ivar * X, vx2, None))

    def block_chi2(self, block, C, T):
        return objective.block_chi2(block.X, block.ivar, C, T[:, block.cols], self.xp)

    # -- template penalties as quadratic models (the coefficient ones: coefficients.py)
    def _templ_colours(self, n_pixels, like):
        for p in self.penalties:
            if p.acts_on_templates:
                colours = p.templates_colors(n_pixels)
                if len(colours) > 1:
                    return coefficients.colour_masks(colours, n_pixels, self.xp, like)
        return [None]

    def _templ_quadratic(self, C, T):
        diag = lin = None
        for p in self.penalties:
            if p.acts_on_templates:
                d, l_ = p.templates_quadratic(C, T, self.xp)
                diag = d if diag is None else diag + d
                lin = l_ if lin is None else lin + l_
        return diag, lin

    # -- the protocol ------------------------------------------------------------
    def _split_rows(self, P):
        return P, None

    def _join_rows(self, C_new, extra):
        return C_new

    def block_step(self, block, P, T, *, rows=slice(None), C_all=None):
        """Exact/proximal coefficient update of one block, its template statistics, chi^2."""
        xp = self.xp
        C, extra = self._split_rows(P)
        vx, vx2, spans = block.aux
        q, d = T.shape
        T_full = T
        T, Tt, PT = gram.crop(T, self._tprod(T, xp), block.cols)   # the block's pixels
        if spans is not None:
            # summed in float64 whatever the data's dtype; the solves then take that dtype
            Gp, a = gram.fit_row_grams(block.ivar, vx, T, spans)
            Gp, a = xp.astype(Gp, C.dtype, copy=False), xp.astype(a, C.dtype, copy=False)
        else:
            Gp = gram.row_grams(block.ivar, T, xp, PT=PT)
            a = vx @ Tt
        if C.dtype == xp.float64:
            chi = objective.chi2_from_grams(vx2, a, Gp, C, xp)
        else:
            chi = self.block_chi2(block, C, T_full)
        info = None

        def solve(Gq, b, C_now):
            nonlocal info
            F, info = self._solve(Gq, b, C_now, "coefficients", extra, info)
            return F

        # a colouring (spatial) penalty needs the current neighbours; it is
        # only allowed with all spectra in one in-memory block
        C_new, _ = coefficients.from_grams(gram.unpack(Gp, q, xp), a, T_full, C,
                                           penalties=self.penalties, xp=xp, rows=rows,
                                           C_all=C_all, sweeps=1, solve=solve)
        if spans is not None:
            A, Gpix = gram.fit_pixel_stats(block.ivar, vx, C_new, spans)
        else:
            A = xp.astype(xp.matrix_transpose(C_new) @ vx, xp.float64)
            Gpix = xp.astype(gram.pixel_grams(block.ivar, C_new, xp), xp.float64)
        return self._join_rows(C_new, info), (chi, gram.widen(A, block.cols, d, xp),
                                              gram.widen(Gpix, block.cols, d, xp))

    def templates_step(self, T, stats, C=None):
        xp = self.xp
        q, d = T.shape
        A, Gpix = stats
        G = xp.permute_dims(gram.unpack(Gpix, q, xp, axis=0), (2, 0, 1))   # (d, q, q)
        G = xp.astype(G, T.dtype)
        b0 = xp.astype(xp.matrix_transpose(A), T.dtype)                    # (d, q)
        Tt = xp.matrix_transpose(T)
        info = None
        for mask in self._templ_colours(d, T):
            diag, lin = self._templ_quadratic(C, xp.matrix_transpose(Tt))
            Gq = G if diag is None else gram.add_diagonal(G, xp.matrix_transpose(diag), xp)
            b = b0 if lin is None else b0 + xp.matrix_transpose(lin)
            F, info = self._solve(Gq, b, Tt, "templates", None, info)
            Tt = F if mask is None else xp.where(mask[:, None], F, Tt)
        self._after_templates(T, info)
        return xp.matrix_transpose(Tt)

    def _after_templates(self, T, info):
        return None

    def state(self):
        return {}

    def load_state(self, state):
        return None


class ANLS(_Alternating):
    """Alternating exact weighted NNLS: each half-step is the exact minimiser."""

    name = "anls"

    def _solve(self, G, b, F, which, extra, info):
        if self.compiled and G.dtype == self.xp.float64:
            # the compiled solves (nnls_gram(packed=True)), without the per-call cost of
            # the batched pivoting.  A singular problem (a pixel seen by few spectra),
            # whose minimisers the two methods could choose differently, has a small
            # pivot: the compiled solves hand it to the pivoting
            ku, lu, _ = gram.pairs(G.shape[-1])
            return nnls_gram(G[:, ku, lu], b, x0=F, packed=True), None
        return coefficients.exact(G, b, F, self.xp), None
