"""Weighted non-negative least squares for coefficients with fixed templates.

For each spectrum i this solves exactly

    min_{c >= 0}  sum_j ivar_ij (X_ij - sum_k c_k T_kj)^2,

which is what ``SpectralNMF.transform`` returns.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls as _scipy_nnls

__all__ = ["weighted_nnls"]


def weighted_nnls(X, ivar, templates):
    """Exact weighted NNLS coefficients of every spectrum.

    Parameters
    ----------
    X, ivar : ndarray of shape (n_spectra, n_pixels)
        Validated flux and inverse variance (finite, ``ivar >= 0``).
    templates : ndarray of shape (n_components, n_pixels)

    Returns
    -------
    ndarray of shape (n_spectra, n_components)
        Coefficients; a spectrum with no weight gets zeros.
    """
    n = X.shape[0]
    k = templates.shape[0]
    out = np.zeros((n, k), dtype=np.float64)
    T = np.asarray(templates, dtype=np.float64)
    for i in range(n):
        w = np.sqrt(np.asarray(ivar[i], dtype=np.float64))
        obs = w > 0
        if not obs.any():
            continue
        A = (T[:, obs] * w[obs]).T
        b = np.asarray(X[i, obs], dtype=np.float64) * w[obs]
        out[i], _ = _scipy_nnls(A, b, maxiter=50 * max(k, 3))
    return out.astype(X.dtype, copy=False)
