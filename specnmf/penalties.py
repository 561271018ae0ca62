r"""Penalties (regularisers) added to the chi^2 objective.

The full objective of a regularised fit is

.. math::

    \chi^2(C, T) + \sum_p P_p(C, T),

with coefficients ``C`` of shape (n_spectra, n_components) and templates ``T``
of shape (n_components, n_pixels), both >= 0.  Index letters: ``i``/``a``/``b``
spectrum, ``j`` pixel, ``k`` component.  Three penalties are provided
(``lam`` is ``strength``, ``s`` is ``ivar_scale``, the mean of the observed
inverse variance, which makes ``strength`` dimensionless: the same value means
the same thing whatever the flux units):

=====================  ===================================================================
``Smoothness``         ``lam s sum_k ||C[:, k]||^2 ||D T[k]||^2``, D = first differences
                       along pixels
``Sparsity``           ``lam sqrt(s) sum_k (sum_i C[i, k]) (sum_j T[k, j])``, the L1 norm
                       of each component's contribution ``C[:, k] T[k]``
``Spatial``            ``lam s sum_k ||T[k]||^2 sum_{a~b} (C[a, k] - C[b, k])^2`` over the
                       4-connected neighbours of the (ny, nx) grid of spectra
                       (spectrum ``a = y * nx + x``)
=====================  ===================================================================

Each is invariant under ``C[:, k] *= a_k, T[k] /= a_k`` (it measures the
contribution ``C[:, k] T[k]``, not how it is split between the factors), and
each is a convex quadratic (Sparsity: linear) in either factor with the other
fixed.

Interface
---------
Every penalty is an object with one interface, so solvers never branch on
which penalty they received (the split between algorithms and operators of
proxmin).  Shapes: ``T`` (q, d); ``C`` all coefficients (n, q); ``C_rows``
the coefficients of one block of spectra (b, q); ``rows`` a slice into
``C_all`` (possibly ``slice(None)``) saying which spectra ``C_rows`` are,
``C_all`` the coefficients of all spectra before this update (a penalty that
couples spectra, such as ``Spatial``, reads the neighbours there).

``value(C, T, xp) -> float``
    The penalty, accumulated in float64.
``templates_grad_split(C, T, xp) -> (pos, neg)``, ``coefficients_grad_split(C_rows, T, xp, *, rows, C_all)``
    The gradient with respect to the factor as ``pos - neg``, both >= 0 and of
    the factor's shape, such that ``diag(pos / F)`` majorises the Hessian
    of the penalty in that factor ``F``: for ``F > 0`` and every ``E``,

        ``P(F + E) <= P(F) + <grad, E> + 1/2 sum((pos / F) * E**2)``.

    This is what keeps multiplicative updates monotone: they add ``neg/2`` to
    the numerator and ``pos/2`` to the denominator of the chi^2 ratio.
``templates_quadratic(C, T, xp)``, ``coefficients_quadratic(C_rows, T, xp, *, rows, C_all) -> (diag, lin)``
    With every entry outside one colour group fixed (see below), the penalty
    as a function of the entries ``F`` of that group is exactly

        ``sum(diag * F**2) - 2 * sum(lin * F) + const``,

    ``diag >= 0``; ``diag`` and ``lin`` do not depend on the group's own
    entries, so one evaluation serves a whole group (exact block-coordinate
    solvers add these to their Gram diagonal and right-hand side).
``templates_colors(n_pixels)``, ``coefficients_colors(n_spectra)``
    A list of integer numpy arrays partitioning the pixels (template entries
    ``T[:, group]``) or spectra (coefficient entries ``C[group, :]``) into
    groups whose entries do not interact through the penalty.  Solvers move
    them to their own namespace.
``templates_curvature(C, T, xp)``, ``coefficients_curvature(C_rows, T, xp, *, rows, C_all)``
    A diagonal majoriser of the Hessian, of the factor's shape: for every ``E``,

        ``P(F + E) <= P(F) + <grad, E> + 1/2 sum(curvature * E**2)``,

    for proximal-gradient step sizes.
``check(solver, n_spectra, n_pixels, *, in_memory=True)``
    Raise ``ValueError`` for a use the penalty does not support.

``acts_on_templates`` / ``acts_on_coefficients`` say which gradients are
non-zero; ``needs_all_coefficients`` that the coefficient methods read
neighbouring spectra from ``C_all`` (the loop then passes it); ``name`` is
the key of the penalty in ``history_``.

All methods use only array-API functions of ``xp`` (no ``xp.roll``, no
in-place updates), so they run under numpy, ``array_api_strict`` and GPU
namespaces.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .protocols import PenaltyProtocol

__all__ = [
    "Penalty",
    "Smoothness",
    "Sparsity",
    "Spatial",
    "make_penalties",
    "penalty_total",
]


# -- validation ------------------------------------------------------------------

def _check_strength(value, name):
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number >= 0; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


def _check_ivar_scale(value):
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"ivar_scale must be a positive real number; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"ivar_scale must be a finite number > 0 (the mean observed ivar); "
                         f"got {value!r}")
    return value


def _check_shape(shape, name="spatial_shape"):
    try:
        ny, nx = shape
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (ny, nx) of positive integers; "
                         f"got {shape!r}") from None
    for v in (ny, nx):
        if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
            raise ValueError(f"{name} must be a pair (ny, nx) of positive integers; "
                             f"got {shape!r}")
    return int(ny), int(nx)


# -- array helpers (array-API only) ----------------------------------------------

def _f64(a, xp):
    return xp.astype(a, xp.float64)


def _zeros(shape, like, xp):
    return xp.zeros(shape, dtype=like.dtype, device=like.device)


def _path_degree_and_neighbours(T, xp):
    """Degree and neighbour sum of each pixel on the path graph along axis 1.

    Returns ``(deg, At)`` of the shape of ``T``: ``deg[k, j]`` is the number of
    neighbours of pixel ``j`` (1 at the ends, 2 inside; 0 if there is only one
    pixel) and ``At[k, j] = T[k, j-1] + T[k, j+1]`` over the neighbours that exist.
    """
    q = T.shape[0]
    zero = _zeros((q, 1), T, xp)
    ones = xp.ones_like(T)
    deg = (xp.concat([zero, ones[:, :-1]], axis=1) + xp.concat([ones[:, 1:], zero], axis=1))
    At = xp.concat([zero, T[:, :-1]], axis=1) + xp.concat([T[:, 1:], zero], axis=1)
    return deg, At


def _squared_differences(T, xp):
    """``||D T[k]||^2`` for each k, in float64, of shape (q,)."""
    dT = _f64(T[:, 1:], xp) - _f64(T[:, :-1], xp)
    return xp.sum(dT * dT, axis=1)


def _column_norms2(C, xp):
    """``||C[:, k]||^2`` for each k, of shape (q,), in C's dtype."""
    return xp.sum(C * C, axis=0)


