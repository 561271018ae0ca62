"""Demonstrations on bundled and simulated data.

:func:`stellar_demo` repeats the SpectralUnmix stellar experiment: a
four-component NMF and a four-component PCA of 80 Coelho (2014) stellar
spectra (20 each of hot stars, A/F stars, solar-like stars and cool dwarfs),
with each component matched one-to-one to a class prototype (the class mean
spectrum) and the class-component distances tabulated.

:func:`ifu_demo` fits a simulated IFU cube with and without the spatial
(neighbouring-spaxel) penalty and measures the coefficient maps against the
truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

logger = logging.getLogger("specnmf")

__all__ = ["StellarDemoResult", "stellar_demo", "ifu_demo", "STELLAR_DEMO_CLASSES",
           "correlation_matrix", "match_components"]

#: the four classes of the SpectralUnmix demonstration (cool giants are left out)
STELLAR_DEMO_CLASSES = ("hot_star", "a_f_star", "solar_like", "cool_dwarf")


def correlation_matrix(A, B):
    """Pearson correlation (across pixels) of every row of ``A`` with every row of ``B``.

    Parameters
    ----------
    A : array-like of shape (m, n_pixels)
    B : array-like of shape (p, n_pixels)

    Returns
    -------
    ndarray of shape (m, p)
        A constant row has correlation 0 with everything (not NaN).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    A = A - A.mean(axis=1, keepdims=True)
    B = B - B.mean(axis=1, keepdims=True)
    na = np.linalg.norm(A, axis=1, keepdims=True)
    nb = np.linalg.norm(B, axis=1, keepdims=True)
    # a constant row has no direction: define its correlation as 0 rather than 0/0
    A = np.divide(A, na, out=np.zeros_like(A), where=na > 0)
    B = np.divide(B, nb, out=np.zeros_like(B), where=nb > 0)
    return np.clip(A @ B.T, -1.0, 1.0)


def match_components(prototypes, components):
    """One-to-one matching of components to prototypes by largest absolute correlation.

    Solves the assignment problem (``scipy.optimize.linear_sum_assignment``)
    on the absolute Pearson correlations, so the sign of a component (free in
    PCA) does not matter.

    Parameters
    ----------
    prototypes : array-like of shape (n_classes, n_pixels)
    components : array-like of shape (n_components, n_pixels), n_components >= n_classes

    Returns
    -------
    assignment : ndarray of int, of shape (n_classes,)
        Component matched to each prototype.
    correlation : ndarray of shape (n_classes,)
        The signed correlation of each prototype with its component.
    """
    from scipy.optimize import linear_sum_assignment

    corr = correlation_matrix(prototypes, components)
    if corr.shape[1] < corr.shape[0]:
        raise ValueError(f"need at least as many components ({corr.shape[1]}) as prototypes "
                         f"({corr.shape[0]}) for a one-to-one matching")
    rows, cols = linear_sum_assignment(-np.abs(corr))
    assignment = np.empty(corr.shape[0], dtype=np.intp)
    assignment[rows] = cols
    return assignment, corr[np.arange(corr.shape[0]), assignment]


def _unit_rms(Y):
    rms = np.sqrt(np.mean(Y * Y, axis=-1, keepdims=True))
    return np.divide(Y, rms, out=np.zeros_like(Y), where=rms > 0)


def _rms_distance(a, b):
    """RMS difference of two spectra after scaling each to unit RMS (0 to 2)."""
    d = _unit_rms(a) - _unit_rms(b)
    return float(np.sqrt(np.mean(d * d)))


