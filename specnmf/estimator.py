r"""The ``SpectralNMF`` estimator: a thin shell over the solvers.

Parameters are checked once, declaratively, at ``fit``; data are validated
once by :mod:`specnmf._validation`; the iteration is
:func:`specnmf.solvers.run`.
"""

from __future__ import annotations

import inspect
import logging
from numbers import Integral, Real

import numpy as np

from . import _validation as V
from .backends import get_namespace
from .init import INITS, check_random_state, nndsvd_init, random_init
from .objective import _chi2
from .solvers import MULTIPLICATIVE, SOLVERS, minimal_shift, run, weighted_nnls
from .solvers.multiplicative import Block

logger = logging.getLogger("specnmf")

__all__ = ["SpectralNMF"]


# -- declarative parameter checks -------------------------------------------
def _options(*allowed):
    def check(value, name):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name} must be one of {sorted(allowed)}; got {value!r}")
    check.__doc__ = f"one of {allowed}"
    return check


def _interval(kind, low=None, high=None, closed="both", allow_none=False):
    def check(value, name):
        V.check_scalar(value, name, low=low, high=high, integer=kind is Integral,
                       allow_none=allow_none, closed=closed)
    return check


def _random_state(value, name):
    check_random_state(value)


def _boolish(value, name):
    if not isinstance(value, (bool, Integral)):
        raise TypeError(f"{name} must be a bool or an int; got {value!r}")


def _dtype(value, name):
    V.check_dtype(value)


class _ParamsMixin:
    """``get_params``/``set_params``/``repr`` as in scikit-learn, without importing it."""

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        """Parameters of this estimator, as a dict (scikit-learn convention)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters; unknown names raise ``ValueError``. Returns self."""
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid parameters are {valid}")
            setattr(self, key, value)
        return self

    def __repr__(self):
        sig = inspect.signature(type(self).__init__)
        parts = []
        for name in self._get_param_names():
            default = sig.parameters[name].default
            value = getattr(self, name)
            if default is inspect.Parameter.empty or not _same(value, default):
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __sklearn_tags__(self):
        # only scikit-learn calls this, so importing it here adds no dependency
        from sklearn.utils import Tags, TargetTags, TransformerTags, InputTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(),
            input_tags=InputTags(allow_nan=True),
        )


def _same(a, b):
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:  # pragma: no cover - exotic parameter types
        return a is b


