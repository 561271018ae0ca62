"""specnmf: non-negative templates from noisy, weighted, masked, signed spectra.

Orientation follows scikit-learn: ``X`` and ``ivar`` are (n_spectra, n_pixels),
``templates_`` (n_components, n_pixels), coefficients (n_spectra, n_components);
``ivar == 0`` marks missing data.  See :mod:`specnmf.objective`.

Submodules imported on demand: :mod:`specnmf.io` (spectra files, saved
models), :mod:`specnmf.ifu` (IFU cubes), :mod:`specnmf.preprocess` (rest-frame
regridding), :mod:`specnmf.datasets`, :mod:`specnmf.plotting` (matplotlib),
:mod:`specnmf.demos`, :mod:`specnmf.interop` (specutils, astropy and hyperspy
containers in and out), :mod:`specnmf.progress` (``SpectralNMF(progress=True)``).
"""

from ._validation import MissingDataWarning
from ._version import __version__
from .estimator import SpectralNMF
from .objective import chi2, chi2_per_spectrum, reduced_chi2
from .selection import Selection, select_n_components
from .solvers import ConvergenceWarning


def load(path):
    """Load a model saved by :meth:`SpectralNMF.save` (FITS or npz; never pickle)."""
    from .io import load_model

    return load_model(path)


__all__ = [
    "SpectralNMF",
    "chi2",
    "chi2_per_spectrum",
    "reduced_chi2",
    "load",
    "select_n_components",
    "Selection",
    "ConvergenceWarning",
    "MissingDataWarning",
    "__version__",
]
