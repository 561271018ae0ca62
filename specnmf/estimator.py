r"""The ``SpectralNMF`` estimator: parameters, validation and orchestration.

Parameters are checked once, declaratively, at ``fit`` (scikit-learn's
conventions come from :mod:`specnmf._params`); data are validated once by
:mod:`specnmf._validation`; the start is :mod:`specnmf.init`'s, the iteration
:func:`specnmf.solvers.run`, the checkpoints :mod:`specnmf.checkpoint`'s.
"""

from __future__ import annotations

import logging
from numbers import Integral, Real

import numpy as np

from . import _kernels
from . import _validation as V
from . import interop
from ._params import ParamsMixin
from ._validation import boolish, dtype_name, in_interval, one_of, path_or_none, random_state
from ._validation import check_spatial_shape as _check_spatial_shape
from .backends import BACKENDS, asarray, is_numpy_namespace, resolve_backend, to_numpy
from .engine import make_engine
from .init import INITS, check_random_state, initial_factors, sequential_start
from .objective import _chi2
from .progress import progress_callback
from .solvers import MULTIPLICATIVE, SOLVERS, run

logger = logging.getLogger("specnmf")

__all__ = ["SpectralNMF"]


def _sigma(cov):
    """1-sigma errors from stacked covariance matrices (n, k, k)."""
    return np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))