class SpectralNMF(_ParamsMixin):
    r"""Non-negative templates from noisy, weighted, masked, signed spectra.

    Finds coefficients :math:`C \ge 0` of shape (n_spectra, n_components) and
    templates :math:`T \ge 0` of shape (n_components, n_pixels) minimising

    .. math::

        \chi^2(C, T) = \sum_{ij} \mathrm{ivar}_{ij}\,(X_{ij} - [C T]_{ij})^2 ,

    where ``X`` may be negative (noise) and ``ivar == 0`` marks missing data.
    Nothing is clipped: negative flux pulls the fit down exactly as much as
    positive flux pulls it up.

    Parameters
    ----------
    n_components : int
        Number of templates, ``1 <= n_components <= min(n_spectra, n_pixels)``.
    solver : {"nearly", "shift", "clip"}, default="nearly"
        ``"nearly"``: Nearly-NMF (Green & Bailey 2024, eqs. 18-19), the
        recommended multiplicative solver for signed data.  ``"shift"``:
        Shift-NMF (eqs. 7-8) with scalar shift ``shift``; slower as the shift
        grows.  ``"clip"``: the prior-work baseline (negative flux clipped to
        0, weighted multiplicative updates of Zhu 2016), biased high where the
        signal is near 0; for comparisons only.
    max_iter : int, default=1000
        Maximum number of iterations (each updates coefficients, then templates).
    tol : float, default=1e-6
        Stop when the relative decrease of the objective over one iteration
        falls below ``tol``.  ``tol=0`` runs exactly ``max_iter`` iterations.
    init : {"random", "nndsvd", "nndsvda"}, default="random"
        Start for whichever of templates/coefficients is not given to ``fit``.
        ``"random"``: seeded uniform values at the data's scale.
        ``"nndsvd"``: non-negative double SVD of the positive part of the data
        (missing pixels filled by the pixel's weighted mean); its exact zeros
        never move under multiplicative solvers, so prefer ``"nndsvda"``
        (zeros filled with the mean level) for those.
    random_state : int, numpy.random.Generator or None, default=None
        Seed for the random start.
    dtype : {"float64", "float32"}, default="float64"
        Working precision.  chi^2 is always accumulated in float64.
    verbose : bool or int, default=False
        Log progress every 10 iterations on the ``"specnmf"`` logger.
    shift : float or None, default=None
        For ``solver="shift"`` only: the scalar shift y.  ``None`` uses the
        minimal shift ``-min(X)`` over observed pixels; a larger value is
        allowed (the paper's Fig. 2 uses 2x and 5x), a smaller one is an error.

    Attributes
    ----------
    templates_ : ndarray of shape (n_components, n_pixels)
        Fitted templates.  Pixels with zero weight in every spectrum are 0.
    components_ : ndarray of shape (n_components, n_pixels)
        Alias of ``templates_`` (scikit-learn name).
    coefficients_ : ndarray of shape (n_spectra, n_components)
        Coefficients of the training spectra; 0 for spectra without weight.
    chi2_ : ndarray of shape (n_iter_ + 1,)
        chi^2 before the first iteration and after each iteration.
    objective_ : ndarray of shape (n_iter_ + 1,)
        chi^2 plus penalties (equal to ``chi2_`` without penalties).
    n_iter_ : int
        Iterations run.
    converged_ : bool
        Whether the ``tol`` criterion stopped the fit.
    shift_ : float
        Shift used by ``solver="shift"`` (0 for the other solvers).
    n_features_in_ : int
        Number of pixels seen in ``fit``.

    Notes
    -----
    An update ``F * num / den`` whose denominator is exactly 0 sets the entry
    to 1e-6, as the published implementation does when it replaces the
    NaN/inf of 0/0 (see :mod:`specnmf.solvers.multiplicative`); with that rule
    the published doublet outputs are reproduced to ``numpy.allclose``.

    References
    ----------
    D. Green & S. Bailey, "Algorithms for Non-Negative Matrix Factorization on
    Noisy Data With Negative Values", IEEE TSP (2024), arXiv:2311.04855.

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf import SpectralNMF
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.uniform(size=(50, 2)) @ rng.uniform(size=(2, 40))
    >>> ivar = np.full(truth.shape, 100.0)
    >>> X = truth + rng.normal(scale=0.1, size=truth.shape)   # some X < 0
    >>> model = SpectralNMF(2, random_state=0, max_iter=200).fit(X, ivar)
    >>> model.templates_.shape, model.coefficients_.shape
    ((2, 40), (50, 2))
    >>> bool(model.chi2_[-1] < model.chi2_[0])
    True
    """

    _parameter_constraints = {
        "n_components": _interval(Integral, 1),
        "solver": _options(*SOLVERS),
        "max_iter": _interval(Integral, 0),
        "tol": _interval(Real, 0),
        "init": _options(*INITS),
        "random_state": _random_state,
        "dtype": _dtype,
        "verbose": _boolish,
        "shift": _interval(Real, 0, allow_none=True),
    }

    def __init__(self, n_components, *, solver="nearly", max_iter=1000, tol=1e-6,
                 init="random", random_state=None, dtype="float64", verbose=False,
                 shift=None):
        self.n_components = n_components
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose
        self.shift = shift

    # -- validation ----------------------------------------------------------
    def _validate_params(self):
        for name, check in self._parameter_constraints.items():
            check(getattr(self, name), name)
        if self.shift is not None and self.solver != "shift":
            raise ValueError(f"shift is only used by solver='shift'; got solver={self.solver!r} "
                             f"with shift={self.shift!r}")

    @property
    def components_(self):
        """Alias of ``templates_`` (scikit-learn's name)."""
        return self.templates_

    def _check_fitted(self):
        if not hasattr(self, "templates_"):
            raise AttributeError(
                f"this {type(self).__name__} instance is not fitted yet; call fit first")

    # -- fitting -------------------------------------------------------------
    def _start(self, X, ivar, templates, coefficients, dt):
        n, d = X.shape
        k = self.n_components
        if templates is not None:
            templates = V.check_factor(templates, "templates", nrows=k, ncols=d, dtype=dt)
        if coefficients is not None:
            coefficients = V.check_factor(coefficients, "coefficients", nrows=n, ncols=k, dtype=dt)
        if templates is not None and coefficients is not None:
            return coefficients, templates
        rng = check_random_state(self.random_state)
        if self.init == "random":
            C0, T0 = random_init(X, ivar, k, rng, dt)
        else:
            C0, T0 = nndsvd_init(X, ivar, k, rng, dt, fill_zeros=self.init == "nndsvda")
        if templates is None and coefficients is None:
            return C0, T0
        # one factor given: rescale the initialised other one to the data
        if templates is None:
            templates = _rescale(T0.T, X.T, ivar.T, coefficients.T).T
        else:
            coefficients = _rescale(C0, X, ivar, templates)
        return coefficients, templates

    def _solver_shift(self, X, ivar):
        if self.solver != "shift":
            return 0.0
        y_min = minimal_shift(X, ivar)
        if self.shift is None:
            return y_min
        if self.shift < y_min:
            raise ValueError(f"shift must be at least the minimal shift -min(X) = {y_min:.6g} "
                             f"so that X + shift >= 0; got {self.shift!r}")
        return float(self.shift)

    def fit(self, X, ivar=None, *, templates=None, coefficients=None):
        """Fit templates and coefficients to the spectra.

        Parameters
        ----------
        X : array-like of shape (n_spectra, n_pixels)
            Flux; may be negative.  NaN/inf allowed only where ``ivar == 0``.
        ivar : array-like of shape (n_spectra, n_pixels), optional
            Inverse variance, >= 0; 0 marks missing pixels.  ``None``: unit weights.
        templates : array-like of shape (n_components, n_pixels), optional
            Start for the templates (non-negative).
        coefficients : array-like of shape (n_spectra, n_components), optional
            Start for the coefficients (non-negative).  If only one of the two
            is given, the other is initialised with ``init`` and rescaled by
            weighted least squares to the data.

        Returns
        -------
        self
        """
        self._validate_params()
        dt = V.check_dtype(self.dtype)
        X, ivar = V.check_spectra(X, ivar, dtype=dt)
        n, d = X.shape
        V.check_n_components(self.n_components, n, d)
        empty_spectra, empty_pixels = V.warn_missing(ivar)
        shift = self._solver_shift(X, ivar)
        C, T = self._start(X, ivar, templates, coefficients, dt)

        xp = get_namespace(X)
        solver = SOLVERS[self.solver](xp, shift=shift)
        blocks = [(slice(None), solver.prepare_block(X, ivar))]
        result = run(solver, lambda: blocks, C, T, max_iter=self.max_iter, tol=self.tol,
                     xp=xp, verbose=self.verbose)
        C, T = np.asarray(result.coefficients), np.asarray(result.templates)
        # entries no data constrain: defined as 0 (the solvers leave 1e-6 there)
        C[empty_spectra, :] = 0
        T[:, empty_pixels] = 0

        self.templates_ = T
        self.coefficients_ = C
        self.chi2_ = np.asarray(result.history["chi2"], dtype=np.float64)
        self.objective_ = np.asarray(result.objective, dtype=np.float64)
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.shift_ = shift
        self.n_features_in_ = d
        return self

    def fit_transform(self, X, ivar=None, *, templates=None, coefficients=None):
        """Fit and return the coefficients of the training spectra, ``coefficients_``."""
        return self.fit(X, ivar, templates=templates, coefficients=coefficients).coefficients_

    def transform(self, X, ivar=None):
        """Coefficients of (new) spectra with the templates fixed.

        The exact weighted non-negative least-squares solution per spectrum:
        ``argmin_{c >= 0} sum_j ivar_j (x_j - c @ templates_[:, j])^2``.

        Parameters
        ----------
        X, ivar : array-like of shape (n_spectra, n_pixels)
            As in :meth:`fit`; ``n_pixels`` must equal ``n_features_in_``.

        Returns
        -------
        ndarray of shape (n_spectra, n_components)
        """
        self._check_fitted()
        X, ivar = V.check_spectra(X, ivar, dtype=self.templates_.dtype)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} pixels but the model was fitted with "
                             f"{self.n_features_in_}")
        return weighted_nnls(X, ivar, self.templates_)

    def inverse_transform(self, coefficients):
        """Model spectra ``coefficients @ templates_``, of shape (n_spectra, n_pixels)."""
        self._check_fitted()
        C = V.check_factor(coefficients, "coefficients", ncols=self.templates_.shape[0],
                           dtype=self.templates_.dtype, allow_negative=True)
        return C @ self.templates_

    def score(self, X, ivar=None):
        """Negative chi^2 of the spectra after :meth:`transform` (higher is better)."""
        C = self.transform(X, ivar)
        X, ivar = V.check_spectra(X, ivar, dtype=self.templates_.dtype)
        return -_chi2(X, ivar, C, self.templates_, np)


def _rescale(C0, X, ivar, T):
    """Scale each row of ``C0`` so that ``C0 @ T`` best fits ``X`` (weighted, >= 0)."""
    M = C0 @ T
    num = np.sum(ivar * X * M, axis=1)
    den = np.sum(ivar * M * M, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    scale = np.where(scale > 0, scale, 1.0)
    return C0 * scale[:, None]
