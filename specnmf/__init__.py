"""specnmf: non-negative templates from noisy, weighted, masked, signed spectra.

Orientation follows scikit-learn: ``X`` and ``ivar`` are (n_spectra, n_pixels),
``templates_`` (n_components, n_pixels), coefficients (n_spectra, n_components);
``ivar == 0`` marks missing data.  See :mod:`specnmf.objective`.
"""

from ._validation import MissingDataWarning
from .estimator import SpectralNMF
from .objective import chi2, chi2_per_spectrum, reduced_chi2
from .solvers import ConvergenceWarning

__version__ = "0.1.0"

__all__ = [
    "SpectralNMF",
    "chi2",
    "chi2_per_spectrum",
    "reduced_chi2",
    "ConvergenceWarning",
    "MissingDataWarning",
    "__version__",
]
