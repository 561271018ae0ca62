"""The ``specnmf`` command: fit, apply, inspect and plot models from the shell.

Every subcommand is a thin layer over :class:`specnmf.SpectralNMF`,
:mod:`specnmf.io` and :mod:`specnmf.selection`.  Diagnostics go to stderr
through the ``"specnmf"`` logger (``--quiet``/``--verbose`` set its level);
only a command's result (a summary, a table) goes to stdout.  Bad input gives
one line ``specnmf: error: ...`` on stderr and exit status 2; a failure while
running gives exit status 1; never a traceback (``--verbose`` logs it).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import sys
import textwrap
import time
import warnings

import numpy as np

from .progress import TextBar
from .solvers._loop import ConvergenceWarning

logger = logging.getLogger("specnmf")

__all__ = ["main", "build_parser"]

#: ``--option`` -> SpectralNMF parameter, type and help; only those the
#: installed estimator accepts are passed (see :func:`_estimator_params`)
_FIT_OPTIONS = [
    (("-k", "--n-components"), "n_components", int, "number of templates"),
    (("--solver",), "solver", str, "solver: nearly, shift, clip, anls, apg (default: nearly)"),
    (("--max-iter",), "max_iter", int, "maximum number of iterations (default: 1000)"),
    (("--tol",), "tol", float, "stop when the relative objective decrease is below TOL "
                               "(default: 1e-6; 0 runs max-iter iterations)"),
    (("--init",), "init", str, "start: random, nndsvd, nndsvda, sequential (default: random)"),
    (("--smoothness",), "smoothness", float, "strength of the template smoothness penalty"),
    (("--sparsity",), "sparsity", float, "strength of the coefficient sparsity penalty"),
    (("--dtype",), "dtype", str, "working precision: float64 or float32"),
    (("--block-size",), "block_size", int, "spectra per block for streamed fits"),
    (("--random-state",), "random_state", int, "seed of the random start"),
    (("--n-init",), "n_init", int, "number of starts; the best fit is kept"),
    (("--patience",), "patience", int, "iterations below tol before stopping"),
    (("--shift",), "shift", float, "solver=shift only: the scalar shift y"),
]


class UsageError(Exception):
    """Bad command-line input: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line, without usage or SystemExit."""

    def error(self, message):
        raise UsageError(message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; descriptions are wrapped by :func:`_wrap`."""


# ---------------------------------------------------------------------------
# logging, warnings, progress
# ---------------------------------------------------------------------------
class _StderrHandler(logging.Handler):
    """Writes ``specnmf: message`` to the *current* ``sys.stderr``."""

    def emit(self, record):
        try:
            prefix = "specnmf: warning: " if record.levelno >= logging.WARNING else "specnmf: "
            bar = _ProgressBar.active
            if bar is not None:
                bar.clear()
            sys.stderr.write(prefix + record.getMessage() + "\n")
            if record.exc_info and logger.isEnabledFor(logging.DEBUG):
                import traceback

                sys.stderr.write("".join(traceback.format_exception(*record.exc_info)))
            sys.stderr.flush()
        except Exception:  # pragma: no cover - never let logging kill the command
            self.handleError(record)


class _ProgressBar(TextBar):
    """The command's progress bar (:class:`specnmf.progress.TextBar`) on stderr.

    Fed either by the estimator's ``callback`` hook or, if it has none, by the
    progress records the fit logs on the ``"specnmf"`` logger when verbose;
    ``active`` lets the log handler clear it before writing a line.
    """

    active = None

    def close(self):
        super().close()
        if _ProgressBar.active is self:
            _ProgressBar.active = None


class _ProgressLogHandler(logging.Handler):
    """Drives a progress bar from the fit loop's "iteration %d: ..." records."""

    def __init__(self, bar):
        super().__init__(level=logging.INFO)
        self.bar = bar

    def emit(self, record):
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("iteration") and record.args and isinstance(record.args, tuple):
            args = record.args
            chi = args[2] if len(args) > 2 else (args[1] if len(args) > 1 else None)
            try:
                self.bar.update(int(args[0]), float(chi) if chi is not None else None)
            except (TypeError, ValueError):
                pass


class _ProgressFilter(logging.Filter):
    """Hides the per-iteration records from the stderr handler while a bar shows them."""

    def filter(self, record):
        msg = record.msg if isinstance(record.msg, str) else ""
        return not (_ProgressBar.active is not None and msg.startswith("iteration"))


@contextlib.contextmanager
def _logging_setup(level):
    handler = _StderrHandler(level=level)
    handler.addFilter(_ProgressFilter())
    old = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO))
    # the command's handler prints once; no second copy through the root logger
    logger.propagate = False

    def showwarning(message, category, filename, lineno, file=None, line=None):
        # a warning is one log line, not a source excerpt; the filters are untouched
        logger.warning("%s", message)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = showwarning
            yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _estimator_class():
    from .estimator import SpectralNMF

    return SpectralNMF


def _accepted_params():
    return set(_estimator_class()(1).get_params())


def _estimator_params(args, *, exclude=()):
    """The fit options given on the command line, checked against the estimator."""
    accepted = _accepted_params()
    params = {}
    for flags, name, _, _ in _FIT_OPTIONS:
        if name in exclude:
            continue
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in accepted:
            raise UsageError(f"{flags[-1]} is not supported by this version of SpectralNMF")
        params[name] = value
    return params


def _check_output(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path}: directory {parent} does not exist")


def _read(path, hdu=None, memmap=False):
    from .io import read_spectra

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    spectra = read_spectra(path, hdu=_hdu(hdu), memmap=memmap)
    logger.info("read %d spectra x %d pixels from %s", *spectra.shape, path)
    return spectra


def _is_cube(path, hdu=None):
    """Whether ``path`` is a FITS file whose flux is a 3-D (IFU cube) image."""
    from .io import _fits_format, _kind

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    try:
        return _kind(path) == "fits" and _fits_format(path, _hdu(hdu)) == "cube"
    except ValueError:
        return False  # let the spectra reader give its own error