@dataclass
class StellarDemoResult:
    """What :func:`stellar_demo` returns.

    Attributes
    ----------
    classes : tuple of str
        The stellar classes, in the order of ``prototypes``.
    wavelength : ndarray of shape (n_pixels,)
        Angstrom.
    prototypes : ndarray of shape (n_classes, n_pixels)
        Mean spectrum of each class.
    nmf_templates : ndarray of shape (n_components, n_pixels)
        NMF templates (>= 0), each scaled to a maximum of 1.
    pca_components : ndarray of shape (n_components, n_pixels)
        Principal directions of the mean-centred spectra (unit norm); the
        matched ones are signed to correlate positively with their class.
    nmf_assignment, pca_assignment : ndarray of int, of shape (n_classes,)
        Component matched to each class.
    nmf_correlations : ndarray of shape (n_classes,)
        Correlation of each class prototype with its NMF template.
    pca_correlations : ndarray of shape (n_classes,)
        Absolute correlation of each prototype with its PCA component.
    table : list of dict
        One row per class: ``class``, ``nmf_component``, ``nmf_correlation``,
        ``nmf_distance`` (1 - r), ``nmf_rms`` (RMS difference after scaling
        both spectra to unit RMS) and the same for PCA.
    model : SpectralNMF
        The fitted model.
    pca_explained_variance_ratio : ndarray of shape (n_components,)
    figure : matplotlib.figure.Figure or None
        The four-panel figure (``plot=True``).
    """

    classes: tuple
    wavelength: np.ndarray
    prototypes: np.ndarray
    nmf_templates: np.ndarray
    pca_components: np.ndarray
    nmf_assignment: np.ndarray
    pca_assignment: np.ndarray
    nmf_correlations: np.ndarray
    pca_correlations: np.ndarray
    table: list
    model: object
    pca_explained_variance_ratio: np.ndarray
    figure: object = field(default=None, repr=False)

    @property
    def nmf_mean_correlation(self):
        """Mean matched correlation of the NMF templates with the prototypes."""
        return float(np.mean(self.nmf_correlations))

    @property
    def pca_mean_correlation(self):
        """Mean matched absolute correlation of the PCA components with the prototypes."""
        return float(np.mean(self.pca_correlations))

    def format_table(self):
        """The distance table as aligned text."""
        head = (f"{'class':<12}{'NMF k':>6}{'NMF r':>8}{'1-r':>8}{'rms':>8}"
                f"{'PCA k':>7}{'PCA |r|':>9}{'1-|r|':>8}{'rms':>8}")
        lines = [head, "-" * len(head)]
        for row in self.table:
            lines.append(f"{row['class']:<12}{row['nmf_component']:>6d}"
                         f"{row['nmf_correlation']:>8.3f}{row['nmf_distance']:>8.3f}"
                         f"{row['nmf_rms']:>8.3f}{row['pca_component']:>7d}"
                         f"{row['pca_correlation']:>9.3f}{row['pca_distance']:>8.3f}"
                         f"{row['pca_rms']:>8.3f}")
        lines.append(f"{'mean':<12}{'':>6}{self.nmf_mean_correlation:>8.3f}{'':>16}"
                     f"{'':>7}{self.pca_mean_correlation:>9.3f}")
        return "\n".join(lines)

    def summary(self):
        """JSON-serialisable summary: settings, table, mean correlations, fit diagnostics."""
        m = self.model
        return {
            "classes": list(self.classes),
            "n_spectra": int(np.asarray(m.coefficients_).shape[0]),
            "n_pixels": int(self.wavelength.size),
            "params": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                       for k, v in m.get_params().items()},
            "n_iter": int(m.n_iter_),
            "converged": bool(m.converged_),
            "chi2": float(m.chi2_[-1]),
            "nmf_mean_correlation": self.nmf_mean_correlation,
            "pca_mean_abs_correlation": self.pca_mean_correlation,
            "pca_explained_variance_ratio": [float(v) for v in self.pca_explained_variance_ratio],
            "table": self.table,
        }


def _pca(X, n_components):
    """Principal directions of the mean-centred rows of X (numpy SVD, no scikit-learn)."""
    centred = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s * s
    total = var.sum()
    ratio = var[:n_components] / total if total > 0 else np.zeros(n_components)
    return vt[:n_components].copy(), ratio


