"""Matplotlib figures of fits: templates, coefficient maps, objective, reconstructions.

matplotlib is imported inside each function, so ``import specnmf`` never
needs it (install ``specnmf[plot]``).  Every function returns the
``matplotlib.figure.Figure`` and never calls ``plt.show()``; save it with
``fig.savefig(...)`` and close it with ``plt.close(fig)``.

The functions read only numpy arrays and the documented attributes of a
fitted model: ``templates_``, ``coefficients_``, ``chi2_``, ``objective_``,
``history_`` (dict of arrays, optional) and ``wavelength_`` (may be None).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "plot_templates",
    "plot_coefficient_maps",
    "plot_objective",
    "plot_reconstruction",
    "plot_stellar_demo",
]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the test extras
        raise ImportError("plotting needs matplotlib (pip install 'specnmf[plot]')") from exc
    return plt


def _figure_and_axes(ax, **subplots):
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(**subplots)
        return fig, ax
    return ax.figure, ax


def _templates_of(model_or_templates):
    T = getattr(model_or_templates, "templates_", model_or_templates)
    T = np.asarray(T, dtype=np.float64)
    if T.ndim == 1:
        T = T[None, :]
    if T.ndim != 2:
        raise ValueError(f"templates must be 2-D (n_components, n_pixels); got shape {T.shape}")
    return T


def _x_axis(wavelength, n_pixels, name="wavelength"):
    if wavelength is None:
        return np.arange(n_pixels), "pixel"
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.shape != (n_pixels,):
        raise ValueError(f"{name} must have shape ({n_pixels},); got {wavelength.shape}")
    return wavelength, "wavelength"


def plot_templates(model_or_templates, wavelength=None, ax=None, *, labels=None, colors=None,
                   normalize=False):
    """Plot the templates (component spectra).

    Parameters
    ----------
    model_or_templates : fitted model or array-like of shape (n_components, n_pixels)
        A model's ``templates_`` (and ``wavelength_``) are used.
    wavelength : array-like of shape (n_pixels,), optional
        x axis; default the model's ``wavelength_``, else pixel index.
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure.
    labels : sequence of str, optional
        Legend label per template (default ``component k``).
    colors : sequence of colours, optional
    normalize : bool, default=False
        Scale each template to a maximum of 1 (templates carry an arbitrary
        scale that the coefficients compensate).

    Returns
    -------
    matplotlib.figure.Figure
    """
    T = _templates_of(model_or_templates)
    if wavelength is None:
        wavelength = getattr(model_or_templates, "wavelength_", None)
    x, xlabel = _x_axis(wavelength, T.shape[1])
    fig, ax = _figure_and_axes(ax, figsize=(7, 4))
    if normalize:
        peak = T.max(axis=1, keepdims=True)
        T = T / np.where(peak > 0, peak, 1.0)
    for k, row in enumerate(T):
        ax.plot(x, row, lw=1.0, label=labels[k] if labels is not None else f"component {k}",
                color=None if colors is None else colors[k])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("template (normalised)" if normalize else "template")
    ax.legend(fontsize="small")
    return fig


def plot_coefficient_maps(maps, *, names=None, ncols=None, cmap="viridis"):
    """Images of coefficient maps, one panel (with a colour bar) per component.

    Parameters
    ----------
    maps : array-like of shape (ny, nx, n_components)
        From :func:`specnmf.ifu.coefficient_maps`; a single (ny, nx) map is
        also accepted.
    names : sequence of str, optional
        Panel titles (default ``component k``).
    ncols : int, optional
        Panels per row (default: all in one row up to 4).

    Returns
    -------
    matplotlib.figure.Figure
        With ``n_components`` image axes and as many colour-bar axes.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[..., None]
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (ny, nx, n_components); got {maps.shape}")
    k = maps.shape[-1]
    ncols = min(k, 4) if ncols is None else int(ncols)
    nrows = -(-k // ncols)
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.9 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            fig.delaxes(ax)
            continue
        im = ax.imshow(maps[..., i], origin="lower", cmap=cmap, interpolation="nearest")
        ax.set_title(names[i] if names is not None else f"component {i}")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.tight_layout()
    return fig


def plot_objective(model, ax=None):
    """chi^2 and each penalty against iteration, on a log scale.

    Uses ``model.history_`` (dict of arrays: ``"chi2"`` and each penalty) when
    the model has it, else ``model.chi2_``; the total ``objective_`` is drawn
    too when it differs from chi^2.  Series that are never positive (a
    penalty of 0) cannot be shown on a log axis and are left out.

    Returns
    -------
    matplotlib.figure.Figure
    """
    history = getattr(model, "history_", None)
    series = {}
    if isinstance(history, dict) and history:
        series.update({name: np.asarray(v, dtype=np.float64) for name, v in history.items()})
    elif getattr(model, "chi2_", None) is not None:
        series["chi2"] = np.asarray(model.chi2_, dtype=np.float64)
    else:
        raise ValueError("model has neither history_ nor chi2_; is it fitted?")
    objective = getattr(model, "objective_", None)
    if objective is not None:
        objective = np.asarray(objective, dtype=np.float64)
        chi = series.get("chi2")
        if chi is None or chi.shape != objective.shape or not np.allclose(chi, objective):
            series["objective"] = objective
    fig, ax = _figure_and_axes(ax, figsize=(6, 4))
    for name, values in series.items():
        if values.ndim != 1 or not np.any(values > 0):
            continue
        ax.plot(np.arange(values.size), np.where(values > 0, values, np.nan), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("value")
    ax.legend(fontsize="small")
    return fig


def plot_reconstruction(X, ivar, model, indices, *, wavelength=None, coefficients=None,
                        components=True):
    """Data, 1-sigma error band, model and per-component contributions of some spectra.

    Parameters
    ----------
    X : array-like of shape (n_spectra, n_pixels)
        The spectra the model was fitted to (or any spectra, with ``coefficients``).
    ivar : array-like of shape (n_spectra, n_pixels) or None
        Inverse variance; pixels with ``ivar == 0`` are drawn as gaps.
    model : fitted model
        Its ``templates_`` and (unless ``coefficients`` is given) ``coefficients_``.
    indices : int or sequence of int
        Rows of ``X`` to draw, one panel each.
    wavelength : array-like of shape (n_pixels,), optional
        Default the model's ``wavelength_``.
    coefficients : array-like of shape (n_spectra, n_components), optional
        Coefficients of the rows of ``X`` (e.g. ``model.transform(X, ivar=ivar)``);
        default ``model.coefficients_``.
    components : bool, default=True
        Also draw each component's contribution ``c_k * templates_[k]``.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per index.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_spectra, n_pixels); got shape {X.shape}")
    ivar = np.ones_like(X) if ivar is None else np.asarray(ivar, dtype=np.float64)
    if ivar.shape != X.shape:
        raise ValueError(f"ivar must have the shape of X, {X.shape}; got {ivar.shape}")
    T = _templates_of(model)
    if T.shape[1] != X.shape[1]:
        raise ValueError(f"X has {X.shape[1]} pixels but the templates have {T.shape[1]}")
    C = np.asarray(model.coefficients_ if coefficients is None else coefficients,
                   dtype=np.float64)
    if C.shape != (X.shape[0], T.shape[0]):
        raise ValueError(f"coefficients must have shape {(X.shape[0], T.shape[0])}, one row "
                         f"per spectrum of X; got {C.shape}")
    indices = np.atleast_1d(np.asarray(indices))
    if indices.ndim != 1 or indices.size == 0 or indices.dtype.kind not in "iu" \
            or np.any(indices >= X.shape[0]) or np.any(indices < -X.shape[0]):
        raise ValueError(f"indices must be row numbers of X (0 to {X.shape[0] - 1}); "
                         f"got {indices!r}")
    if wavelength is None:
        wavelength = getattr(model, "wavelength_", None)
    x, xlabel = _x_axis(wavelength, X.shape[1])

    plt = _pyplot()
    fig, axes = plt.subplots(indices.size, 1, figsize=(8, 2.6 * indices.size), sharex=True,
                             squeeze=False)
    for ax, i in zip(axes[:, 0], indices):
        observed = ivar[i] > 0
        flux = np.where(observed, X[i], np.nan)
        sigma = np.full(X.shape[1], np.nan)
        sigma[observed] = 1.0 / np.sqrt(ivar[i][observed])
        ax.fill_between(x, flux - sigma, flux + sigma, color="0.8", lw=0, label="1-sigma")
        ax.plot(x, flux, color="0.3", lw=0.7, label="data")
        if components:
            for k in range(T.shape[0]):
                ax.plot(x, C[i, k] * T[k], lw=0.8, ls="--", label=f"component {k}")
        ax.plot(x, C[i] @ T, color="C3", lw=1.2, label="model")
        ax.set_ylabel(f"spectrum {int(i)}")
    axes[-1, 0].set_xlabel(xlabel)
    axes[0, 0].legend(fontsize="x-small", ncol=3)
    fig.tight_layout()
    return fig


def plot_stellar_demo(result):
    """The four panels of the SpectralUnmix stellar demonstration.

    A: class prototype spectra; B: PCA components; C: NMF templates (colours
    show the one-to-one matching to the classes); D: the table of
    class-component distances.  Wavelength is drawn on a log axis.

    Parameters
    ----------
    result : specnmf.demos.StellarDemoResult

    Returns
    -------
    matplotlib.figure.Figure
        With four axes.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_a, ax_b), (ax_c, ax_d) = axes
    wl = np.asarray(result.wavelength)
    colors = [f"C{i}" for i in range(len(result.classes))]

    def unit_peak(y):
        peak = np.max(np.abs(y))
        return y / peak if peak > 0 else y

    for c, name in enumerate(result.classes):
        ax_a.plot(wl, unit_peak(result.prototypes[c]), color=colors[c], lw=0.8, label=name)
    ax_a.set_title("A  class prototypes (mean spectra)")

    for panel, comps, assignment, title in (
            (ax_b, result.pca_components, result.pca_assignment, "B  PCA components"),
            (ax_c, result.nmf_templates, result.nmf_assignment, "C  NMF templates")):
        matched = {int(k): c for c, k in enumerate(assignment)}
        for k, comp in enumerate(comps):
            c = matched.get(k)
            panel.plot(wl, unit_peak(comp), lw=0.8,
                       color=colors[c] if c is not None else "0.6",
                       label=f"{k} -> {result.classes[c]}" if c is not None else f"{k} unmatched")
        panel.axhline(0, color="0.7", lw=0.5)
        panel.set_title(title)
    for ax in (ax_a, ax_b, ax_c):
        ax.set_xscale("log")
        ax.set_xlabel("wavelength [Angstrom]")
        ax.legend(fontsize="x-small")

    ax_d.axis("off")
    ax_d.set_title("D  class-component distances")
    cols = ["class", "NMF r", "NMF 1-r", "NMF rms", "PCA |r|", "PCA 1-|r|", "PCA rms"]
    cells = [[row["class"], f"{row['nmf_correlation']:.3f}", f"{row['nmf_distance']:.3f}",
              f"{row['nmf_rms']:.3f}", f"{row['pca_correlation']:.3f}",
              f"{row['pca_distance']:.3f}", f"{row['pca_rms']:.3f}"] for row in result.table]
    cells.append(["mean", f"{result.nmf_mean_correlation:.3f}", "", "",
                  f"{result.pca_mean_correlation:.3f}", "", ""])
    table = ax_d.table(cellText=cells, colLabels=cols, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.4)
    fig.tight_layout()
    return fig