def _hdu(hdu):
    # an HDU number; HDF5 group names are never all digits here
    return int(hdu) if isinstance(hdu, str) and hdu.isdigit() else hdu


def _read_cube(path, hdu=None):
    from .ifu import cube_to_matrix, read_cube

    c = read_cube(path, hdu=_hdu(hdu))
    X, ivar, shape = cube_to_matrix(c.cube, ivar=c.ivar, mask=c.mask)
    logger.info("read a cube of %d x %d spaxels x %d wavelengths from %s", *c.cube.shape, path)
    return c, X, ivar, shape


def _maps_path(args):
    if args.maps:
        return args.maps
    root = args.output
    for suffix in (".fits.gz", ".fits", ".fit", ".fts", ".npz"):
        if root.lower().endswith(suffix):
            root = root[: -len(suffix)]
            break
    return root + "_maps.fits"


def _load(path):
    from .io import load_model

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    return load_model(path)


def _verbose_for_progress(args):
    """Whether to draw a progress bar: stderr is a terminal and not --quiet."""
    return not args.quiet and sys.stderr.isatty()


def _fit(model, X, ivar, *, wavelength=None, spatial_shape=None, progress=False):
    """``model.fit`` with the hooks the installed estimator offers."""
    fit_params = inspect.signature(model.fit).parameters
    kwargs = {}
    if wavelength is not None and "wavelength" in fit_params:
        kwargs["wavelength"] = wavelength
    if spatial_shape is not None and "spatial_shape" in fit_params:
        kwargs["spatial_shape"] = spatial_shape
    bar = None
    log_handler = None
    if progress:
        bar = _ProgressBar(getattr(model, "max_iter", 1000), sys.stderr)
        _ProgressBar.active = bar

        def callback(iteration, C, T, terms):
            bar.update(iteration, terms.get("chi2") if isinstance(terms, dict) else None)

        if "callback" in fit_params:
            kwargs["callback"] = callback
        elif "callback" in model.get_params():
            model.set_params(callback=callback)
        else:
            # no hook: the loop logs progress every 10 iterations when verbose
            model.set_params(verbose=True)
            log_handler = _ProgressLogHandler(bar)
            logger.addHandler(log_handler)
    try:
        model.fit(X, ivar=ivar, **kwargs)
    finally:
        if log_handler is not None:
            logger.removeHandler(log_handler)
        if bar is not None:
            bar.close()
        if progress and "callback" in model.get_params():
            model.set_params(callback=None)
    if wavelength is not None and getattr(model, "wavelength_", None) is None:
        model.wavelength_ = np.asarray(wavelength)
    if spatial_shape is not None and getattr(model, "spatial_shape_", None) is None:
        model.spatial_shape_ = tuple(spatial_shape)
    return model


def _save(model, path, overwrite):
    from .io import save_model

    save = getattr(model, "save", None)
    if callable(save):
        save(path, overwrite=overwrite)
    else:
        save_model(model, path, overwrite=overwrite)
    logger.debug("wrote %s", path)


def _stop_reason(model):
    """Why the fit stopped, for the summaries: converged, or what is missing."""
    if model.converged_:
        return "converged"
    if getattr(model, "interrupted_", False):
        return "interrupted"
    if model.n_iter_ >= getattr(model, "max_iter", np.inf):
        return "max_iter reached"
    residual = getattr(model, "stationarity_", None)
    if residual is not None:
        return f"stopped by tol, not yet stationary: KKT residual {residual:.2g}"
    return "not converged"


def _fit_summary(model, X, ivar):
    from .objective import reduced_chi2

    chi = np.asarray(model.chi2_)
    lines = [
        f"templates:        {model.templates_.shape[0]} x {model.templates_.shape[1]} pixels",
        f"iterations:       {model.n_iter_} ({_stop_reason(model)})",
        f"chi2 start / end: {chi[0]:.6g} / {chi[-1]:.6g}",
    ]
    from .engine import is_lazy

    # a streamed fit's data may not fit in memory: no second full pass for this
    if hasattr(model, "coefficients_") and not (is_lazy(X) or is_lazy(ivar)):
        lines.append(f"reduced chi2:     {reduced_chi2(X, model.coefficients_, model.templates_, ivar=ivar):.4f}")
    return lines


# ---------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------
def _new_fit(args, X, ivar, **fit_kwargs):
    """A SpectralNMF from the command-line options, fitted; returns (model, seconds)."""
    params = _estimator_params(args)
    if args.verbose and "verbose" in _accepted_params():
        params["verbose"] = True
    model = _estimator_class()(**params)
    logger.info("fitting %s", model)
    t0 = time.perf_counter()
    _fit(model, X, ivar, progress=_verbose_for_progress(args), **fit_kwargs)
    return model, time.perf_counter() - t0


def cmd_fit(args):
    _check_output(args.output, args.overwrite)
    if _is_cube(args.input, args.hdu):
        return _fit_cube(args)
    if args.maps:
        raise UsageError(f"--maps needs an IFU cube as input; {args.input} holds spectra")
    spectra = _read(args.input, args.hdu, memmap=args.memmap)
    model, elapsed = _new_fit(args, spectra.flux, spectra.ivar, wavelength=spectra.wavelength)
    if spectra.meta:
        model.meta_ = dict(spectra.meta)
    _save(model, args.output, args.overwrite)
    print(f"input:            {args.input} ({spectra.shape[0]} spectra x {spectra.shape[1]} pixels)")
    print(f"model:            {model}")
    for line in _fit_summary(model, spectra.flux, spectra.ivar):
        print(line)
    print(f"time:             {elapsed:.2f} s")
    print(f"wrote:            {args.output}")
    return 0