def stellar_demo(*, n_components=4, solver="anls", smoothness=0.0, random_state=0,
                 max_iter=500, tol=1e-6, init="nndsvda", plot=True):
    """NMF vs PCA of 80 Coelho (2014) stellar spectra, as in the SpectralUnmix note.

    The spectra of the four classes :data:`STELLAR_DEMO_CLASSES` (20 each,
    noiseless, each scaled to a maximum of 1, unit ``ivar``) are factorised by
    :class:`specnmf.SpectralNMF` and by PCA (numpy SVD of the mean-centred
    spectra).  Each class prototype (the class mean spectrum) is matched
    one-to-one to a component by the largest absolute correlation, and the
    class-component distances are tabulated.  The NMF templates are
    non-negative and trace the classes' spectral shapes; PCA directions are
    signed and mix classes, so they correlate less with the prototypes.

    Parameters
    ----------
    n_components : int, default=4
        Components of both decompositions, at least the number of classes (4).
    solver : str, default="anls"
        ``SpectralNMF`` solver.
    smoothness : float, default=0.0
        Strength of the first-difference smoothness penalty of the note's eq. (1).
    random_state : int or None, default=0
    max_iter : int, default=500
    tol : float, default=1e-6
    init : str, default="nndsvda"
        ``SpectralNMF`` start (deterministic by default, so the demo is too).
    plot : bool, default=True
        Also draw the four-panel figure (needs matplotlib) into ``result.figure``.

    Returns
    -------
    StellarDemoResult

    References
    ----------
    SpectralUnmix (R. S. de Souza), MIT licence; P. R. T. Coelho 2014, MNRAS
    440, 1027.
    """
    from .datasets import load_coelho
    from .estimator import SpectralNMF

    classes = STELLAR_DEMO_CLASSES
    if isinstance(n_components, bool) or not isinstance(n_components, Integral) \
            or n_components < len(classes):
        raise ValueError(f"n_components must be an int >= {len(classes)} (one component per "
                         f"class at least); got {n_components!r}")
    stars = load_coelho(classes)
    X, wavelength = stars.flux, stars.wavelength
    prototypes = np.stack([X[stars.type == c].mean(axis=0) for c in classes])

    model = SpectralNMF(int(n_components), solver=solver, init=init, random_state=random_state,
                        max_iter=max_iter, tol=tol, smoothness=smoothness)
    model.fit(X, ivar=np.ones_like(X), wavelength=wavelength)

    peak = model.templates_.max(axis=1, keepdims=True)
    nmf = np.divide(model.templates_, peak, out=np.zeros_like(model.templates_),
                    where=peak > 0)
    pca, ratio = _pca(X, int(n_components))

    nmf_assign, nmf_corr = match_components(prototypes, nmf)
    pca_assign, pca_corr = match_components(prototypes, pca)
    # PCA directions have no sign: orient the matched ones along their class
    pca[pca_assign[pca_corr < 0]] *= -1
    pca_corr = np.abs(pca_corr)

    table = []
    for c, name in enumerate(classes):
        kn, kp = int(nmf_assign[c]), int(pca_assign[c])
        table.append({
            "class": name,
            "nmf_component": kn,
            "nmf_correlation": float(nmf_corr[c]),
            "nmf_distance": float(1.0 - nmf_corr[c]),
            "nmf_rms": _rms_distance(prototypes[c], nmf[kn]),
            "pca_component": kp,
            "pca_correlation": float(pca_corr[c]),
            "pca_distance": float(1.0 - pca_corr[c]),
            "pca_rms": _rms_distance(prototypes[c], pca[kp]),
        })
    result = StellarDemoResult(
        classes=classes, wavelength=wavelength, prototypes=prototypes, nmf_templates=nmf,
        pca_components=pca, nmf_assignment=nmf_assign, pca_assignment=pca_assign,
        nmf_correlations=nmf_corr, pca_correlations=pca_corr, table=table, model=model,
        pca_explained_variance_ratio=ratio)
    logger.info("stellar demo: mean matched correlation NMF %.3f, PCA %.3f",
                result.nmf_mean_correlation, result.pca_mean_correlation)
    if plot:
        from .plotting import plot_stellar_demo

        result.figure = plot_stellar_demo(result)
    return result


