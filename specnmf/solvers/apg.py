r"""Alternating accelerated proximal gradient with restart (Xu & Yin 2013).

The block prox-linear method that the SpectralUnmix note names: each block of
variables (one spectrum's coefficients, one pixel's template column) takes a
projected gradient step from an *extrapolated* point

    x_hat = x_k + w_k (x_k - x_{k-1}),    x_{k+1} = max(0, x_hat - grad f(x_hat) / L),

with the block Lipschitz constant L = 2 lambda_max(G) of its quadratic
``f(x) = x^T G x - 2 b . x`` (the same Gram matrices as ANLS, penalties folded
in through their quadratic models) and the extrapolation weight
``w_k = min((t_{k-1} - 1) / t_k, delta * sqrt(L_{k-1} / L_k))`` of Xu & Yin's
eq. (1.4)-(1.5), delta = 0.9999.

Where the compiled kernels apply (numpy, float64), lambda_max is found by
Laguerre's method from above (:func:`specnmf._kernels.largest_eigenvalues`:
every iterate is an upper bound, so the step never overshoots) and the whole
step is one compiled sweep (:func:`specnmf._kernels.apg_steps`); elsewhere by
``eigvalsh`` and array operations.

Restart: Xu & Yin redo a step without extrapolation when it increases the
objective.  Here every block's objective is an exact quadratic, so the check is
made per block, at no extra pass over the data: a block whose extrapolated
step would increase its ``f`` takes the plain projected-gradient step instead,
which cannot increase it (step 1/L).  Hence the total objective never
increases, like for the other solvers.
"""

from __future__ import annotations

import math

from .. import _kernels
from . import gram
from .anls import _Alternating

__all__ = ["APG"]

DELTA = 0.9999


class APG(_Alternating):
    """Alternating accelerated proximal gradient with per-block monotone restart."""

    name = "apg"

    def __init__(self, xp, *, shift=None, penalties=(), n_components=None):
        super().__init__(xp, penalties=penalties, n_components=n_components)
        self._t = 1.0
        self._omega = 0.0
        self._C_prev = self._L_prev = self._T_prev = self._LT_prev = None

    # -- state -----------------------------------------------------------------
    def state(self):
        return {"t": self._t, "omega": self._omega, "C_prev": self._C_prev,
                "L_prev": self._L_prev, "T_prev": self._T_prev, "LT_prev": self._LT_prev}

    def load_state(self, state):
        self._t = float(state.get("t", 1.0))
        self._omega = float(state.get("omega", 0.0))
        for key in ("C_prev", "L_prev", "T_prev", "LT_prev"):
            setattr(self, "_" + key, state.get(key))

    # -- per-spectrum state travels with the rows ------------------------------------
    def row_inputs(self, C):
        xp = self.xp
        t_new = (1 + math.sqrt(1 + 4 * self._t * self._t)) / 2
        self._omega = (self._t - 1) / t_new
        self._t = t_new
        C_prev = C if self._C_prev is None else self._C_prev
        L_prev = (xp.zeros((C.shape[0], 1), dtype=C.dtype) if self._L_prev is None
                  else xp.reshape(self._L_prev, (-1, 1)))
        return xp.concat([C, C_prev, L_prev], axis=1)

    def _split_rows(self, P):
        q = (P.shape[1] - 1) // 2
        return P[:, :q], (P[:, q:2 * q], P[:, 2 * q])

    def _join_rows(self, C_new, L):
        return self.xp.concat([C_new, self.xp.reshape(L, (-1, 1))], axis=1)

    def row_outputs(self, P_new, C_old):
        q = P_new.shape[1] - 1
        self._C_prev = C_old
        self._L_prev = P_new[:, q]
        return P_new[:, :q]

    def _after_templates(self, T, L):
        self._T_prev = T
        self._LT_prev = L

    # -- one extrapolated projected-gradient step on stacked quadratics ----------------
    def _solve(self, G, b, F, which, extra, info):
        xp = self.xp
        if which == "coefficients":
            F_prev, L_prev = extra
        else:
            F_prev = F if self._T_prev is None else xp.matrix_transpose(self._T_prev)
            L_prev = xp.zeros(F.shape[0], dtype=F.dtype) if self._LT_prev is None else self._LT_prev
        if self.compiled and G.dtype == xp.float64:
            # in one compiled sweep, lambda_max from above (to ~1e-14 relative)
            # without LAPACK's cost per small matrix
            return _kernels.apg_steps(G, b, F, F_prev, L_prev, self._omega, DELTA)
        L = 2 * xp.linalg.eigvalsh(G)[:, -1]
        live = L > 0
        safe_L = xp.where(live, L, xp.ones_like(L))
        ratio = xp.sqrt(xp.clip(L_prev, min=0) / safe_L)
        w = xp.clip(DELTA * ratio, max=self._omega)
        w = xp.where(live, w, xp.zeros_like(w))

        def objective(x):
            return xp.sum(x * gram.gram_matvec(G, x, xp), axis=1) - 2 * xp.sum(b * x, axis=1)

        def step(x):
            return xp.clip(x - 2 * (gram.gram_matvec(G, x, xp) - b) / safe_L[:, None], min=0)

        F_hat = F + w[:, None] * (F - F_prev)
        F_try = step(F_hat)
        F_plain = step(F)
        worse = objective(F_try) > objective(F)
        F_new = xp.where(worse[:, None], F_plain, F_try)
        # a block without curvature (no data, no penalty) has nothing to fit
        F_new = xp.where(live[:, None], F_new, F)
        return F_new, L