def _fit_cube(args):
    """``specnmf fit`` of an IFU cube: model, plus coefficient maps with the celestial WCS."""
    from .ifu import coefficient_maps, spectral_header, write_maps

    if args.memmap:
        raise UsageError("--memmap is for spectra files; a cube is read into memory")
    maps_path = _maps_path(args)
    if not maps_path.lower().endswith((".fits", ".fit", ".fts", ".fits.gz")):
        raise UsageError(f"--maps {maps_path}: coefficient maps are written as FITS (.fits)")
    _check_output(maps_path, args.overwrite)
    cube, X, ivar, shape = _read_cube(args.input, args.hdu)
    model, elapsed = _new_fit(args, X, ivar, wavelength=cube.wavelength, spatial_shape=shape)
    # the spectral WCS describes the templates' axis; the celestial one the maps
    model.header_ = spectral_header(cube.header)
    model.meta_ = {**cube.meta, **({"MEDIUM": cube.medium} if cube.medium else {})}
    _save(model, args.output, args.overwrite)
    maps = coefficient_maps(model.coefficients_, shape)
    write_maps(maps_path, maps, cube.header, overwrite=args.overwrite,
               names=[f"component {k}" for k in range(maps.shape[-1])])
    ny, nx, n_wave = cube.cube.shape
    print(f"input:            {args.input} (cube of {ny} x {nx} spaxels x {n_wave} wavelengths"
          f"{'' if cube.ivar is not None else ', no variance: unweighted'})")
    print(f"model:            {model}")
    for line in _fit_summary(model, X, ivar):
        print(line)
    print(f"time:             {elapsed:.2f} s")
    print(f"wrote:            {args.output}")
    print(f"wrote maps:       {maps_path} ({maps.shape[-1]} x {ny} x {nx}, celestial WCS of the cube)")
    return 0


def _transform_cube(args, model):
    from .ifu import coefficient_maps, write_maps
    from .objective import chi2_per_spectrum

    if not args.output.lower().endswith((".fits", ".fit", ".fts", ".fits.gz")):
        raise UsageError(f"{args.output}: the coefficient maps of a cube are written as FITS "
                         "(.fits)")
    cube, X, ivar, shape = _read_cube(args.input, args.hdu)
    kwargs = {}
    if "spatial_shape" in inspect.signature(model.transform).parameters:
        kwargs["spatial_shape"] = shape
    if args.uncertainty:
        coefficients, sigma = model.transform(X, ivar=ivar, return_uncertainty=True, **kwargs)
    else:
        coefficients, sigma = model.transform(X, ivar=ivar, **kwargs), None
    coefficients = np.asarray(coefficients)
    chi = chi2_per_spectrum(X, ivar=ivar, coefficients=coefficients, templates=model.templates_)
    extra = {"CHI2": np.asarray(chi).reshape(shape)}
    if sigma is not None:
        extra["SIGMA"] = coefficient_maps(np.asarray(sigma), shape)
    write_maps(args.output, coefficient_maps(coefficients, shape), cube.header, extra=extra,
               names=[f"component {k}" for k in range(coefficients.shape[1])],
               overwrite=args.overwrite)
    print(f"coefficients:     {shape[0]} x {shape[1]} spaxels x {coefficients.shape[1]} templates"
          f"{' (with sigma)' if sigma is not None else ''}")
    print(f"chi2 total:       {float(np.sum(chi)):.6g}")
    print(f"wrote maps:       {args.output} (celestial WCS of the cube; CHI2"
          f"{', SIGMA' if sigma is not None else ''} extensions)")
    return 0


def _write_coefficients(path, coefficients, sigma, chi2, overwrite):
    lower = path.lower()
    arrays = {"coefficients": coefficients, "chi2": chi2}
    if sigma is not None:
        arrays["sigma"] = sigma
    if lower.endswith((".fits", ".fit", ".fts", ".fits.gz")):
        from .io import _require_fits

        fits = _require_fits()
        hdus = [fits.PrimaryHDU()]
        for name, arr in arrays.items():
            hdus.append(fits.ImageHDU(np.asarray(arr), name=name.upper()))
        fits.HDUList(hdus).writeto(path, overwrite=overwrite)
    elif lower.endswith(".npz"):
        np.savez(path, **arrays)
    elif lower.endswith(".npy"):
        np.save(path, coefficients, allow_pickle=False)
    elif lower.endswith((".csv", ".txt")):
        k = coefficients.shape[1]
        cols = [coefficients]
        names = [f"c{j}" for j in range(k)]
        if sigma is not None:
            cols.append(sigma)
            names += [f"sigma_c{j}" for j in range(k)]
        cols.append(np.asarray(chi2)[:, None])
        names.append("chi2")
        np.savetxt(path, np.hstack(cols), delimiter=",", header=",".join(names), comments="")
    else:
        raise UsageError(f"{path}: unknown output type; use .fits, .npz, .npy or .csv")


def cmd_transform(args):
    from .objective import chi2_per_spectrum

    _check_output(args.output, args.overwrite)
    model = _load(args.model)
    if args.uncertainty and \
            "return_uncertainty" not in inspect.signature(model.transform).parameters:
        raise UsageError("--uncertainty needs a SpectralNMF.transform with "
                         "return_uncertainty (not in this version)")
    if _is_cube(args.input, args.hdu):
        return _transform_cube(args, model)
    spectra = _read(args.input, args.hdu)
    sigma = None
    if args.uncertainty:
        coefficients, sigma = model.transform(spectra.flux, ivar=spectra.ivar,
                                              return_uncertainty=True)
    else:
        coefficients = model.transform(spectra.flux, ivar=spectra.ivar)
    coefficients = np.asarray(coefficients)
    chi = chi2_per_spectrum(spectra.flux, coefficients, model.templates_, ivar=spectra.ivar)
    _write_coefficients(args.output, coefficients, None if sigma is None else np.asarray(sigma),
                        chi, args.overwrite)
    logger.debug("wrote %s", args.output)
    print(f"coefficients:     {coefficients.shape[0]} spectra x {coefficients.shape[1]} templates"
          f"{' (with sigma)' if sigma is not None else ''}")
    print(f"chi2 total:       {float(np.sum(chi)):.6g}")
    print(f"wrote:            {args.output}")
    return 0