class SpectralNMF(ParamsMixin):
    r"""Non-negative templates from noisy, weighted, masked, signed spectra.

    Finds coefficients :math:`C \ge 0` of shape (n_spectra, n_components) and
    templates :math:`T \ge 0` of shape (n_components, n_pixels) minimising

    .. math::

        \chi^2(C, T) + P(C, T), \qquad
        \chi^2(C, T) = \sum_{ij} \mathrm{ivar}_{ij}\,(X_{ij} - [C T]_{ij})^2 ,

    where ``X`` may be negative (noise), ``ivar == 0`` marks missing data and
    ``P`` are the optional penalties (``smoothness``, ``sparsity``,
    ``spatial``; defined in :mod:`specnmf.penalties`), each invariant under
    rescaling a component and measured in units of the mean observed ``ivar``,
    so their strengths do not depend on flux units.  Nothing is clipped:
    negative flux pulls the fit down exactly as much as positive flux pulls it up.

    Parameters
    ----------
    n_components : int
        Number of templates, ``1 <= n_components <= min(n_spectra, n_pixels)``.
    solver : {"nearly", "shift", "clip", "anls", "apg"}, default="nearly"
        ``"nearly"``: Nearly-NMF (Green & Bailey 2024, eqs. 18-19), the
        published multiplicative rule.  ``"shift"``: Shift-NMF (eqs. 7-8) with
        scalar shift ``shift``; slower as the shift grows.  ``"clip"``: the
        prior-work baseline (negative flux clipped to 0, weighted
        multiplicative updates of Zhu 2016), biased high where the signal is
        near 0; for comparisons only (its ``chi2_`` is that of the clipped
        data, the objective it decreases).  ``"anls"``: exact alternating weighted
        NNLS, the fastest to converge for few components.  ``"apg"``:
        alternating accelerated proximal gradient (Xu & Yin 2013) with
        restart.  All minimise the same objective and never increase it.
    max_iter : int, default=1000
        Maximum number of iterations (each updates coefficients, then templates).
    tol : float, default=1e-6
        Stop when the relative decrease of the objective over one iteration
        falls below ``tol`` (``patience`` times in a row).  ``tol=0`` runs
        exactly ``max_iter`` iterations.
    init : {"random", "nndsvd", "nndsvda", "sequential"}, default="random"
        Start for whichever of templates/coefficients is not given to ``fit``.
        ``"random"``: seeded uniform values at the data's scale.
        ``"nndsvd"``: non-negative double SVD of the positive part of the data
        (missing pixels filled by the pixel's weighted mean); its exact zeros
        would never move under the multiplicative solvers (``"nearly"``,
        ``"shift"``, ``"clip"``), so for those it is ``"nndsvda"`` (zeros
        filled with the mean level; a warning is logged).  ``"sequential"``: the
        paper's sequential build -- one template (flat start, random
        coefficients) for 50 iterations, then a flat template and random
        coefficients are added and all are trained together for 50 more, up
        to ``n_components``; then the fit proper runs.  Templates come out
        roughly ordered by explained variance.  ``chi2_`` records the final
        stage only.
    random_state : int, numpy.random.Generator or None, default=None
        Seed for random starts and restarts.
    dtype : {"float64", "float32"}, default="float64"
        Working precision.  chi^2 and template statistics are accumulated in
        float64 whatever the precision.
    verbose : bool or int, default=False
        Log progress every 10 iterations on the ``"specnmf"`` logger.
    shift : float or None, default=None
        For ``solver="shift"`` only: the scalar shift y.  ``None`` uses the
        minimal shift ``-min(X)`` over observed pixels; a larger value is
        allowed (the paper's Fig. 2 uses 2x and 5x), a smaller one is an error.
    smoothness, sparsity, spatial : float, default=0.0
        Penalty strengths (:mod:`specnmf.penalties`), >= 0.  ``spatial`` needs
        ``fit(..., spatial_shape=(ny, nx))`` and all spectra in memory.
    n_init : int, default=1
        Number of restarts from different random starts; the fit with the
        lowest final objective is kept.
    patience : int, default=1
        Consecutive iterations below ``tol`` needed to stop.
    block_size : int or None, default=None
        Spectra per block of the pass over the data.  Sets the peak memory of
        fits of data on disk (np.memmap, h5py, zarr, FITS memmap) and the task
        size of Dask fits; ``None`` chooses from the number of pixels.
    backend : {"numpy", "array_api_strict", "cupy", "torch"}, default="numpy"
        Array library the iterations run on; ``"cupy"``/``"torch"`` keep the
        data on the GPU across iterations.  Results are numpy arrays.
    checkpoint : path or None, default=None
        Write the state of the fit here every ``checkpoint_every`` iterations
        (atomically); ``fit(..., resume=True)`` continues from it.
    checkpoint_every : int, default=10
    sequential_iter : int, default=50
        Iterations per stage of ``init="sequential"`` (the paper's ~50).
    progress : bool, default=False
        Show a progress bar (iteration / ``max_iter``, objective, ETA): tqdm
        (``tqdm.auto``, a widget in notebooks) when installed, else a text
        bar on a terminal, else log lines on ``"specnmf.progress"``
        (:mod:`specnmf.progress`).

    Attributes
    ----------
    templates_ : ndarray of shape (n_components, n_pixels)
        Fitted templates.  Pixels with zero weight in every spectrum are 0.
    components_ : ndarray of shape (n_components, n_pixels)
        Alias of ``templates_`` (scikit-learn name).
    coefficients_ : ndarray of shape (n_spectra, n_components)
        Coefficients of the training spectra; 0 for spectra without weight.
    chi2_ : ndarray of shape (``n_iter_`` + 1,)
        chi^2 before the first iteration and after each iteration.
    objective_ : ndarray of shape (``n_iter_`` + 1,)
        chi^2 plus penalties (equal to ``chi2_`` without penalties).
    history_ : dict of ndarray
        ``"chi2"`` and each active penalty's value, per iteration.
    n_iter_ : int
        Iterations run.
    converged_ : bool
        Whether the ``tol`` criterion stopped the fit at a stationary point,
        ``stationarity_ <= sqrt(tol)`` (if ``tol`` stopped it elsewhere, a
        ``ConvergenceWarning`` says so and this is False).
    stationarity_ : float
        First-order (KKT) residual of the result: the size of a projected,
        diagonally scaled gradient step on the objective relative to the
        factors, 0 exactly at a KKT point, independent of units and of how a
        component's scale is split (see docs/solvers.md, "Traps").
    n_reseeds_ : int
        How many times a dead component (zero template or coefficients) was
        given a new start from the largest positive residual.
    dead_components_ : ndarray of int
        Components still dead at the end (then a ``ConvergenceWarning`` was issued).
    interrupted_ : bool
        Whether the fit was stopped by Ctrl-C (the model holds the last
        complete iterate).
    shift_ : float
        Shift used by ``solver="shift"`` (0 for the other solvers).
    ivar_scale_ : float
        Mean observed inverse variance, the unit of the penalties.
    wavelength_ : ndarray of shape (n_pixels,) or None
    wavelength_unit_, flux_unit_ : str or None
        Units of ``wavelength_`` and of the flux (e.g. ``"Angstrom"``), when
        fitted on a specutils/astropy container or with a ``Quantity``
        wavelength; ``transform`` checks a container's spectral axis against
        them (:mod:`specnmf.interop`).
    spatial_shape_ : tuple or None
    n_features_in_ : int
        Number of pixels seen in ``fit``.

    Notes
    -----
    A multiplicative update with a zero denominator sets the entry to 1e-6, as
    the published code does (:mod:`specnmf.solvers.multiplicative`).

    References
    ----------
    D. Green & S. Bailey, "Algorithms for Non-Negative Matrix Factorization on
    Noisy Data With Negative Values", IEEE TSP (2024), arXiv:2311.04855.
    Y. Xu & W. Yin, SIAM J. Imaging Sciences 6, 1758 (2013).

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf import SpectralNMF
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.uniform(size=(50, 2)) @ rng.uniform(size=(2, 40))
    >>> ivar = np.full(truth.shape, 100.0)
    >>> X = truth + rng.normal(scale=0.1, size=truth.shape)   # some X < 0
    >>> model = SpectralNMF(2, random_state=0, max_iter=200).fit(X, ivar=ivar)
    >>> model.templates_.shape, model.coefficients_.shape
    ((2, 40), (50, 2))
    >>> bool(model.chi2_[-1] < model.chi2_[0])
    True
    """

    _parameter_constraints = {
        "n_components": in_interval(Integral, 1),
        "solver": one_of(*SOLVERS),
        "max_iter": in_interval(Integral, 0),
        "tol": in_interval(Real, 0),
        "init": one_of(*INITS, "sequential"),
        "random_state": random_state,
        "dtype": dtype_name,
        "verbose": boolish,
        "progress": boolish,
        "shift": in_interval(Real, 0, allow_none=True),
        "smoothness": in_interval(Real, 0),
        "sparsity": in_interval(Real, 0),
        "spatial": in_interval(Real, 0),
        "n_init": in_interval(Integral, 1),
        "patience": in_interval(Integral, 1),
        "block_size": in_interval(Integral, 1, allow_none=True),
        "backend": one_of(*BACKENDS),
        "checkpoint": path_or_none,
        "checkpoint_every": in_interval(Integral, 1),
        "sequential_iter": in_interval(Integral, 0),
    }

    def __init__(self, n_components, *, solver="nearly", max_iter=1000, tol=1e-6,
                 init="random", random_state=None, dtype="float64", verbose=False,
                 shift=None, smoothness=0.0, sparsity=0.0, spatial=0.0, n_init=1,
                 patience=1, block_size=None, backend="numpy", checkpoint=None,
                 checkpoint_every=10, sequential_iter=50, progress=False):
        self.n_components = n_components
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose
        self.shift = shift
        self.smoothness = smoothness
        self.sparsity = sparsity
        self.spatial = spatial
        self.n_init = n_init
        self.patience = patience
        self.block_size = block_size
        self.backend = backend
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.sequential_iter = sequential_iter
        self.progress = progress

    # -- validation ----------------------------------------------------------
    def _validate_params(self):
        super()._validate_params()
        if self.shift is not None and self.solver != "shift":
            raise ValueError(f"shift is only used by solver='shift'; got solver={self.solver!r} "
                             f"with shift={self.shift!r}")

    @property
    def components_(self):
        """Alias of ``templates_`` (scikit-learn's name)."""
        return self.templates_

    def _check_fitted(self):
        if not hasattr(self, "templates_"):
            raise V.NotFittedError(
                f"this {type(self).__name__} instance is not fitted yet; call fit first")

    # -- fitting -------------------------------------------------------------
    def _penalties(self, ivar_scale, spatial_shape):
        if not (self.smoothness or self.sparsity or self.spatial):
            return ()
        from .penalties import make_penalties

        return make_penalties(smoothness=self.smoothness, sparsity=self.sparsity,
                              spatial=self.spatial, spatial_shape=spatial_shape,
                              ivar_scale=ivar_scale)

    def _solver_shift(self, summary):
        if self.solver != "shift":
            return 0.0
        y_min = max(0.0, -summary.min_observed)
        if self.shift is None:
            return y_min
        if self.shift < y_min:
            raise ValueError(f"shift must be at least the minimal shift -min(X) = {y_min:.6g} "
                             f"so that X + shift >= 0; got {self.shift!r}")
        return float(self.shift)

    def fit(self, X, y=None, *, ivar=None, templates=None, coefficients=None, wavelength=None,
            spatial_shape=None, resume=False, callback=None):
        """Fit templates and coefficients to the spectra.

        Parameters
        ----------
        X : array-like of shape (n_spectra, n_pixels)
            Flux; may be negative.  NaN/inf allowed only where ``ivar == 0``.
            Arrays on disk (``np.memmap``, h5py/zarr datasets, FITS memmap) are
            streamed in blocks of ``block_size`` spectra; dask arrays run on
            the active Dask scheduler.  A specutils ``Spectrum``, astropy
            ``NDData``/``Quantity`` or hyperspy ``Signal1D`` brings its own
            ``ivar`` (uncertainty, mask), ``wavelength`` and units
            (:mod:`specnmf.interop`).
        y : None
            Ignored (scikit-learn's target slot, so that ``Pipeline`` and
            ``GridSearchCV`` can call ``fit(X, y)``).  An array shaped like
            ``X`` here is an error: pass inverse variances as ``ivar=``.
        ivar : array-like of shape (n_spectra, n_pixels), optional (keyword-only)
            Inverse variance, >= 0; 0 marks missing pixels.  ``None``: unit
            weights.  Routed by scikit-learn meta-estimators after
            ``set_fit_request(ivar=True)``.
        templates : array-like of shape (n_components, n_pixels), optional
            Start for the templates (non-negative).
        coefficients : array-like of shape (n_spectra, n_components), optional
            Start for the coefficients (non-negative).  If only one of the two
            is given, the other is initialised with ``init`` and rescaled by
            weighted least squares to the data.
        wavelength : array-like of shape (n_pixels,), optional
            Kept as ``wavelength_`` (for plots and saved models); the unit of
            an astropy ``Quantity`` is kept as ``wavelength_unit_``.
        spatial_shape : tuple (ny, nx), optional
            Grid of the spectra (row = y * nx + x) for the ``spatial`` penalty.
        resume : bool, default=False
            Continue from ``checkpoint`` if that file exists (it must match the
            data's shape and the settings).
        callback : callable, optional
            ``callback(iteration, coefficients, templates, terms)`` after each
            iteration; ``terms`` maps "chi2" and each penalty to its value.
            Returning True stops the fit.

        Returns
        -------
        self
        """
        V.check_y(y, X, "fit")
        X, ivar, wavelength, units = interop.fit_inputs(X, ivar, wavelength)
        self._validate_params()
        dt = V.check_dtype(self.dtype)
        xp, device = resolve_backend(self.backend)
        engine = make_engine(X, ivar, block_size=self.block_size, dtype=dt, xp=xp, device=device)
        n, d = engine.n_spectra, engine.n_pixels
        V.check_n_components(self.n_components, n, d)
        k = self.n_components
        wavelength = V.check_wavelength(wavelength, d)
        if spatial_shape is not None:
            spatial_shape = _check_spatial_shape(spatial_shape, n)
        if templates is not None:
            templates = V.check_factor(templates, "templates", nrows=k, ncols=d, dtype=dt)
        if coefficients is not None:
            coefficients = V.check_factor(coefficients, "coefficients", nrows=n, ncols=k, dtype=dt)
        if self.n_init > 1 and templates is not None and coefficients is not None:
            raise ValueError("n_init > 1 needs random starts; got both templates and coefficients")
        if self.checkpoint is not None and self.n_init > 1:
            raise ValueError("checkpoint needs n_init=1 (one fit to continue)")

        summary = engine.scan()
        empty_spectra, empty_pixels = V.warn_empty(summary.empty_spectra, summary.empty_pixels)
        shift = self._solver_shift(summary)
        penalties = self._penalties(summary.ivar_scale, spatial_shape)
        for p in penalties:
            p.check(self.solver, n, d, in_memory=engine.in_memory)
        coupled = any(p.needs_all_coefficients for p in penalties)

        def to_xp(a):
            return a if is_numpy_namespace(xp) else asarray(a, xp, dtype=dt, device=device)

        def solve(C, T, max_iter, tol, callback=None, **kw):
            # the fused kernel for this many components, when the fit's work can repay
            # loading it (see specnmf._kernels.MIN_WORK); otherwise the BLAS forms
            compiled = is_numpy_namespace(xp) and _kernels.worthwhile(n * d * max(1, max_iter))
            solver = SOLVERS[self.solver](xp, shift=shift, penalties=penalties,
                                           n_components=C.shape[1] if compiled else None)
            engine.plan(solver, C.shape[1], coupled=coupled)
            with progress_callback(self.progress, max_iter, callback,
                                   start=kw.get("start_iter", 0),
                                   desc=f"specnmf {self.solver} k={C.shape[1]}") as callback:
                return run(solver, engine, to_xp(C), to_xp(T), max_iter=max_iter, tol=tol,
                           patience=self.patience, penalties=penalties, xp=xp,
                           verbose=self.verbose, callback=callback, **kw)

        save = resumed = None
        if self.checkpoint is not None or resume:
            # imported here: its hashing and zip modules would slow down `import specnmf`
            from .checkpoint import checkpointer, fingerprint, resume_state

            # the settings that change the iterates identify a checkpoint
            fp = None if self.checkpoint is None else fingerprint(n, d, {
                key: value for key, value in self.get_params().items()
                if key not in ("max_iter", "tol", "patience", "verbose", "progress", "checkpoint",
                               "checkpoint_every", "block_size")})
            save = checkpointer(self.checkpoint, self.checkpoint_every, fp)
            resumed = resume_state(self.checkpoint, fp, f"{n} spectra x {d} pixels, "
                                   f"{self.get_params()}") if resume else None
        if resumed is not None:
            result = solve(resumed["C"], resumed["T"], self.max_iter, self.tol,
                           callback=callback, checkpoint=save,
                           start_iter=resumed["iteration"], history=resumed["history"],
                           solver_state=resumed["state"])
        else:
            rng = check_random_state(self.random_state)
            best = None
            for _ in range(self.n_init):
                if self.init == "sequential" and (templates is None or coefficients is None):
                    C, T, stopped = sequential_start(
                        lambda C, T: solve(C, T, self.sequential_iter, 0.0), (n, d), k, rng, dt,
                        data_scale=summary.data_scale)
                    if stopped is not None:
                        best = stopped
                        break
                else:
                    C, T = initial_factors(
                        self.init, (n, d), k, rng, dt, data_scale=summary.data_scale,
                        read=engine.read_all if engine.in_memory else None,
                        templates=templates, coefficients=coefficients,
                        multiplicative_solver=self.solver if self.solver in MULTIPLICATIVE else None)
                result = solve(C, T, self.max_iter, self.tol, callback=callback, checkpoint=save)
                if best is None or result.objective[-1] < best.objective[-1]:
                    best = result
                if result.interrupted:
                    break
            result = best

        C = np.array(to_numpy(result.coefficients), dtype=dt, copy=True)
        T = np.array(to_numpy(result.templates), dtype=dt, copy=True)
        # entries no data constrain: defined as 0 (multiplicative solvers leave 1e-6 there)
        C[empty_spectra, :] = 0
        T[:, empty_pixels] = 0
        self.templates_, self.coefficients_ = T, C
        self.history_ = {key: np.asarray(v, dtype=np.float64) for key, v in result.history.items()}
        self.chi2_, self.objective_ = self.history_["chi2"], np.asarray(result.objective, np.float64)
        self.n_iter_, self.converged_ = result.n_iter, result.converged
        self.stationarity_, self.n_reseeds_ = float(result.stationarity), int(result.n_reseeds)
        self.dead_components_ = np.asarray(result.dead, dtype=np.intp)
        self.interrupted_ = result.interrupted
        self.shift_, self.ivar_scale_, self.n_features_in_ = shift, float(summary.ivar_scale), d
        self.wavelength_, (self.wavelength_unit_, self.flux_unit_) = wavelength, units
        self.spatial_shape_ = spatial_shape
        if result.interrupted:
            logger.warning("fit interrupted by the user after %d iterations; the model holds "
                           "the last complete iterate (interrupted_=True)", result.n_iter)
        return self

    # -- using a fitted model ----------------------------------------------------------
    def fit_transform(self, X, y=None, *, ivar=None, **fit_params):
        """Fit, then return the coefficients of the training spectra for the fitted templates.

        Same parameters as :meth:`fit`; ``y`` is ignored.  The result is
        ``transform(X)`` of the fitted model (exact weighted NNLS with the final
        templates), so ``fit_transform`` and ``fit(...).transform`` agree for
        every solver.  ``coefficients_`` keeps the solver's last iterate (for
        the multiplicative solvers, the published algorithm's output), which a
        slowly converging solver may leave short of that minimum.
        """
        V.check_y(y, X, "fit_transform")
        self.fit(X, ivar=ivar, **fit_params)
        return self.transform(X, ivar=ivar, spatial_shape=fit_params.get("spatial_shape"))

    def transform(self, X, *, ivar=None, return_uncertainty=False, return_covariance=False,
                  spatial_shape=None):
        """Coefficients of (new) spectra with the templates fixed.

        The exact minimiser over non-negative coefficients of chi^2 plus the
        model's penalties that act on coefficients (weighted NNLS per
        spectrum; a ``spatial`` penalty couples neighbouring spectra and is
        solved by red-black sweeps to convergence).

        Parameters
        ----------
        X : array-like of shape (n_spectra, n_pixels)
            As in :meth:`fit` (arrays on disk are streamed); ``n_pixels`` must
            equal ``n_features_in_``.
        ivar : array-like of shape (n_spectra, n_pixels), optional (keyword-only)
            Inverse variance (0 = missing); ``None``: unit weights.
        return_uncertainty : bool, default=False
            Also return 1-sigma errors of the coefficients.
        return_covariance : bool, default=False
            Also return their covariance matrices, of shape (n_spectra, k, k).
        spatial_shape : tuple (ny, nx), optional
            Grid of the new spectra, for a model fitted with ``spatial > 0``.

        Returns
        -------
        coefficients : ndarray of shape (n_spectra, n_components)
        sigma : ndarray of shape (n_spectra, n_components)
            If ``return_uncertainty``.
        covariance : ndarray of shape (n_spectra, n_components, n_components)
            If ``return_covariance``.

        Notes
        -----
        Uncertainties come from the weighted Fisher matrix at the solution,
        ``F_i = T diag(ivar_i) T^T`` (plus the penalties' curvature, a Gaussian
        prior), as ``cov = F^-1``: the full inverse, i.e. the error each
        coefficient would have without the bound, for coefficients at 0 too
        (see :func:`specnmf.solvers.nnls.nnls_covariance`).  Singular F (a
        template with no weight in a spectrum) uses the pseudo-inverse.
        """
        from .solvers import coefficients

        self._check_fitted()
        X, ivar = interop.transform_inputs(self, X, ivar)
        T = self.templates_.astype(np.float64)
        want_cov = return_uncertainty or return_covariance
        # plain arrays go to the compiled kernel, which checks them as it reads them
        res = (None if self.smoothness > 0 or self.sparsity > 0 or self.spatial > 0
               else coefficients.unchecked(X, ivar, T, return_covariance=want_cov))
        if res is not None:
            return self._transform_outputs(*res, return_uncertainty, return_covariance)
        engine = make_engine(X, ivar, block_size=self.block_size, dtype=self.templates_.dtype)
        if engine.n_pixels != self.n_features_in_:
            raise ValueError(f"X has {engine.n_pixels} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input (the pixels of "
                             f"the templates)")
        n = engine.n_spectra
        if spatial_shape is not None:
            spatial_shape = _check_spatial_shape(spatial_shape, n)
        if self.spatial > 0 and spatial_shape is None:
            raise ValueError("this model has spatial > 0: pass spatial_shape=(ny, nx) of the new "
                             "spectra to transform")
        penalties = [p for p in self._penalties(getattr(self, "ivar_scale_", 1.0), spatial_shape)
                     if p.acts_on_coefficients]
        coupled = any(p.needs_all_coefficients for p in penalties)
        engine.plan(None, T.shape[0], coupled=coupled)  # from_blocks blocks its own work
        res = coefficients.from_blocks(engine.blocks(), n, T, penalties=penalties,
                                       return_covariance=want_cov)
        return self._transform_outputs(*res, return_uncertainty, return_covariance)

    def _transform_outputs(self, C, cov, return_uncertainty, return_covariance):
        """``transform``'s return value in the model's dtype, from float64 coefficients and covariance."""
        dt = self.templates_.dtype
        out = (C, _sigma(cov) if return_uncertainty else None, cov if return_covariance else None)
        out = tuple(a.astype(dt, copy=False) for a in out if a is not None)
        return out[0] if len(out) == 1 else out

    def inverse_transform(self, coefficients):
        """Model spectra ``coefficients @ templates_``, of shape (n_spectra, n_pixels)."""
        self._check_fitted()
        C = V.check_factor(coefficients, "coefficients", ncols=self.templates_.shape[0],
                           dtype=self.templates_.dtype, allow_negative=True)
        return C @ self.templates_

    def component_reconstructions(self, coefficients=None):
        """Each component's contribution ``C[:, k, None] * T[k]``.

        Returns an array of shape (n_components, n_spectra, n_pixels) whose sum
        over the first axis is :meth:`inverse_transform`.
        """
        self._check_fitted()
        C = self.coefficients_ if coefficients is None else V.check_factor(
            coefficients, "coefficients", ncols=self.templates_.shape[0],
            dtype=self.templates_.dtype)
        return C.T[:, :, None] * self.templates_[:, None, :]

    def residuals(self, X, *, ivar=None, coefficients=None, normalized=False):
        """Data minus model, ``X - C T``, of shape (n_spectra, n_pixels).

        ``coefficients`` default to :meth:`transform` of ``X``.  With
        ``normalized=True`` the residuals are scaled by ``sqrt(ivar)`` (pulls;
        0 where missing).  Missing pixels (``ivar == 0``) are 0.
        """
        self._check_fitted()
        X, ivar = interop.transform_inputs(self, X, ivar)
        if coefficients is None:
            coefficients = self.transform(X, ivar=ivar)
        Xv, iv = V.check_spectra(X, ivar, dtype=self.templates_.dtype)
        r = np.where(iv > 0, Xv - self.inverse_transform(coefficients), 0)
        return r * np.sqrt(iv) if normalized else r

    def score(self, X, y=None, *, ivar=None):
        """Negative chi^2 of the spectra after :meth:`transform` (higher is better).

        The held-out chi^2 with the templates fixed: what ``GridSearchCV`` or
        ``cross_validate`` maximise by default (route ``ivar`` with
        ``set_score_request(ivar=True)``).  ``y`` is ignored.
        """
        V.check_y(y, X, "score")
        X, ivar = interop.transform_inputs(self, X, ivar)
        C = self.transform(X, ivar=ivar)
        X, ivar = V.check_spectra(X, ivar, dtype=self.templates_.dtype)
        return -_chi2(X, ivar, C, self.templates_, np)

    def summary(self) -> str:
        """A readable account of the settings and, if fitted, the fit."""
        from .io import model_report

        return model_report(self)

    def templates_spectrum(self, *, wavelength_unit=None, flux_unit=None):
        """The templates as one specutils ``Spectrum`` of shape (n_components, n_pixels).

        See :func:`specnmf.interop.templates_spectrum` (needs specutils and a
        wavelength grid).
        """
        return interop.templates_spectrum(self, wavelength_unit=wavelength_unit,
                                          flux_unit=flux_unit)

    # -- persistence -------------------------------------------------------------------
    def save(self, path, *, overwrite=False):
        """Save the fitted model as FITS (``.fits``) or npz (``.npz``); never pickle."""
        from .io import save_model

        self._check_fitted()
        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def from_templates(cls, templates, wavelength=None, **params):
        """A ready-to-use model from templates made elsewhere.

        ``transform``, ``inverse_transform``, ``save`` and the plots work;
        there is no training history.  ``params`` are constructor parameters.
        ``templates`` may be a specutils ``Spectrum`` (e.g. from
        :meth:`templates_spectrum`), which brings its wavelength and units.
        """
        templates, _, wavelength, units = interop.fit_inputs(templates, None, wavelength)
        T = V.check_factor(templates, "templates", dtype=V.check_dtype(params.get("dtype", "float64")))
        model = cls(T.shape[0], **params)
        model._validate_params()
        wavelength = V.check_wavelength(wavelength, T.shape[1])
        model.templates_ = T
        model.coefficients_ = np.zeros((0, T.shape[0]), dtype=T.dtype)
        model.chi2_, model.objective_ = np.zeros(0), np.zeros(0)
        model.history_ = {"chi2": model.chi2_}
        model.n_iter_, model.converged_, model.interrupted_ = 0, False, False
        model.shift_, model.ivar_scale_, model.n_features_in_ = 0.0, 1.0, T.shape[1]
        model.wavelength_, (model.wavelength_unit_, model.flux_unit_) = wavelength, units
        model.spatial_shape_ = None
        return model
