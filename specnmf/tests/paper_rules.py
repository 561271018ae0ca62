r"""The paper's update rules, written plainly: the oracle the fast paths are checked against.

Green & Bailey (2024), in the paper's orientation and notation, empca-style:
one small class, the objective and the two half-steps, nothing else.

* ``X`` (d, n): one spectrum per *column*; ``V`` (d, n): inverse variances,
  0 for missing pixels; ``W`` (d, q): templates as columns; ``H`` (q, n):
  coefficients.  specnmf's arrays are the transposes: ``X = X_specnmf.T``,
  ``V = ivar.T``, ``W = templates.T``, ``H = coefficients.T``.
* chi^2 = sum V o (X - W H)^2 (the shift leaves it unchanged, eq. 3).
* Shift-NMF, eqs. (7)-(8), with X' = X + y:
  H <- H o W^T(V o X') / W^T(V o (W H + y)),
  W <- W o (V o X') H^T / (V o (W H + y)) H^T.
* Nearly-NMF, eqs. (18)-(19), with [A]^+ = max(A, 0) and [A]^- = max(-A, 0):
  H <- H o [W^T(V o X)]^+ / (W^T(V o W H) + [W^T(V o X)]^-),
  W <- W o [(V o X) H^T]^+ / ((V o W H) H^T + [(V o X) H^T]^-).
* An entry whose denominator is 0 becomes 1e-6 (the published code's
  ``nan_to_num`` of 0/0; the published doublet outputs depend on it).

Missing flux may be NaN in specnmf's input; it is multiplied by V = 0 here,
so it is replaced by 0 first (the published code requires finite X).
Deliberately slow and literal: dense (d, n) products on every step.
"""

import numpy as np

ZERO_DIVISION = 1e-6


def _ratio(F, num, den):
    """``F o num / den``, with ``ZERO_DIVISION`` where ``den == 0``."""
    out = np.full_like(F, ZERO_DIVISION)
    np.divide(F * num, den, out=out, where=den != 0)
    return out


def _plus(A):
    return np.maximum(A, 0.0)


def _minus(A):
    return np.maximum(-A, 0.0)


class PaperNMF:
    """One fit by the paper's rules, H then W each iteration.

    Parameters
    ----------
    X, V : ndarray of shape (d, n)
    W, H : ndarray of shape (d, q), (q, n)
        The start; copied.
    rule : {"nearly", "shift"}
    y : float
        The shift of Shift-NMF (ignored by Nearly-NMF).
    """

    def __init__(self, X, V, W, H, rule="nearly", y=0.0):
        if rule not in ("nearly", "shift"):
            raise ValueError(rule)
        self.V = np.asarray(V, dtype=np.float64)
        self.X = np.where(self.V > 0, np.asarray(X, dtype=np.float64), 0.0)
        self.W = np.array(W, dtype=np.float64)
        self.H = np.array(H, dtype=np.float64)
        self.rule, self.y = rule, float(y)
        self.VX = self.V * self.X                      # computed once, as the paper's code does
        self.VXs = self.V * (self.X + self.y)          # V o X' for Shift-NMF

    def chi2(self):
        """sum V o (X - W H)^2: the objective both rules decrease."""
        return float(np.sum(self.V * (self.X - self.W @ self.H) ** 2))

    def _model(self):
        """V o (W H + y) for Shift-NMF, V o W H for Nearly-NMF."""
        return self.V * (self.W @ self.H + (self.y if self.rule == "shift" else 0.0))

    def update_H(self):
        W = self.W
        if self.rule == "shift":                       # eq. (7)
            self.H = _ratio(self.H, W.T @ self.VXs, W.T @ self._model())
        else:                                          # eq. (18)
            A = W.T @ self.VX
            self.H = _ratio(self.H, _plus(A), W.T @ self._model() + _minus(A))

    def update_W(self):
        H = self.H
        if self.rule == "shift":                       # eq. (8)
            self.W = _ratio(self.W, self.VXs @ H.T, self._model() @ H.T)
        else:                                          # eq. (19)
            A = self.VX @ H.T
            self.W = _ratio(self.W, _plus(A), self._model() @ H.T + _minus(A))

    def run(self, n_iter):
        """``n_iter`` iterations; returns chi^2 of the start and of every iterate."""
        history = [self.chi2()]
        for _ in range(n_iter):
            self.update_H()
            self.update_W()
            history.append(self.chi2())
        return np.array(history)


def paper_fit(X, ivar, coefficients, templates, n_iter, rule="nearly", y=0.0):
    """The reference fit in specnmf's orientation.

    Returns ``(coefficients, templates, chi2_history)`` after ``n_iter``
    iterations, ``chi2_history`` of length ``n_iter + 1`` (start included).
    """
    ref = PaperNMF(np.asarray(X).T, np.asarray(ivar).T, np.asarray(templates).T,
                   np.asarray(coefficients).T, rule=rule, y=y)
    history = ref.run(n_iter)
    return ref.H.T, ref.W.T, history
