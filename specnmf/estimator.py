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
from .init import INITS, best_of, check_random_state, initial_factors, sequential_start
from .objective import _chi2
from .progress import progress_callback
from .solvers import MULTIPLICATIVE, SOLVERS, run
from .solvers.multiplicative import resolve_shift

logger = logging.getLogger("specnmf")

__all__ = ["SpectralNMF"]


class SpectralNMF(ParamsMixin):
    r"""Non-negative templates from noisy, weighted, masked, signed spectra.

    Finds coefficients ``C >= 0`` (n_spectra, n_components) and templates
    ``T >= 0`` (n_components, n_pixels) minimising chi^2 (:mod:`specnmf.objective`)
    plus the optional penalties of :mod:`specnmf.penalties`, measured in units of
    the mean observed ``ivar``.  ``X`` may be negative (noise), ``ivar == 0``
    marks missing data; nothing is clipped.

    Parameters
    ----------
    n_components : int
        Number of templates, ``1 <= n_components <= min(n_spectra, n_pixels)``.
    solver : {"nearly", "shift", "clip", "anls", "apg"}, default="nearly"
        Nearly-NMF (Green & Bailey 2024, eqs. 18-19); Shift-NMF (eqs. 7-8,
        shift ``shift``); the clipped baseline (Zhu 2016; comparisons only,
        biased high near 0, its ``chi2_`` is that of the clipped data); exact
        alternating NNLS (fastest for few components); accelerated proximal
        gradient with restart (Xu & Yin 2013).  All minimise the same objective
        and never increase it: see docs/solvers.md, "Which solver when".
    max_iter : int, default=1000
        Maximum number of iterations (each updates coefficients, then templates).
    tol : float, default=1e-6
        Stop when the objective's relative decrease per iteration falls below
        ``tol`` (``patience`` times in a row); ``tol=0`` runs ``max_iter``.
    init : {"random", "nndsvd", "nndsvda", "sequential"}, default="random"
        Start for whichever factor ``fit`` is not given (:mod:`specnmf.init`):
        seeded uniform values at the data's scale; NNDSVD of the data's positive
        part (``"nndsvd"`` becomes ``"nndsvda"``, zeros filled, for the
        multiplicative solvers, which never move a zero); or the paper's
        sequential build, one flat template added every ``sequential_iter``
        iterations (``chi2_`` records the final stage only).
    random_state : int, numpy.random.Generator or None, default=None
        Seed for random starts and restarts.
    dtype : {"float64", "float32"}, default="float64"
        Working precision; chi^2 and template statistics are summed in float64.
    verbose : bool or int, default=False
        Log progress every 10 iterations on the ``"specnmf"`` logger.
    shift : float or None, default=None
        ``solver="shift"`` only: the shift y; ``None`` is the minimal shift
        ``-min(X)`` over observed pixels; a smaller value is an error.
    smoothness, sparsity, spatial : float, default=0.0
        Penalty strengths, >= 0 (:mod:`specnmf.penalties`); ``spatial`` needs
        ``fit(..., spatial_shape=(ny, nx))`` and the spectra in memory.
    n_init : int, default=1
        Random starts; the fit with the lowest final objective is kept.
    patience : int, default=1
        Consecutive iterations below ``tol`` needed to stop.
    block_size : int or None, default=None
        Spectra per block of a pass: the peak memory of fits streamed from disk
        and the task size of Dask fits; ``None`` chooses from the data.
    backend : {"numpy", "array_api_strict", "cupy", "torch"}, default="numpy"
        Array library of the iterations (GPU ones keep the data on the device);
        results are numpy arrays.
    checkpoint : path or None, default=None
        Write the fit's state here every ``checkpoint_every`` iterations
        (atomically); ``fit(..., resume=True)`` continues from it.
    checkpoint_every : int, default=10
    sequential_iter : int, default=50
        Iterations per stage of ``init="sequential"`` (the paper's ~50).
    progress : bool, default=False
        Progress bar (tqdm if installed; :mod:`specnmf.progress`).

    Attributes
    ----------
    templates_, components_ : ndarray of shape (n_components, n_pixels)
        Fitted templates (0 at pixels no spectrum observes); ``components_`` is
        scikit-learn's name.
    coefficients_ : ndarray of shape (n_spectra, n_components)
        The solver's coefficients of the training spectra (0 without weight).
    chi2_, objective_ : ndarray of shape (``n_iter_`` + 1,)
        chi^2, and chi^2 plus penalties, before the first and after each iteration.
    history_ : dict of ndarray
        ``"chi2"`` and each active penalty's value, per iteration.
    n_iter_ : int
    converged_ : bool
        Stopped by ``tol`` at a stationary point (``stationarity_ <= sqrt(tol)``).
    stationarity_ : float
        Scale-free first-order (KKT) residual of the result, 0 at a KKT point
        (docs/solvers.md, "Traps").
    n_reseeds_ : int
        Dead components (zero template or coefficients) restarted from the
        largest positive residual.
    dead_components_ : ndarray of int
        Components still dead at the end (a ``ConvergenceWarning`` says so).
    interrupted_ : bool
        Stopped by Ctrl-C (the model holds the last complete iterate).
    shift_ : float
        The shift of ``solver="shift"`` (else 0).
    ivar_scale_ : float
        Mean observed inverse variance, the unit of the penalties.
    wavelength_, wavelength_unit_, flux_unit_, spatial_shape_
        As given to ``fit`` (units from specutils/astropy inputs, :mod:`specnmf.interop`).
    n_features_in_ : int
        Number of pixels seen in ``fit``.

    References
    ----------
    D. Green & S. Bailey, IEEE TSP (2024), arXiv:2311.04855.
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
        "n_components": in_interval(Integral, 1), "solver": one_of(*SOLVERS),
        "max_iter": in_interval(Integral, 0), "tol": in_interval(Real, 0),
        "init": one_of(*INITS, "sequential"), "random_state": random_state,
        "dtype": dtype_name, "verbose": boolish, "progress": boolish,
        "shift": in_interval(Real, 0, allow_none=True), "smoothness": in_interval(Real, 0),
        "sparsity": in_interval(Real, 0), "spatial": in_interval(Real, 0),
        "n_init": in_interval(Integral, 1), "patience": in_interval(Integral, 1),
        "block_size": in_interval(Integral, 1, allow_none=True), "backend": one_of(*BACKENDS),
        "checkpoint": path_or_none, "checkpoint_every": in_interval(Integral, 1),
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

    def fit(self, X, y=None, *, ivar=None, templates=None, coefficients=None, wavelength=None,
            spatial_shape=None, resume=False, callback=None):
        """Fit templates and coefficients to the spectra.

        Parameters
        ----------
        X : array-like of shape (n_spectra, n_pixels)
            Flux, may be negative; NaN/inf only where ``ivar == 0``.  Arrays on
            disk (``np.memmap``, h5py/zarr datasets, FITS memmap) are streamed
            in blocks, dask arrays run on the active scheduler; specutils,
            astropy and hyperspy containers bring their own ``ivar``,
            ``wavelength`` and units (:mod:`specnmf.interop`).
        y : None
            Ignored: scikit-learn's target slot (``Pipeline``, ``GridSearchCV``
            call ``fit(X, y)``).  An array shaped like ``X`` here is an error.
        ivar : array-like of shape (n_spectra, n_pixels), optional (keyword-only)
            Inverse variance, >= 0, 0 for missing pixels; ``None``: unit weights.
            Routed by scikit-learn after ``set_fit_request(ivar=True)``.
        templates, coefficients : array-like, optional
            Starts, (n_components, n_pixels) and (n_spectra, n_components),
            non-negative; if only one is given, the other comes from ``init``,
            rescaled to the data by weighted least squares.
        wavelength : array-like of shape (n_pixels,), optional
            Kept as ``wavelength_`` (a ``Quantity``'s unit as ``wavelength_unit_``).
        spatial_shape : tuple (ny, nx), optional
            Grid of the spectra (row = y * nx + x), for the ``spatial`` penalty.
        resume : bool, default=False
            Continue from ``checkpoint`` if the file exists (same data shape and
            settings).
        callback : callable, optional
            ``callback(iteration, coefficients, templates, terms)`` after each
            iteration (``terms``: "chi2" and each penalty); True stops the fit.

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
        shift = resolve_shift(self.shift, summary.min_observed) if self.solver == "shift" else 0.0
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
            from .checkpoint import for_fit

            save, resumed = for_fit(self.get_params(), n, d, resume=resume)
        if resumed is not None:
            result = solve(resumed["C"], resumed["T"], self.max_iter, self.tol,
                           callback=callback, checkpoint=save,
                           start_iter=resumed["iteration"], history=resumed["history"],
                           solver_state=resumed["state"])
        else:
            rng = check_random_state(self.random_state)

            def start():
                if self.init == "sequential" and (templates is None or coefficients is None):
                    return sequential_start(lambda C, T: solve(C, T, self.sequential_iter, 0.0),
                                            (n, d), k, rng, dt, data_scale=summary.data_scale)
                return (*initial_factors(
                    self.init, (n, d), k, rng, dt, data_scale=summary.data_scale,
                    read=engine.read_all if engine.in_memory else None,
                    templates=templates, coefficients=coefficients,
                    multiplicative_solver=self.solver if self.solver in MULTIPLICATIVE else None),
                    None)

            result = best_of(self.n_init, start, lambda C, T: solve(
                C, T, self.max_iter, self.tol, callback=callback, checkpoint=save))

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
        model's coefficient penalties (weighted NNLS per spectrum; a
        ``spatial`` penalty couples neighbours: red-black sweeps to
        convergence), by :mod:`specnmf.solvers.coefficients`.

        Parameters
        ----------
        X : array-like of shape (n_spectra, n_pixels)
            As in :meth:`fit`, with ``n_pixels == n_features_in_``.
        ivar : array-like of shape (n_spectra, n_pixels), optional (keyword-only)
            Inverse variance (0 = missing); ``None``: unit weights.
        return_uncertainty, return_covariance : bool, default=False
            Also return 1-sigma errors, of shape (n_spectra, n_components), and
            covariance matrices, (n_spectra, n_components, n_components), from
            the Fisher matrix ``T diag(ivar_i) T^T`` (plus the penalties'
            curvature) at the solution, inverted in full even for coefficients
            at 0 (:func:`specnmf.solvers.nnls.nnls_covariance`).
        spatial_shape : tuple (ny, nx), optional
            Grid of the new spectra, for a model fitted with ``spatial > 0``.

        Returns
        -------
        coefficients : ndarray of shape (n_spectra, n_components)
            Followed by ``sigma`` and ``covariance`` when asked for.
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
            return coefficients.outputs(*res, self.templates_.dtype, return_uncertainty,
                                        return_covariance)
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
        return coefficients.outputs(*res, self.templates_.dtype, return_uncertainty,
                                        return_covariance)

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
        from .io import model_from_templates

        return model_from_templates(cls, templates, wavelength, **params)