def _plot_templates_figure(model, wavelength=None):
    """Templates figure from :mod:`specnmf.plotting`, or a plain one if that is absent."""
    try:
        from .plotting import plot_templates
    except ImportError:
        plot_templates = None
    if plot_templates is not None:
        out = plot_templates(model, wavelength=wavelength)
        return getattr(out, "figure", out)
    from matplotlib.figure import Figure

    T = np.asarray(model.templates_)
    x = wavelength if wavelength is not None else getattr(model, "wavelength_", None)
    x = np.arange(T.shape[1]) if x is None else np.asarray(x)
    fig = Figure(figsize=(8, 1.2 + 1.0 * T.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    for k, t in enumerate(T):
        ax.plot(x, t, lw=1, label=f"template {k}")
    ax.set_xlabel("wavelength" if x is not None and getattr(model, "wavelength_", None) is not None
                  else "pixel")
    ax.set_ylabel("template")
    ax.legend(fontsize="small")
    return fig


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install 'specnmf[plot]'") from exc


def cmd_plot(args):
    _check_output(args.output, args.overwrite)
    _require_matplotlib()
    model = _load(args.model)
    fig = _plot_templates_figure(model)
    fig.savefig(args.output, dpi=args.dpi)
    if "matplotlib.pyplot" in sys.modules:
        # plotting.py draws through pyplot, which keeps every figure open
        sys.modules["matplotlib.pyplot"].close(fig)
    logger.debug("wrote %s", args.output)
    print(f"wrote:            {args.output}")
    return 0


def cmd_info(args):
    from .io import model_summary

    model = _load(args.model)
    s = model_summary(model)
    print(f"file:             {args.model}")
    print(f"class:            {s['class']}")
    print(f"templates:        {s['n_components']} x {s['n_pixels']} pixels")
    if "wavelength" in s:
        print(f"wavelength:       {s['wavelength'][0]:.6g} .. {s['wavelength'][1]:.6g}")
    if "n_iter" in s:
        conv = s.get("converged")
        state = "" if conv is None else (" (converged)" if conv else " (not converged)")
        print(f"iterations:       {s['n_iter']}{state}")
    if "chi2_end" in s:
        print(f"chi2 start / end: {s['chi2_start']:.6g} / {s['chi2_end']:.6g}")
    coef = getattr(model, "coefficients_", None)
    if coef is not None:
        print(f"training spectra: {np.shape(coef)[0]}")
    history = getattr(model, "history_", None)
    if isinstance(history, dict):
        for key, values in history.items():
            if np.size(values):
                print(f"final {key + ':':<11} {float(np.asarray(values)[-1]):.6g}")
    print("settings:")
    for name, value in sorted(s["params"].items()):
        print(f"  {name} = {value!r}")
    meta = getattr(model, "meta_", None)
    if meta:
        print(f"input header:     {len(meta)} cards carried")
    return 0


def _parse_candidates(text):
    values = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                values.update(range(lo, hi + 1))
            else:
                values.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a range like 1-8 or a list like 2,3,5; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"candidates must be positive integers; got {text!r}")
    return sorted(values)


def cmd_cv(args):
    from .selection import select_n_components

    spectra = _read(args.input, args.hdu)
    params = _estimator_params(args, exclude=("n_components",))
    flux = np.asarray(spectra.flux)
    limit = min(flux.shape)
    if max(args.candidates) > limit:
        raise UsageError(f"--candidates must not exceed min(n_spectra, n_pixels) = {limit}")
    sel = select_n_components(flux, ivar=spectra.ivar, candidates=args.candidates,
                              holdout=args.holdout, random_state=params.pop("random_state", None),
                              rule=args.rule, **params)
    print(sel.table())
    return 0


def _doublet_offsets(templates, edge=0.2):
    """Mean template level in the outer ``edge`` fraction of pixels on each side,
    relative to the template's peak: the doublet's true signal is 0 there."""
    d = templates.shape[1]
    m = max(1, int(edge * d))
    edges = np.concatenate([templates[:, :m], templates[:, -m:]], axis=1)
    peak = templates.max(axis=1)
    safe = np.where(peak > 0, peak, 1.0)
    return np.where(peak > 0, edges.mean(axis=1) / safe, 0.0)


def cmd_demo(args):
    from .datasets import load_doublet
    from .objective import reduced_chi2

    out = args.output
    model_path = os.path.join(out, "doublet_model.fits")
    plot_path = os.path.join(out, "doublet_templates.png")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"{out} exists and is not a directory")
    for path in (model_path, plot_path):
        if os.path.exists(path) and not args.overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")
    X, ivar = load_doublet()
    n, d = X.shape
    observed = ivar > 0
    print(f"data:             the Nearly-NMF paper's doublet, {n} exposures x {d} pixels; "
          f"{100 * np.mean(X[observed] < 0):.0f}% of the fluxes are negative")

    SpectralNMF = _estimator_class()
    params = {"solver": "nearly", "random_state": args.random_state, "max_iter": args.max_iter}
    model = SpectralNMF(2, **params)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # the summary below says how the fit stopped (Nearly-NMF at the default tol
        # stops while still crawling: docs/solvers.md, "Traps")
        warnings.simplefilter("ignore", ConvergenceWarning)
        _fit(model, X, ivar, progress=_verbose_for_progress(args))
    elapsed = time.perf_counter() - t0
    # the paper's point: clipping negative flux (the prior-work baseline) leaves
    # a positive offset where the truth is 0; Nearly-NMF does not
    clip = SpectralNMF(2, **{**params, "solver": "clip"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip.fit(X, ivar=ivar)
    chi = np.asarray(model.chi2_)
    offsets = _doublet_offsets(np.asarray(model.templates_))
    clip_offsets = _doublet_offsets(np.asarray(clip.templates_))
    print(f"model:            {model}")
    print(f"iterations:       {model.n_iter_} ({_stop_reason(model)}, {elapsed:.2f} s)")
    print(f"chi2 start / end: {chi[0]:.6g} / {chi[-1]:.6g}")
    print(f"reduced chi2:     {reduced_chi2(X, model.coefficients_, model.templates_, ivar=ivar):.4f}")
    print("template offsets (mean level in the outer 20% of pixels, where the truth is 0,")
    print("                  as a fraction of each template's peak):")
    print(f"  Nearly-NMF:     {', '.join(f'{o:+.4f}' for o in offsets)}")
    print(f"  clipped NMF:    {', '.join(f'{o:+.4f}' for o in clip_offsets)}  "
          "(baseline that clips negative flux)")

    os.makedirs(out, exist_ok=True)
    _save(model, model_path, args.overwrite)
    print(f"wrote:            {model_path}")
    try:
        _require_matplotlib()
    except RuntimeError as exc:
        logger.warning("%s; skipping %s", exc, plot_path)
        return 0
    fig = _demo_figure(model, clip, X, ivar)
    fig.savefig(plot_path, dpi=110)
    logger.debug("wrote %s", plot_path)
    print(f"wrote:            {plot_path}")
    return 0


def _demo_figure(model, clip, X, ivar):
    from matplotlib.figure import Figure

    T = np.asarray(model.templates_)
    C = np.asarray(model.coefficients_)
    x = np.arange(T.shape[1])
    # a representative exposure: the median total flux
    i = int(np.argsort(np.sum(C, axis=1))[len(C) // 2])
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax0, ax1 = fig.subplots(2, 1, sharex=True)
    obs = ivar[i] > 0
    sigma = np.where(obs, 1 / np.sqrt(np.where(obs, ivar[i], 1.0)), 0.0)
    ax0.errorbar(x[obs], X[i, obs], yerr=sigma[obs], fmt=".", ms=2, lw=0.5, color="0.5",
                 label=f"exposure {i}")
    ax0.plot(x, C[i] @ T, color="C3", lw=1.5, label="Nearly-NMF reconstruction")
    ax0.plot(x, np.asarray(clip.coefficients_)[i] @ np.asarray(clip.templates_),
             color="C0", lw=1, ls="--", label="clipped-NMF reconstruction")
    ax0.axhline(0, color="k", lw=0.5)
    ax0.set_ylabel("flux")
    ax0.legend(fontsize="small")
    scale = T.max()
    for k, t in enumerate(T):
        ax1.plot(x, t / scale, lw=1.5, ls=["-", ":"][k % 2], color="C3",
                 label=f"Nearly-NMF template {k}")
    Tc = np.asarray(clip.templates_)
    for k, t in enumerate(Tc):
        ax1.plot(x, t / Tc.max(), lw=1, ls=["-", ":"][k % 2], color="C0", alpha=0.6,
                 label=f"clipped-NMF template {k}")
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_xlabel("pixel")
    ax1.set_ylabel("template (max = 1)")
    ax1.legend(fontsize="small")
    fig.suptitle("specnmf demo: Nearly-NMF templates of the paper's doublet")
    return fig


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------
# ---------------------------------------------------------------------------
# redshift, export
# ---------------------------------------------------------------------------
def _load_templates(path):
    """A saved specnmf model or a redrock template file (BASIS_VECTORS HDU)."""
    from .redshift import read_redrock

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if path.lower().endswith((".fits", ".fit", ".fits.gz")):
        from astropy.io import fits

        with fits.open(path) as hdul:
            is_redrock = "BASIS_VECTORS" in hdul
        if is_redrock:
            return read_redrock(path)
    model = _load(path)
    if getattr(model, "wavelength_", None) is None:
        raise UsageError(f"{path}: the model has no wavelength_ (fit it with a wavelength "
                         "grid) so its templates cannot be redshifted")
    return model


def _parse_z_range(text):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ZMIN,ZMAX (e.g. 0.05,4); got {text!r}") from None
    if not (-1 < lo < hi):
        raise argparse.ArgumentTypeError(f"need -1 < ZMIN < ZMAX; got {text!r}")
    return lo, hi


def _write_zbest(path, result, overwrite):
    table = {"Z": result.z, "ZERR": result.z_err, "CHI2": result.chi2,
             "DELTACHI2": result.delta_chi2, "ZWARN": result.zwarn,
             "SPECTYPE": result.spectype, "SUBTYPE": result.subtype,
             "COEFF": result.coefficients, "NPIXELS": result.npixels}
    if path.lower().endswith(".npz"):
        np.savez(path, **{k.lower(): np.asarray(v) for k, v in table.items()})
        return
    if not path.lower().endswith((".fits", ".fit")):
        raise UsageError(f"{path}: the redshift table is written as .fits or .npz")
    try:
        from astropy.table import Table
    except ImportError:
        raise UsageError("writing FITS needs astropy (pip install 'specnmf[fits]'); "
                         "or write .npz") from None
    t = Table(table)
    t.meta["EXTNAME"] = "REDSHIFTS"
    t.write(path, format="fits", overwrite=overwrite)


def cmd_redshift(args):
    from .redshift import TemplateSet, fit_redshifts, redshift_grid

    _check_output(args.output, args.overwrite)
    templates = [_load_templates(p) for p in [args.model] + list(args.templates or [])]
    spectra = _read(args.input, args.hdu)
    if spectra.wavelength is None:
        raise UsageError(f"{args.input} has no wavelength grid; redshifts need one")
    wave = np.asarray(spectra.wavelength, dtype=np.float64)
    sets = []
    for i, t in enumerate(templates):
        if not isinstance(t, TemplateSet):   # a specnmf model
            T = np.asarray(t.templates_, dtype=np.float64)
            t = TemplateSet(T, np.asarray(t.wavelength_, dtype=np.float64),
                            args.spectype.upper() if i == 0 else f"{args.spectype.upper()}{i}",
                            method="NMF" if np.all(T >= 0) else "PCA")
        sets.append(t)
    z = None
    if args.z_range is not None:
        z = redshift_grid(*args.z_range, wavelength=wave, template_wavelength=sets[0].wavelength,
                          step=args.z_step)
    elif any(t.redshifts is None for t in sets):
        raise UsageError("--z-range is required (the templates carry no redshift grid)")
    bar = None
    progress = None
    if _verbose_for_progress(args):
        bar = _ProgressBar(spectra.shape[0], sys.stderr)
        _ProgressBar.active = bar

        def progress(done, total):
            bar.update(done, force=done == total)
    t0 = time.monotonic()
    try:
        result = fit_redshifts(sets, np.asarray(spectra.flux),
                               ivar=np.asarray(spectra.ivar), wavelength=wave, redshifts=z,
                               block_size=args.block_size, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    _write_zbest(args.output, result, args.overwrite)
    n = result.z.size
    good = np.count_nonzero(result.zwarn == 0)
    print(f"spectra:          {n}")
    print(f"zwarn == 0:       {good} ({100 * good / max(n, 1):.1f}%)")
    if n:
        kinds, counts = np.unique(result.spectype, return_counts=True)
        print("spectype:         " + ", ".join(f"{k} {c}" for k, c in zip(kinds, counts)))
    from .progress import format_seconds

    print(f"time:             {format_seconds(time.monotonic() - t0)}")
    print(f"wrote:            {args.output}")
    return 0


def cmd_export(args):
    from .redshift import write_redrock

    _check_output(args.output, args.overwrite)
    model = _load(args.model)
    if getattr(model, "wavelength_", None) is None:
        raise UsageError(f"{args.model}: the model has no wavelength_; export needs the "
                         "rest-frame wavelength grid")
    z = None
    if args.z_range is not None:
        lo, hi = args.z_range
        step = 5e-4 if args.z_step is None else args.z_step
        z = 10 ** np.arange(np.log10(1 + lo), np.log10(1 + hi) + step / 2, step) - 1
    write_redrock(args.output, model, spectype=args.spectype, subtype=args.subtype,
                  igm_model=args.igm_model, redshifts=z, overwrite=args.overwrite)
    print(f"templates:        {model.templates_.shape[0]} x {model.templates_.shape[1]} pixels")
    print(f"wrote:            {args.output} (redrock {args.spectype.upper()})")
    return 0


def _gib(nbytes):
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"


def _pack_source(args):
    """``(flux, ivar, metadata, close)`` of ``specnmf pack``'s input, read lazily."""
    if args.flux is None and args.ivar is None:
        spectra = _read(args.input, args.hdu, memmap=True)
        meta = {} if spectra.wavelength is None else {"wavelength": spectra.wavelength}
        flux, ivar = spectra.flux, spectra.ivar
        if ivar is None:  # a packed file, packed again (in another precision, say)
            return flux, flux.ivar, meta, flux
        return flux, ivar, meta, getattr(flux, "file", None)
    import h5py

    if not os.path.exists(args.input):
        raise UsageError(f"{args.input}: no such file")
    try:
        f = h5py.File(args.input, "r")
    except OSError as exc:
        raise UsageError(f"{args.input}: --flux/--ivar name datasets of an HDF5 file; "
                         f"cannot read it as one ({exc})") from None
    group = f if args.hdu is None else f[args.hdu]
    names = {"flux": args.flux or "flux", "ivar": args.ivar}
    for role, name in names.items():
        if name is not None and not isinstance(group.get(name), h5py.Dataset):
            f.close()
            raise UsageError(f"{args.input}: no dataset {name!r} for --{role}")
    # the other 1-D datasets (wavelength and the like) travel with the spectra
    meta = {k: v[()] for k, v in group.items() if isinstance(v, h5py.Dataset) and v.ndim == 1
            and k not in names.values()}
    return (group[names["flux"]], None if args.ivar is None else group[args.ivar], meta, f)


def cmd_pack(args):
    from .io import open_packed, pack_spectra

    if args.output is None:
        if not args.verify:
            raise UsageError("give INPUT and OUTPUT to pack, or --verify FILE to check a packed file")
        if not os.path.exists(args.input):
            raise UsageError(f"{args.input}: no such file")
        t0 = time.perf_counter()
        with open_packed(args.input, verify=True) as packed:
            print(f"file:             {args.input}")
            print(f"spectra:          {packed.shape[0]} x {packed.shape[1]} pixels, "
                  f"{packed.dtype.name}, {packed.stored_fraction:.1%} stored")
        print(f"checksums:        ok ({time.perf_counter() - t0:.2f} s)")
        return 0
    _check_output(args.output, args.overwrite)
    flux, ivar, meta, source = _pack_source(args)
    try:
        t0 = time.perf_counter()
        info = pack_spectra(flux, ivar, args.output, dtype=args.dtype, block_rows=args.block_rows,
                            metadata=meta, overwrite=args.overwrite)
        elapsed = time.perf_counter() - t0
    finally:
        if source is not None:
            source.close()
    if args.verify:
        open_packed(args.output, verify=True).close()
    dense, packed_bytes = info["dense_bytes"], info["file_bytes"]
    print(f"input:            {args.input} ({info['n_spectra']} spectra x {info['n_pixels']} "
          f"pixels, {info['dtype']})")
    print(f"stored pixels:    {info['packed_values'] / (info['n_spectra'] * info['n_pixels']):.1%}")
    print(f"dense flux+ivar:  {_gib(dense)}")
    print(f"packed file:      {_gib(packed_bytes)} ({packed_bytes / dense:.2f}x)")
    print(f"time:             {elapsed:.2f} s")
    print(f"wrote:            {args.output}{' (checksums verified)' if args.verify else ''}")
    return 0


def _common(parser):
    g = parser.add_argument_group("output control")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="only errors on stderr; no progress bar")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more diagnostics on stderr (-vv: debug, with tracebacks)")


def _fit_options(parser, *, with_k=True):
    g = parser.add_argument_group("SpectralNMF parameters (passed only if given)")
    for flags, name, typ, help_ in _FIT_OPTIONS:
        if name == "n_components" and not with_k:
            continue
        required = name == "n_components"
        metavar = "K" if name == "n_components" else name.upper()
        g.add_argument(*flags, dest=name, type=typ, default=None, help=help_, required=required,
                       metavar=metavar)


def _wrap(text):
    return textwrap.fill(" ".join(text.split()), width=78)


def _example(text):
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _command(sub, name, func, *, help, description, example):
    """A sub-command's parser: wrapped description, example epilog, handler."""
    p = sub.add_parser(name, help=help, description=_wrap(description), epilog=_example(example),
                       formatter_class=_Formatter)
    p.set_defaults(func=func)
    return p


def _hdu_option(parser):
    parser.add_argument("--hdu", default=None, help="FITS HDU / HDF5 group holding the spectra")


def _overwrite_option(parser, help="replace an existing output file"):
    parser.add_argument("--overwrite", action="store_true", help=help)


def build_parser():
    """The ``specnmf`` argument parser (exposed for documentation and tests)."""
    from ._version import __version__

    parser = _Parser(
        prog="specnmf",
        description=_wrap("Non-negative templates from noisy, weighted, masked, signed spectra."),
        epilog=_example("""
            specnmf demo -o specnmf_demo_output
            specnmf fit spectra.fits -k 5 -o model.fits
            specnmf transform model.fits new.fits -o coeffs.fits
            specnmf pack spectra.h5 packed.h5
        """),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"specnmf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = _command(sub, "fit", cmd_fit, help="fit templates to spectra and save the model",
                 description="""
                    Fit non-negative templates to the spectra in INPUT (FITS, npz, npy, HDF5) and
                    save the model (FITS or npz). An IFU cube (a FITS file with a 3-D DATA or FLUX
                    image) is fitted one spectrum per spaxel, weighted by its variance, and its
                    coefficient maps are written too (--maps).
                    """,
                 example=("""
                     specnmf fit spectra.fits -k 5 --solver anls -o model.fits
                     specnmf fit cube.fits -k 4 -o m.fits    # also writes m_maps.fits
                 """))
    p.add_argument("input", help="spectra file: FITS (FLUX/IVAR/MASK/WAVELENGTH; SDSS, DESI, "
                                 "LAMOST spectra; an IFU cube: ESO DATA/STAT/DQ or "
                                 "FLUX/IVAR/MASK), .npz, .npy, .h5")
    p.add_argument("-o", "--output", required=True, help="model file to write (.fits or .npz)")
    p.add_argument("--maps", default=None, metavar="PATH",
                   help="IFU cube only: where to write the coefficient maps, with the cube's "
                        "celestial WCS (default: OUTPUT with _maps.fits in place of its "
                        "extension)")
    _hdu_option(p)
    _overwrite_option(p)
    p.add_argument("--memmap", action="store_true",
                   help="stream the spectra from disk instead of loading them (FITS images, "
                        ".npy, HDF5; see --block-size)")
    _fit_options(p)
    _common(p)

    p = _command(sub, "transform", cmd_transform,
                 help="coefficients of spectra with a saved model's templates",
                 description="""
                    Fit coefficients (templates fixed) of the spectra in INPUT and write them
                    (.fits, .npz, .npy or .csv) with each spectrum's chi^2.  For an IFU cube, write
                    the coefficient maps (.fits) with the cube's celestial WCS and CHI2 (and SIGMA)
                    map extensions.
                    """,
                 example=("specnmf transform model.fits new.fits -o coeffs.fits "
                          "--uncertainty"))
    p.add_argument("model", help="model file written by 'specnmf fit'")
    p.add_argument("input", help="spectra file")
    p.add_argument("-o", "--output", required=True, help="coefficients file (.fits/.npz/.npy/.csv)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write the 1-sigma uncertainty of each coefficient")
    _hdu_option(p)
    _overwrite_option(p)
    _common(p)

    p = _command(sub, "plot", cmd_plot, help="plot a saved model's templates to an image",
                 description="""
                    Plot the templates of a saved model (needs matplotlib).
                    """,
                 example=("specnmf plot model.fits -o templates.png"))
    p.add_argument("model", help="model file")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--dpi", type=int, default=110, help="resolution of raster images (default 110)")
    _overwrite_option(p)
    _common(p)

    p = _command(sub, "info", cmd_info, help="summarise a saved model",
                 description="""
                    Print a saved model's settings, shapes, iterations and chi^2.
                    """,
                 example=("specnmf info model.fits"))
    p.add_argument("model", help="model file")
    _common(p)

    p = _command(sub, "cv", cmd_cv, help="choose the number of templates by held-out chi^2",
                 description="""
                    Hold out a random fraction of the observed pixels, fit each candidate number of
                    templates to the rest and print the held-out chi^2 per candidate and the
                    selected one (the smallest within one standard error of the minimum).
                    """,
                 example=("specnmf cv spectra.fits --candidates 1-8 --max-iter 500"))
    p.add_argument("input", help="spectra file")
    p.add_argument("--candidates", type=_parse_candidates, default=list(range(1, 9)),
                   help="numbers of templates to try, e.g. 1-8 or 2,4,6 (default 1-8)")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of observed pixels held out (default 0.1)")
    p.add_argument("--rule", choices=("one_se", "min"), default="one_se",
                   help="one_se: smallest candidate within one standard error of the best "
                        "(default); min: lowest held-out chi^2")
    _hdu_option(p)
    _fit_options(p, with_k=False)
    _common(p)

    p = _command(sub, "demo", cmd_demo, help="fit the paper's doublet: summary, model and plot",
                 description="""
                    Fit two Nearly-NMF templates to the Nearly-NMF paper's toy doublet (bundled with
                    specnmf), print a summary, and write DIR/doublet_model.fits and
                    DIR/doublet_templates.png.
                    """,
                 example=("specnmf demo -o specnmf_demo_output"))
    p.add_argument("-o", "--output", default="specnmf_demo_output", metavar="DIR",
                   help="output directory (created; default specnmf_demo_output)")
    p.add_argument("--max-iter", type=int, default=1000, help="maximum iterations (default 1000)")
    p.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    _overwrite_option(p, "replace existing output files")
    _common(p)

    p = _command(sub, "redshift", cmd_redshift,
                 help="redshifts of spectra with a model's (or redrock) templates",
                 description="""
                    Fit each spectrum in INPUT (observed frame, with a wavelength grid) with the
                    rest-frame templates of MODEL (a specnmf model or a redrock template file) at
                    every trial redshift (NNLS for non-negative templates) and write the best
                    redshift per spectrum: Z, ZERR, CHI2, DELTACHI2, ZWARN, SPECTYPE, SUBTYPE,
                    COEFF, NPIXELS.
                    """,
                 example=("specnmf redshift model.fits spectra.fits --z-range 0.05,4 "
                          "-o zbest.fits"))
    p.add_argument("model", help="model file (rest-frame templates) or redrock template file")
    p.add_argument("input", help="spectra file with a wavelength grid")
    p.add_argument("-o", "--output", required=True, help="redshift table (.fits or .npz)")
    p.add_argument("--templates", nargs="+", default=None, metavar="FILE",
                   help="more template sets (e.g. redrock GALAXY/STAR files); the best "
                        "class is chosen by chi^2")
    p.add_argument("--z-range", type=_parse_z_range, default=None, metavar="ZMIN,ZMAX",
                   help="trial redshift range (default: the redrock file's own grid)")
    p.add_argument("--z-step", type=float, default=None,
                   help="step in log10(1+z) (default: one pixel of a log-lambda grid, else 1e-4)")
    p.add_argument("--spectype", default="QSO", help="class name of MODEL's templates (QSO)")
    p.add_argument("--block-size", type=int, default=16, help="spectra per block (default 16)")
    _hdu_option(p)
    _overwrite_option(p)
    _common(p)

    p = _command(sub, "pack", cmd_pack,
                 help="write spectra span-packed, validated once, for fast streamed fits",
                 description="""
                    Write the spectra of INPUT to OUTPUT (HDF5) keeping only each spectrum's
                    observed span (first to last pixel with ivar > 0), validated once here:
                    a fit of OUTPUT then reads only the observed bytes and never validates
                    them again (specnmf fit OUTPUT --memmap, or SpectralNMF().fit(
                    specnmf.io.open_packed(OUTPUT))).  INPUT is read block by block.
                    --verify checks a packed file's checksums (reads it once).
                    """,
                 example=("""
                     specnmf pack spectra.h5 packed.h5
                     specnmf fit packed.h5 --memmap -k 5 --dtype float32 -o model.fits
                     specnmf pack --verify packed.h5
                 """))
    p.add_argument("input", help="spectra file (HDF5 flux/ivar datasets, FITS image, .npy), or "
                                 "with --verify alone, the packed file to check")
    p.add_argument("output", nargs="?", default=None, help="packed HDF5 file to write")
    p.add_argument("--flux", default=None, metavar="NAME",
                   help="HDF5 dataset of the flux (default: found as 'specnmf fit' finds it)")
    p.add_argument("--ivar", default=None, metavar="NAME",
                   help="HDF5 dataset of the inverse variance (with --flux; none: unit weights)")
    p.add_argument("--block-rows", type=int, default=None, metavar="N",
                   help="spectra read and validated at a time (default: ~16 M pixels)")
    p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="stored precision (default: float32 for float32 flux, else float64)")
    p.add_argument("--verify", action="store_true",
                   help="check the checksums of OUTPUT after writing it, or of INPUT alone")
    _hdu_option(p)
    _overwrite_option(p)
    _common(p)

    p = _command(sub, "export", cmd_export, help="export a model's templates for another program",
                 description="""
                    Write a saved model's templates in another format: 'redrock' writes a redrock
                    template file (RRMETHOD NMF for non-negative templates) that
                    redrock.templates.Template loads.
                    """,
                 example=("specnmf export model.fits --format redrock --spectype QSO "
                          "-o rrtemplate-qso.fits"))
    p.add_argument("model", help="model file")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--format", choices=("redrock",), default="redrock", help="output format")
    p.add_argument("--spectype", default="QSO", help="redrock RRTYPE (default QSO)")
    p.add_argument("--subtype", default="", help="redrock RRSUBTYP (default none)")
    p.add_argument("--igm-model", default="None",
                   help="redrock RRIGM: IGM transmission redrock applies (default None)")
    p.add_argument("--z-range", type=_parse_z_range, default=None, metavar="ZMIN,ZMAX",
                   help="write redrock's trial redshifts (REDSHIFTS HDU) over this range")
    p.add_argument("--z-step", type=float, default=None,
                   help="their step in log10(1+z) (default 5e-4)")
    _overwrite_option(p)
    _common(p)
    return parser


def main(argv=None) -> int:
    """Run the ``specnmf`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status: 0 success, 1 failure while running, 2 bad input
    (unreadable or missing files, wrong shapes, invalid options or
    parameters, an output that exists without ``--overwrite``), 130 interrupted.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        _error(exc)
        return 2
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 2
    level = (logging.ERROR if args.quiet else
             logging.DEBUG if args.verbose >= 2 else logging.INFO)
    with _logging_setup(level):
        try:
            return args.func(args)
        except (UsageError, FileNotFoundError, FileExistsError, ValueError, TypeError) as exc:
            logger.debug("details", exc_info=True)
            _error(exc)
            return 2
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except BrokenPipeError:
            # stdout closed early (`specnmf info model.fits | head`): stop quietly, and
            # keep the interpreter's final flush from failing on the dead pipe
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 141
        except Exception as exc:
            logger.debug("details", exc_info=True)
            _error(f"{type(exc).__name__}: {exc}" if not isinstance(exc, (RuntimeError, OSError))
                   else exc)
            return 1
        finally:
            if _ProgressBar.active is not None:
                _ProgressBar.active.close()


def _error(message):
    text = " ".join(str(message).split())  # one line, whatever the exception said
    sys.stderr.write(f"specnmf: error: {text}\n")
    sys.stderr.flush()