def _matched_maps(model_templates, model_coefficients, true_templates, spatial_shape):
    """Fitted maps in the order and scale of the true components.

    Templates are matched one-to-one to the true ones by correlation; each
    fitted template is scaled to the maximum of its true template (1), and
    its coefficients inversely, so the maps can be compared directly.
    """
    from .ifu import coefficient_maps

    assignment, corr = match_components(true_templates, model_templates)
    T = model_templates[assignment]
    C = model_coefficients[:, assignment]
    peak = T.max(axis=1)
    scale = np.where(peak > 0, peak / true_templates.max(axis=1), 1.0)
    return coefficient_maps(C * scale, spatial_shape), T / scale[:, None], corr


def ifu_demo(*, ny=30, nx=30, n_wave=300, snr=0.3, spatial=0.1, solver="anls",
             max_iter=300, tol=1e-6, init="nndsvda", random_state=0):
    """Fit a simulated IFU cube with and without the spatial penalty.

    Simulates :func:`specnmf.datasets.make_ifu_cube`, fits a three-component
    :class:`specnmf.SpectralNMF` through :func:`specnmf.ifu.fit_cube` with
    ``spatial=0`` and with ``spatial=spatial``, matches the fitted
    components to the true ones and measures the error of each coefficient
    map against the truth.

    Parameters
    ----------
    ny, nx, n_wave : int
        Size of the simulated cube.
    snr : float, default=0.3
        Signal-to-noise of the mean pixel (low, so that the spatial penalty has
        noise to remove).
    spatial : float, default=0.1
        Strength of the spatial penalty of the second fit.  Skipped (``None``
        in the result) if the estimator has no ``spatial`` parameter.
    solver, max_iter, tol, init, random_state
        Passed to :class:`specnmf.SpectralNMF`.

    Returns
    -------
    dict
        ``sim`` (the simulation :class:`~specnmf.datasets.Bunch`), and for
        each fit under ``"plain"`` and ``"spatial"``: ``model``, ``maps``
        of shape (ny, nx, 3) in the order of the true components,
        ``templates`` of shape (3, n_wave), ``template_correlation`` of shape
        (3,), ``map_error`` of shape (3,) (RMS of fitted minus true map over
        the RMS of the true map) and ``cube_rms`` (RMS of model minus noiseless
        cube, relative to the truth's RMS).
    """
    from .datasets import make_ifu_cube
    from .estimator import SpectralNMF
    from .ifu import fit_cube, reconstruct_cube

    sim = make_ifu_cube(ny, nx, n_wave, snr=snr, random_state=random_state)
    shape = (ny, nx)
    out = {"sim": sim}
    truth_rms = float(np.sqrt(np.mean(sim.truth**2)))
    for name, strength in {"plain": 0.0, "spatial": spatial}.items():
        params = dict(solver=solver, init=init, random_state=random_state,
                      max_iter=max_iter, tol=tol, spatial=strength)
        model = fit_cube(SpectralNMF(3, **params), sim.cube, ivar=sim.ivar,
                         wavelength=sim.wavelength)
        maps, templates, corr = _matched_maps(model.templates_, model.coefficients_,
                                              sim.templates, shape)
        true_rms = np.sqrt(np.mean(sim.maps**2, axis=(0, 1)))
        err = np.sqrt(np.mean((maps - sim.maps) ** 2, axis=(0, 1))) / true_rms
        resid = reconstruct_cube(model.coefficients_, model.templates_, shape) - sim.truth
        out[name] = {
            "model": model,
            "maps": maps,
            "templates": templates,
            "template_correlation": corr,
            "map_error": err,
            "cube_rms": float(np.sqrt(np.mean(resid**2))) / truth_rms,
        }
        logger.info("ifu demo (%s): map errors %s", name, np.round(err, 3))
    return out