def _row_norms2(T, xp):
    """``||T[k]||^2`` for each k, of shape (q,), in T's dtype."""
    return xp.sum(T * T, axis=1)


def _rows_range(rows, n):
    start, stop, step = rows.indices(n)
    if step != 1:
        raise ValueError(f"rows must be a contiguous slice (step 1); got {rows!r}")
    return start, max(start, stop)


class Penalty(PenaltyProtocol):
    """Base class of the penalties; see the module docstring for the interface.

    Subclasses implement ``value``, the ``*_grad_split``, ``*_quadratic`` and
    ``*_curvature`` methods of :class:`specnmf.protocols.PenaltyProtocol` (the
    type check in CI finds a subclass that misses one); the base class derives
    ``*_grad`` (``pos - neg``), single-colour ``*_colors`` and a ``check`` that
    accepts every use.
    """

    name = "penalty"
    acts_on_templates = False
    acts_on_coefficients = False
    needs_all_coefficients = False
    def __init__(self, strength, ivar_scale=1.0):
        self.strength = _check_strength(strength, self.name)
        self.ivar_scale = _check_ivar_scale(ivar_scale)
        self._lam = self.strength * self._ivar_weight(self.ivar_scale)

    @staticmethod
    def _ivar_weight(ivar_scale):
        """How ``ivar_scale`` enters the weight: as it is, for a penalty quadratic in the flux."""
        return ivar_scale

    def templates_grad(self, C, T, xp):
        pos, neg = self.templates_grad_split(C, T, xp)
        return pos - neg

    def coefficients_grad(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        pos, neg = self.coefficients_grad_split(C_rows, T, xp, rows=rows, C_all=C_all)
        return pos - neg

    def templates_colors(self, n_pixels):
        return [np.arange(n_pixels)]

    def coefficients_colors(self, n_spectra):
        return [np.arange(n_spectra)]

    def templates_lipschitz(self, C, T, xp):
        """A Lipschitz constant of the templates gradient: the largest curvature.

        Valid because each penalty is convex in each factor, so a diagonal
        majoriser of its Hessian bounds the Hessian's largest eigenvalue.
        """
        curv = self.templates_curvature(C, T, xp)
        return float(xp.max(curv)) if curv.size else 0.0

    def coefficients_lipschitz(self, C, T, xp):
        """A Lipschitz constant of the coefficients gradient (all spectra)."""
        curv = self.coefficients_curvature(C, T, xp, rows=slice(None), C_all=C)
        return float(xp.max(curv)) if curv.size else 0.0

    def check(self, solver, n_spectra, n_pixels, *, in_memory=True):
        return None

    def __repr__(self):
        return f"{type(self).__name__}(strength={self.strength!r}, ivar_scale={self.ivar_scale!r})"


class Smoothness(Penalty):
    r"""Smooth templates: first differences along pixels, per component contribution.

    .. math::

        P = \lambda\, s \sum_k \lVert C_{:,k}\rVert^2\, \lVert D T_k \rVert^2,
        \qquad (D t)_j = t_{j+1} - t_j ,

    i.e. the squared first differences of each contribution ``C[:, k] T[k]``
    summed over spectra.

    Parameters
    ----------
    strength : float
        ``lambda >= 0``, the weight of the squared differences.
    ivar_scale : float, default=1.0
        ``s``, the mean of the observed inverse variance, so that ``strength``
        is dimensionless.

    Notes
    -----
    With ``lam_k = lambda s ||C[:, k]||^2`` and ``L = Deg - A`` the Laplacian of
    the path graph of pixels (``deg_j`` = 1 at the ends, 2 inside), the
    penalty is ``sum_k lam_k t_k^T L t_k`` in the templates:

    * gradient ``2 lam_k (deg t_k - A t_k)``, split ``pos = 4 lam_k deg t_k``,
      ``neg = 2 lam_k (deg t_k + A t_k)``.  ``diag(pos / t_k) = 4 lam_k Deg``
      majorises the Hessian ``2 lam_k L`` because ``2 Deg - L = Deg + A``
      (the signless Laplacian) is positive semidefinite;
    * even and odd pixels are the two colours (neighbours have opposite
      parity); ``diag = lam_k deg``, ``lin = lam_k A t_k``; curvature
      ``4 lam_k deg``.

    In the coefficients it is the ridge ``sum_k lambda s r_k ||C[:, k]||^2``
    with ``r_k = ||D T[k]||^2``: gradient ``2 lambda s r_k C`` (all ``pos``),
    ``diag = lambda s r_k``, ``lin = 0``, curvature ``2 lambda s r_k``, one colour.
    """

    name = "smoothness"
    acts_on_templates = True
    acts_on_coefficients = True

    def value(self, C, T, xp):
        total = xp.sum(xp.sum(_f64(C, xp) ** 2, axis=0) * _squared_differences(T, xp))
        return self._lam * float(total)

    # templates: a graph-Laplacian term along pixels
    def _template_weight(self, C, xp):
        return (self._lam * _column_norms2(C, xp))[:, None]

    def templates_grad_split(self, C, T, xp):
        w = self._template_weight(C, xp)
        deg, At = _path_degree_and_neighbours(T, xp)
        return 4.0 * w * deg * T, 2.0 * w * (deg * T + At)

    def templates_quadratic(self, C, T, xp):
        w = self._template_weight(C, xp)
        deg, At = _path_degree_and_neighbours(T, xp)
        return w * deg, w * At

    def templates_curvature(self, C, T, xp):
        w = self._template_weight(C, xp)
        deg, _ = _path_degree_and_neighbours(T, xp)
        return 4.0 * w * deg

    def templates_colors(self, n_pixels):
        return [np.arange(0, n_pixels, 2), np.arange(1, n_pixels, 2)]

    # coefficients: a ridge, one weight per component
    def _coefficient_weight(self, T, xp):
        return self._lam * xp.astype(_squared_differences(T, xp), T.dtype)

    def coefficients_grad_split(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        pos = 2.0 * self._coefficient_weight(T, xp) * C_rows
        return pos, xp.zeros_like(C_rows)

    def coefficients_quadratic(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        diag = self._coefficient_weight(T, xp) * xp.ones_like(C_rows)
        return diag, xp.zeros_like(C_rows)

    def coefficients_curvature(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        return 2.0 * self._coefficient_weight(T, xp) * xp.ones_like(C_rows)


class Sparsity(Penalty):
    r"""Sparse contributions: the L1 norm of each ``C[:, k] T[k]``.

    .. math::

        P = \lambda \sqrt{s} \sum_{ik} C_{ik} \sum_j T_{kj}
          = \lambda \sqrt{s} \sum_k \lVert C_{:,k} T_k \rVert_1
        \quad (C, T \ge 0).

    ``sqrt(s)`` because chi^2 is quadratic in the flux and this penalty is
    linear in it.

    Parameters
    ----------
    strength, ivar_scale : float
        ``lambda >= 0``, the weight of the L1 norms, and ``s`` (default 1.0), as
        for :class:`Smoothness`.

    Notes
    -----
    Linear in each factor with the other fixed: the gradient (``sum_i C[i, k]``
    for ``T[k, j]``, ``sum_j T[k, j]`` for ``C[i, k]``, times ``lambda sqrt(s)``)
    is all ``pos``; ``neg = 0``, curvature 0, ``diag = 0``, ``lin = -grad / 2``;
    one colour.
    """

    name = "sparsity"
    acts_on_templates = True
    acts_on_coefficients = True

    @staticmethod
    def _ivar_weight(ivar_scale):
        return math.sqrt(ivar_scale)   # linear in the flux, where chi^2 is quadratic

    def value(self, C, T, xp):
        total = xp.sum(xp.sum(_f64(C, xp), axis=0) * xp.sum(_f64(T, xp), axis=1))
        return self._lam * float(total)

    def templates_grad_split(self, C, T, xp):
        pos = (self._lam * xp.sum(C, axis=0))[:, None] * xp.ones_like(T)
        return pos, xp.zeros_like(T)

    def coefficients_grad_split(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        pos = self._lam * xp.sum(T, axis=1) * xp.ones_like(C_rows)
        return pos, xp.zeros_like(C_rows)

    def templates_quadratic(self, C, T, xp):
        pos, zero = self.templates_grad_split(C, T, xp)
        return zero, -0.5 * pos

    def coefficients_quadratic(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        pos, zero = self.coefficients_grad_split(C_rows, T, xp)
        return zero, -0.5 * pos

    def templates_curvature(self, C, T, xp):
        return xp.zeros_like(T)

    def coefficients_curvature(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        return xp.zeros_like(C_rows)


class Spatial(Penalty):
    r"""Spatially smooth coefficients of spectra on a grid (IFU spaxels).

    .. math::

        P = \lambda\, s \sum_k \lVert T_k \rVert^2
            \sum_{a \sim b} (C_{ak} - C_{bk})^2 ,

    over the pairs of 4-connected neighbours ``a ~ b`` (each pair once) of
    the (ny, nx) grid, spectrum ``a = y * nx + x``: the squared differences
    between neighbouring spaxels of each contribution ``C[:, k] T[k]``.

    Parameters
    ----------
    strength, ivar_scale : float
        ``lambda >= 0``, the weight of the neighbour differences, and ``s``
        (default 1.0), as for :class:`Smoothness`.
    shape : tuple of int (ny, nx)
        The grid; the data must have ``ny * nx`` spectra, all in memory.

    Notes
    -----
    The mirror image of :class:`Smoothness` with the roles of C and T
    swapped.  With ``lam_k = lambda s ||T[k]||^2`` and ``L = Deg - A`` the
    Laplacian of the grid graph, in the coefficients it is
    ``sum_k lam_k c_k^T L c_k``: ``pos = 4 lam_k deg c``,
    ``neg = 2 lam_k (deg c + A c)``; colours are the checkerboard
    (``y + x`` even / odd); ``diag = lam_k deg``, ``lin = lam_k A c_k``;
    curvature ``4 lam_k deg``.  Neighbours are read from ``C_all``.
    In the templates it is the ridge ``lambda s S_k ||T[k]||^2`` with
    ``S_k = sum_{a~b} (C[a, k] - C[b, k])^2``.
    """

    name = "spatial"
    acts_on_templates = True
    acts_on_coefficients = True
    needs_all_coefficients = True

    def __init__(self, strength, ivar_scale=1.0, *, shape):
        super().__init__(strength, ivar_scale)
        self.shape = _check_shape(shape)

    def __repr__(self):
        return (f"Spatial(strength={self.strength!r}, ivar_scale={self.ivar_scale!r}, "
                f"shape={self.shape!r})")

    def check(self, solver, n_spectra, n_pixels, *, in_memory=True):
        ny, nx = self.shape
        if n_spectra != ny * nx:
            raise ValueError(f"spatial_shape={self.shape} has ny * nx = {ny * nx} spaxels "
                             f"but the data have n_spectra = {n_spectra}")
        if not in_memory:
            raise ValueError("the spatial penalty couples neighbouring spectra and needs all "
                             "spectra in memory; it cannot be used with streamed data")

    def _check_n(self, n):
        ny, nx = self.shape
        if n != ny * nx:
            raise ValueError(f"spatial_shape={self.shape} has ny * nx = {ny * nx} spaxels "
                             f"but the coefficients have {n} rows")

    def _differences2(self, C, xp):
        """``sum_{a~b} (C[a, k] - C[b, k])^2`` for each k, float64, of shape (q,)."""
        ny, nx = self.shape
        self._check_n(C.shape[0])
        G = xp.reshape(_f64(C, xp), (ny, nx, C.shape[1]))
        dx = G[:, 1:, :] - G[:, :-1, :]
        dy = G[1:, :, :] - G[:-1, :, :]
        return xp.sum(dx * dx, axis=(0, 1)) + xp.sum(dy * dy, axis=(0, 1))

    def value(self, C, T, xp):
        total = xp.sum(xp.sum(_f64(T, xp) ** 2, axis=1) * self._differences2(C, xp))
        return self._lam * float(total)

    # coefficients: a graph-Laplacian term over the grid of spectra
    def _grid_degree_and_neighbours(self, C_rows, rows, C_all, xp):
        """Degree and neighbour sum of the spectra ``rows``, of the shape of ``C_rows``.

        Reads only the rows of ``C_all`` within one grid row of the block, padded
        with zeros past the edges, so a block costs O(block + nx) whatever n.
        """
        if C_all is None:
            C_all = C_rows
            rows = slice(None)
        ny, nx = self.shape
        n, q = C_all.shape
        self._check_n(n)
        start, stop = _rows_range(rows, n)
        m = stop - start
        if C_rows.shape[0] != m:
            raise ValueError(f"C_rows has {C_rows.shape[0]} rows but rows={rows!r} selects {m}")
        lo, hi = max(0, start - nx), min(n, stop + nx)
        # padded so that spectrum start + r sits at index nx + r
        P = xp.concat([_zeros((nx - (start - lo), q), C_all, xp), C_all[lo:hi, :],
                       _zeros((nx - (hi - stop), q), C_all, xp)], axis=0)
        idx = xp.arange(start, stop, device=C_all.device)
        x, y = idx % nx, idx // nx
        has_left = xp.astype(x > 0, C_all.dtype)[:, None]
        has_right = xp.astype(x < nx - 1, C_all.dtype)[:, None]
        has_up = xp.astype(y > 0, C_all.dtype)[:, None]
        has_down = xp.astype(y < ny - 1, C_all.dtype)[:, None]
        # zero padding already covers rows past the grid's top and bottom; the
        # masks keep the left/right shifts from wrapping into the next grid row
        Ac = (has_left * P[nx - 1:nx - 1 + m, :] + has_right * P[nx + 1:nx + 1 + m, :]
              + P[:m, :] + P[2 * nx:2 * nx + m, :])
        deg = (has_left + has_right + has_up + has_down) * xp.ones_like(C_rows)
        return deg, Ac

    def _coefficient_weight(self, T, xp):
        return self._lam * _row_norms2(T, xp)

    def coefficients_grad_split(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        w = self._coefficient_weight(T, xp)
        deg, Ac = self._grid_degree_and_neighbours(C_rows, rows, C_all, xp)
        return 4.0 * w * deg * C_rows, 2.0 * w * (deg * C_rows + Ac)

    def coefficients_quadratic(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        w = self._coefficient_weight(T, xp)
        deg, Ac = self._grid_degree_and_neighbours(C_rows, rows, C_all, xp)
        return w * deg, w * Ac

    def coefficients_curvature(self, C_rows, T, xp, *, rows=slice(None), C_all=None):
        w = self._coefficient_weight(T, xp)
        deg, _ = self._grid_degree_and_neighbours(C_rows, rows, C_all, xp)
        return 4.0 * w * deg

    def coefficients_colors(self, n_spectra):
        self._check_n(n_spectra)
        ny, nx = self.shape
        idx = np.arange(n_spectra)
        parity = (idx // nx + idx % nx) % 2
        return [idx[parity == 0], idx[parity == 1]]

    # templates: a ridge, one weight per component
    def _template_weight(self, C, xp):
        return (self._lam * xp.astype(self._differences2(C, xp), C.dtype))[:, None]

    def templates_grad_split(self, C, T, xp):
        return 2.0 * self._template_weight(C, xp) * T, xp.zeros_like(T)

    def templates_quadratic(self, C, T, xp):
        return self._template_weight(C, xp) * xp.ones_like(T), xp.zeros_like(T)

    def templates_curvature(self, C, T, xp):
        return 2.0 * self._template_weight(C, xp) * xp.ones_like(T)


def make_penalties(*, smoothness=0.0, sparsity=0.0, spatial=0.0, spatial_shape=None,
                   ivar_scale=1.0):
    """Build the penalties of non-zero strength, in a fixed order.

    Parameters
    ----------
    smoothness, sparsity, spatial : float, default=0.0
        Strengths (finite, >= 0) of :class:`Smoothness`, :class:`Sparsity`
        and :class:`Spatial`; 0 leaves the penalty out.
    spatial_shape : tuple of int (ny, nx), optional
        Grid of the spectra; required when ``spatial > 0``.
    ivar_scale : float, default=1.0
        Mean of the observed inverse variance (> 0).

    Returns
    -------
    tuple of Penalty

    Raises
    ------
    ValueError, TypeError
        For a negative or non-finite strength, ``spatial > 0`` without
        ``spatial_shape``, or a malformed ``spatial_shape``; the message names
        the parameter.
    """
    smoothness = _check_strength(smoothness, "smoothness")
    sparsity = _check_strength(sparsity, "sparsity")
    spatial = _check_strength(spatial, "spatial")
    ivar_scale = _check_ivar_scale(ivar_scale)
    penalties = []
    if smoothness > 0:
        penalties.append(Smoothness(smoothness, ivar_scale))
    if sparsity > 0:
        penalties.append(Sparsity(sparsity, ivar_scale))
    if spatial > 0:
        if spatial_shape is None:
            raise ValueError(f"spatial={spatial!r} > 0 needs spatial_shape=(ny, nx), the grid "
                             "of the spectra (spectrum index y * nx + x)")
        penalties.append(Spatial(spatial, ivar_scale, shape=spatial_shape))
    return tuple(penalties)


def penalty_total(penalties, C, T, xp):
    """Sum of ``value(C, T, xp)`` over ``penalties``, as a Python float (0.0 for none)."""
    return float(sum(p.value(C, T, xp) for p in penalties))
