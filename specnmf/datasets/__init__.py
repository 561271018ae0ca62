"""Datasets: small real spectra shipped with the package and simulators.

Nothing here downloads anything; bundled files live in ``datasets/data``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["load_doublet", "data_path"]


def data_path(name: str):
    """Path of a file bundled in ``specnmf/datasets/data``."""
    return resources.files(__package__).joinpath("data", name)


def load_doublet():
    """The Nearly-NMF paper's toy dataset, as published (Green & Bailey 2024).

    500 noisy exposures of a double Gaussian on 510 pixels, with inverse
    variance weights; the noise drives many pixels negative.  Returned in
    specnmf's orientation, one spectrum per row.  BSD-3-Clause, see
    ``datasets/data/LICENSE-nearly_nmf.txt``.

    Returns
    -------
    X : ndarray of shape (500, 510)
        Flux.
    ivar : ndarray of shape (500, 510)
        Inverse variance.
    """
    with data_path("doublet_dataset.npy").open("rb") as f:
        X = np.load(f, allow_pickle=False)
    with data_path("doublet_weights.npy").open("rb") as f:
        ivar = np.load(f, allow_pickle=False)
    # published orientation is pixels x exposures
    return np.ascontiguousarray(X.T), np.ascontiguousarray(ivar.T)
