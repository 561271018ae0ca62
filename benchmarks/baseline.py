r"""Reference implementations of the paper's update rules, as the published code runs them.

These are the yardstick of the benchmark suite, not part of specnmf.  They
follow the structure of the published ``nearly_nmf`` code (Green & Bailey
2024, https://github.com/dylanagreen/nearly_nmf) step for step, so that a
speed-up measured against them is a speed-up over what the paper timed:

* the paper's orientation: data ``X`` and weights ``V`` of shape
  (n_pixels, n_spectra), one spectrum per *column*; templates ``W`` of shape
  (n_pixels, n_components); coefficients ``H`` of shape (n_components, n_spectra);
* ``V * X`` computed once, before the loop;
* every iteration updates ``H`` (eq. 18 / eq. 7), then ``W`` (eq. 19 / eq. 8),
  each with plain dense products on the full (n_pixels, n_spectra) arrays:
  no Gram matrices, no blocking, no fused kernels;
* an entry whose update is 0/0 or x/0 becomes NaN or +inf and is then replaced
  by ``1e-6``, which is what the published code does with ``nan_to_num``.

The translation to specnmf's orientation is ``X_paper = X.T``,
``V_paper = ivar.T``, ``W = templates.T``, ``H = coefficients.T``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nearly_baseline", "shift_baseline", "NAN_EPS"]

#: What the published code puts in place of the NaN/+inf of a zero denominator.
NAN_EPS = 1e-6


def _positive_part(A):
    """``[A]^+``: negative entries set to 0."""
    return np.clip(A, 0.0, None)


def _negative_part(A):
    """``[A]^-``: the magnitude of negative entries, positive entries set to 0."""
    return np.clip(-A, 0.0, None)


def _ratio_update(F, num, den):
    """``F * num / den`` with NaN/+inf (from 0/0, x/0) replaced by ``NAN_EPS``.

    The division is allowed to produce NaN/inf and is cleaned afterwards, as in
    the published code; the warnings numpy would emit are silenced because
    that is the intended behaviour here, not an accident.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        out = F * num / den
    return np.nan_to_num(out, nan=NAN_EPS, posinf=NAN_EPS)


def _copies(X_paper, V_paper, W, H):
    X = np.asarray(X_paper)
    V = np.asarray(V_paper)
    W = np.array(W, dtype=X.dtype, copy=True)
    H = np.array(H, dtype=X.dtype, copy=True)
    if X.ndim != 2 or V.shape != X.shape:
        raise ValueError(f"X_paper and V_paper must be 2-d of one shape; got {X.shape} "
                         f"and {V.shape}")
    d, n = X.shape
    if W.ndim != 2 or W.shape[0] != d:
        raise ValueError(f"W must have shape (n_pixels={d}, n_components); got {W.shape}")
    if H.shape != (W.shape[1], n):
        raise ValueError(f"H must have shape (n_components={W.shape[1]}, n_spectra={n}); "
                         f"got {H.shape}")
    return X, V, W, H


def nearly_baseline(X_paper, V_paper, W, H, n_iter, callback=None):
    r"""Nearly-NMF, eqs. (18)-(19), in the published code's structure.

    .. math::

        H \leftarrow H \odot \frac{[W^T (V X)]^+}{W^T (V \odot W H) + [W^T (V X)]^-},
        \qquad
        W \leftarrow W \odot \frac{[(V X) H^T]^+}{(V \odot W H) H^T + [(V X) H^T]^-}

    Parameters
    ----------
    X_paper : ndarray of shape (n_pixels, n_spectra)
        Flux, finite everywhere (masked pixels carry ``V == 0``); may be negative.
    V_paper : ndarray of shape (n_pixels, n_spectra)
        Inverse-variance weights.
    W : ndarray of shape (n_pixels, n_components)
        Start of the templates (copied, not modified).
    H : ndarray of shape (n_components, n_spectra)
        Start of the coefficients (copied, not modified).
    n_iter : int
        Number of iterations, each an ``H`` update followed by a ``W`` update.
    callback : callable, optional
        ``callback(iteration)`` after each iteration (1-based); the benchmarks
        use it to time single iterations.  Not in the published code.

    Returns
    -------
    W : ndarray of shape (n_pixels, n_components)
    H : ndarray of shape (n_components, n_spectra)
    """
    X, V, W, H = _copies(X_paper, V_paper, W, H)
    V_X = V * X
    for it in range(int(n_iter)):
        W_VX = W.T @ V_X
        H = _ratio_update(H, _positive_part(W_VX),
                          W.T @ (V * (W @ H)) + _negative_part(W_VX))
        V_XH = V_X @ H.T
        W = _ratio_update(W, _positive_part(V_XH),
                          (V * (W @ H)) @ H.T + _negative_part(V_XH))
        if callback is not None:
            callback(it + 1)
    return W, H


def shift_baseline(X_paper, V_paper, W, H, n_iter, shift=None, callback=None):
    r"""Shift-NMF, eqs. (7)-(8), in the published code's structure.

    The data are shifted to ``X + y >= 0`` and the model to ``W H + y``:

    .. math::

        H \leftarrow H \odot \frac{W^T (V (X + y))}{W^T (V \odot (W H + y))},
        \qquad
        W \leftarrow W \odot \frac{(V (X + y)) H^T}{(V \odot (W H + y)) H^T}

    Parameters
    ----------
    X_paper, V_paper, W, H, n_iter
        As in :func:`nearly_baseline`.
    shift : float or None, default=None
        The shift ``y >= 0``.  ``None`` uses the published rule, ``y = -min(X)``
        over *all* entries when that is positive, else 0.
    callback : callable, optional
        As in :func:`nearly_baseline`.

    Returns
    -------
    W : ndarray of shape (n_pixels, n_components)
    H : ndarray of shape (n_components, n_spectra)
    """
    X, V, W, H = _copies(X_paper, V_paper, W, H)
    if shift is None:
        y = max(0.0, -float(np.min(X)))
    else:
        y = float(shift)
        if not y >= 0:
            raise ValueError(f"shift must be >= 0; got {shift!r}")
    V_X = V * (X + y)
    for it in range(int(n_iter)):
        H = _ratio_update(H, W.T @ V_X, W.T @ (V * (W @ H + y)))
        W = _ratio_update(W, V_X @ H.T, (V * (W @ H + y)) @ H.T)
        if callback is not None:
            callback(it + 1)
    return W, H
