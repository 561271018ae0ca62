"""The penalty protocol of docs/architecture.md, checked on random factors.

Each claim a solver relies on is tested directly: the value against a slow
loop reference, the gradient split against finite differences, the two
diagonal majorisers (``diag(pos / F)`` for multiplicative updates,
``curvature`` for proximal gradient), the exact per-colour quadratic model
(for block-coordinate solvers), and the scale invariance every penalty claims.
"""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from specnmf.backends import to_numpy
from specnmf.penalties import (
    Penalty, Smoothness, Sparsity, Spatial, make_penalties, penalty_total,
)


def _namespaces():
    params = [pytest.param(np, id="numpy")]
    try:
        import array_api_strict
    except ImportError:  # pragma: no cover - optional test dependency
        params.append(pytest.param(None, id="array_api_strict",
                                   marks=pytest.mark.skip(reason="array_api_strict missing")))
    else:
        params.append(pytest.param(array_api_strict, id="array_api_strict"))
    return params


NAMESPACES = _namespaces()
KINDS = ["smoothness", "sparsity", "spatial"]


# -- slow loop references (the only other place the formulas are written) -----

def ref_smoothness(C, T, lam, s):
    n, q = C.shape
    d = T.shape[1]
    total = 0.0
    for k in range(q):
        for i in range(n):
            for j in range(d - 1):
                total += (C[i, k] * T[k, j + 1] - C[i, k] * T[k, j]) ** 2
    return lam * s * total


def ref_sparsity(C, T, lam, s):
    n, q = C.shape
    d = T.shape[1]
    total = 0.0
    for i in range(n):
        for k in range(q):
            for j in range(d):
                total += abs(C[i, k] * T[k, j])
    return lam * math.sqrt(s) * total


def ref_spatial(C, T, lam, s, shape):
    ny, nx = shape
    q, d = T.shape
    total = 0.0
    for k in range(q):
        for j in range(d):
            for y in range(ny):
                for x in range(nx):
                    a = y * nx + x
                    for b in ([a + 1] if x + 1 < nx else []) + ([a + nx] if y + 1 < ny else []):
                        total += (C[a, k] * T[k, j] - C[b, k] * T[k, j]) ** 2
    return lam * s * total


# -- random problems --------------------------------------------------------------

@st.composite
def cases(draw, kinds=tuple(KINDS)):
    """A penalty and strictly positive factors of a small random shape."""
    kind = draw(st.sampled_from(kinds))
    ny, nx = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    q = draw(st.integers(1, 3))
    d = draw(st.integers(1, 7))
    lam = draw(st.floats(0.01, 10.0))
    s = draw(st.floats(0.1, 100.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = ny * nx
    C = rng.uniform(0.1, 2.0, size=(n, q))
    T = rng.uniform(0.1, 2.0, size=(q, d))
    start = draw(st.integers(0, n - 1))
    stop = draw(st.integers(start + 1, n))
    penalty = {"smoothness": lambda: Smoothness(lam, s),
               "sparsity": lambda: Sparsity(lam, s),
               "spatial": lambda: Spatial(lam, s, shape=(ny, nx))}[kind]()
    return penalty, C, T, slice(start, stop), rng


def _value(p, C, T, xp):
    return p.value(xp.asarray(C), xp.asarray(T), xp)


def _templates(method, p, C, T, xp):
    return tuple(to_numpy(a) for a in method(xp.asarray(C), xp.asarray(T), xp))


def _coefficients(method, p, C, T, rows, xp):
    Cx = xp.asarray(C)
    out = method(Cx[rows, ...], xp.asarray(T), xp, rows=rows, C_all=Cx)
    return tuple(to_numpy(a) for a in out) if isinstance(out, tuple) else to_numpy(out)


def _finite_difference(f, F, h=1e-5):
    g = np.zeros_like(F)
    for idx in np.ndindex(F.shape):
        Fp, Fm = F.copy(), F.copy()
        Fp[idx] += h
        Fm[idx] -= h
        g[idx] = (f(Fp) - f(Fm)) / (2 * h)
    return g


# -- value ----------------------------------------------------------------------------

@given(case=cases())
def test_value_matches_loop_reference(case):
    p, C, T, _, _ = case
    if p.name == "smoothness":
        expected = ref_smoothness(C, T, p.strength, p.ivar_scale)
    elif p.name == "sparsity":
        expected = ref_sparsity(C, T, p.strength, p.ivar_scale)
    else:
        expected = ref_spatial(C, T, p.strength, p.ivar_scale, p.shape)
    got = p.value(C, T, np)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


@given(case=cases())
def test_value_is_invariant_under_rescaling_components(case):
    p, C, T, _, rng = case
    a = rng.uniform(0.05, 20.0, size=C.shape[1])
    assert p.value(C * a[None, :], T / a[:, None], np) == pytest.approx(
        p.value(C, T, np), rel=1e-10, abs=1e-12)


def test_value_of_constant_templates_and_uniform_maps_is_zero():
    C = np.ones((6, 2))
    T = np.full((2, 5), 3.0)
    assert Smoothness(2.0).value(np.random.default_rng(0).uniform(size=(6, 2)), T, np) == 0.0
    assert Spatial(2.0, shape=(2, 3)).value(C, np.random.default_rng(0).uniform(size=(2, 5)),
                                           np) == 0.0


def test_value_is_accumulated_in_float64():
    rng = np.random.default_rng(1)
    C = rng.uniform(size=(12, 2))
    T = rng.uniform(size=(2, 9))
    for p in make_penalties(smoothness=1.0, sparsity=1.0, spatial=1.0, spatial_shape=(3, 4),
                            ivar_scale=7.0):
        v32 = p.value(C.astype(np.float32), T.astype(np.float32), np)
        v64 = p.value(C.astype(np.float32).astype(np.float64),
                      T.astype(np.float32).astype(np.float64), np)
        assert isinstance(v32, float)
        assert v32 == pytest.approx(v64, rel=1e-12)


def test_ivar_scale_makes_strength_dimensionless():
    # flux in other units: X -> u X, ivar -> ivar / u^2, so the contributions
    # C T scale by u and chi^2 is unchanged; so must each penalty be
    rng = np.random.default_rng(2)
    C, T, u = rng.uniform(size=(6, 2)), rng.uniform(size=(2, 8)), 37.0
    for name, cls, kw in [("smoothness", Smoothness, {}), ("sparsity", Sparsity, {}),
                          ("spatial", Spatial, {"shape": (2, 3)})]:
        before = cls(0.3, 4.0, **kw).value(C, T, np)
        after = cls(0.3, 4.0 / u**2, **kw).value(C * u, T, np)
        assert after == pytest.approx(before, rel=1e-12), name


# -- gradients --------------------------------------------------------------------------

@pytest.mark.parametrize("xp", NAMESPACES)
@given(case=cases())
def test_templates_gradient_split_matches_finite_differences(xp, case):
    p, C, T, _, _ = case
    pos, neg = _templates(p.templates_grad_split, p, C, T, xp)
    assert pos.shape == neg.shape == T.shape
    assert np.all(pos >= 0) and np.all(neg >= 0)
    fd = _finite_difference(lambda F: _value(p, C, F, xp), T)
    np.testing.assert_allclose(pos - neg, fd, rtol=1e-6, atol=1e-6 * (1 + np.abs(fd).max()))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(case=cases())
def test_coefficients_gradient_split_of_a_block_matches_finite_differences(xp, case):
    p, C, T, rows, _ = case

    def value_of_block(Cb):
        full = C.copy()
        full[rows] = Cb
        return _value(p, full, T, xp)

    pos, neg = _coefficients(p.coefficients_grad_split, p, C, T, rows, xp)
    assert pos.shape == neg.shape == C[rows].shape
    assert np.all(pos >= 0) and np.all(neg >= 0)
    fd = _finite_difference(value_of_block, C[rows])
    np.testing.assert_allclose(pos - neg, fd, rtol=1e-6, atol=1e-6 * (1 + np.abs(fd).max()))


@given(case=cases())
def test_blocks_of_coefficients_reproduce_the_whole(case):
    p, C, T, rows, _ = case
    n = C.shape[0]
    cut = rows.start
    parts = [slice(0, cut), slice(cut, n)] if cut > 0 else [slice(None)]
    whole = _coefficients(p.coefficients_grad_split, p, C, T, slice(None), np)
    split = [_coefficients(p.coefficients_grad_split, p, C, T, r, np) for r in parts]
    for j in range(2):
        np.testing.assert_allclose(np.concatenate([s[j] for s in split]), whole[j], rtol=1e-13)


# -- majorisation ------------------------------------------------------------------------

def _bound_gap(f, F, grad, M, E):
    """``f(F) + <grad, E> + 1/2 sum(M E^2) - f(F + E)``; >= 0 when M majorises."""
    return f(F) + np.sum(grad * E) + 0.5 * np.sum(M * E * E) - f(F + E)


def _tolerance(f, F, E):
    return 1e-9 * (abs(f(F)) + abs(f(F + E)) + 1.0)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(case=cases(), scale=st.floats(0.01, 3.0))
def test_mu_and_curvature_diagonals_majorise_the_templates_penalty(xp, case, scale):
    """For T > 0 and any perturbation E, with g = pos - neg:

    P(T + E) <= P(T) + <g, E> + 1/2 sum((pos / T) E^2)       (multiplicative)
    P(T + E) <= P(T) + <g, E> + 1/2 sum(curvature E^2)       (proximal gradient)
    """
    p, C, T, _, rng = case
    f = lambda F: _value(p, C, F, xp)  # noqa: E731
    pos, neg = _templates(p.templates_grad_split, p, C, T, xp)
    (curvature,) = _templates(lambda *a: (p.templates_curvature(*a),), p, C, T, xp)
    for _ in range(3):
        E = scale * rng.normal(size=T.shape)
        for M in (pos / T, curvature):
            assert _bound_gap(f, T, pos - neg, M, E) >= -_tolerance(f, T, E)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(case=cases(), scale=st.floats(0.01, 3.0))
def test_mu_and_curvature_diagonals_majorise_the_coefficients_penalty(xp, case, scale):
    """As for the templates, perturbing only the coefficients of the block ``rows``."""
    p, C, T, rows, rng = case

    def f(Cb):
        full = C.copy()
        full[rows] = Cb
        return _value(p, full, T, xp)

    Cb = C[rows]
    pos, neg = _coefficients(p.coefficients_grad_split, p, C, T, rows, xp)
    curvature = _coefficients(p.coefficients_curvature, p, C, T, rows, xp)
    for _ in range(3):
        E = scale * rng.normal(size=Cb.shape)
        for M in (pos / Cb, curvature):
            assert _bound_gap(f, Cb, pos - neg, M, E) >= -_tolerance(f, Cb, E)


def test_curvature_cannot_be_halved_for_the_laplacian_terms():
    # along the alternating direction (every edge stretched) the diagonal
    # majoriser 4 lam deg is attained exactly, so the bound is tight
    rng = np.random.default_rng(3)
    C = rng.uniform(0.5, 1.0, size=(12, 2))
    T = rng.uniform(0.5, 1.0, size=(2, 9))
    smooth = Smoothness(1.5, 2.0)
    E = np.tile((-1.0) ** np.arange(9), (2, 1))
    f = lambda F: smooth.value(C, F, np)  # noqa: E731
    g = smooth.templates_grad(C, T, np)
    M = smooth.templates_curvature(C, T, np)
    assert _bound_gap(f, T, g, M, E) == pytest.approx(0.0, abs=1e-9 * f(T + E))
    assert _bound_gap(f, T, g, 0.5 * M, E) < -0.1 * f(T + E)

    spatial = Spatial(1.5, 2.0, shape=(3, 4))
    y, x = np.divmod(np.arange(12), 4)
    E = np.tile(((-1.0) ** (y + x))[:, None], (1, 2))
    f = lambda F: spatial.value(F, T, np)  # noqa: E731
    g = spatial.coefficients_grad(C, T, np, rows=slice(None), C_all=C)
    M = spatial.coefficients_curvature(C, T, np, rows=slice(None), C_all=C)
    assert _bound_gap(f, C, g, M, E) == pytest.approx(0.0, abs=1e-9 * f(C + E))
    assert _bound_gap(f, C, g, 0.5 * M, E) < -0.1 * f(C + E)


# -- colours and the per-colour quadratic model -------------------------------------------

def _assert_partition(groups, n):
    assert sorted(np.concatenate(groups).tolist()) == list(range(n))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(case=cases())
def test_templates_quadratic_model_is_exact_within_a_colour(xp, case):
    p, C, T, _, rng = case
    groups = p.templates_colors(T.shape[1])
    _assert_partition(groups, T.shape[1])
    diag, lin = _templates(p.templates_quadratic, p, C, T, xp)
    assert np.all(diag >= 0)
    for g in groups:
        new = T.copy()
        new[:, g] = rng.uniform(0.0, 3.0, size=(T.shape[0], len(g)))
        model = lambda F: np.sum(diag[:, g] * F[:, g] ** 2) - 2 * np.sum(lin[:, g] * F[:, g])  # noqa: E731
        change = _value(p, C, new, xp) - _value(p, C, T, xp)
        assert change == pytest.approx(model(new) - model(T), rel=1e-9,
                                       abs=1e-9 * (1 + _value(p, C, new, xp)))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(case=cases())
def test_coefficients_quadratic_model_is_exact_within_a_colour(xp, case):
    p, C, T, rows, rng = case
    n = C.shape[0]
    groups = p.coefficients_colors(n)
    _assert_partition(groups, n)
    diag, lin = _coefficients(p.coefficients_quadratic, p, C, T, rows, xp)
    assert diag.shape == lin.shape == C[rows].shape
    assert np.all(diag >= 0)
    block = np.arange(n)[rows]
    for g in groups:
        local = np.flatnonzero(np.isin(block, g))       # this colour within the block
        new = C.copy()
        new[block[local]] = rng.uniform(0.0, 3.0, size=(len(local), C.shape[1]))

        def model(F):
            Fb = F[block[local]]
            return np.sum(diag[local] * Fb**2) - 2 * np.sum(lin[local] * Fb)

        change = _value(p, new, T, xp) - _value(p, C, T, xp)
        assert change == pytest.approx(model(new) - model(C), rel=1e-9,
                                       abs=1e-9 * (1 + _value(p, new, T, xp)))


def test_colours_of_the_laplacian_terms_are_parity_and_checkerboard():
    even, odd = Smoothness(1.0).templates_colors(7)
    assert even.tolist() == [0, 2, 4, 6] and odd.tolist() == [1, 3, 5]
    black, white = Spatial(1.0, shape=(2, 3)).coefficients_colors(6)
    # grid  0 1 2 / 3 4 5: no colour holds two 4-neighbours
    assert black.tolist() == [0, 2, 4] and white.tolist() == [1, 3, 5]
    assert [g.tolist() for g in Sparsity(1.0).coefficients_colors(4)] == [[0, 1, 2, 3]]


# -- flags, dtypes, namespaces -------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_names_flags_and_dtypes(kind):
    (p,) = make_penalties(**{kind: 0.5}, spatial_shape=(2, 3))
    assert isinstance(p, Penalty) and p.name == kind
    assert p.acts_on_templates and p.acts_on_coefficients
    rng = np.random.default_rng(4)
    C = rng.uniform(size=(6, 2)).astype(np.float32)
    T = rng.uniform(size=(2, 5)).astype(np.float32)
    arrays = (p.templates_grad_split(C, T, np) + p.templates_quadratic(C, T, np)
              + (p.templates_curvature(C, T, np),)
              + p.coefficients_grad_split(C[2:5], T, np, rows=slice(2, 5), C_all=C)
              + p.coefficients_quadratic(C[2:5], T, np, rows=slice(2, 5), C_all=C)
              + (p.coefficients_curvature(C[2:5], T, np, rows=slice(2, 5), C_all=C),))
    for a in arrays:
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
    assert C.dtype == np.float32 and T.dtype == np.float32     # inputs untouched


def test_inputs_are_not_modified():
    rng = np.random.default_rng(5)
    C, T = rng.uniform(size=(6, 2)), rng.uniform(size=(2, 5))
    C0, T0 = C.copy(), T.copy()
    for p in make_penalties(smoothness=1, sparsity=1, spatial=1, spatial_shape=(3, 2)):
        p.value(C, T, np)
        p.templates_grad_split(C, T, np)
        p.coefficients_quadratic(C[:3], T, np, rows=slice(0, 3), C_all=C)
    np.testing.assert_array_equal(C, C0)
    np.testing.assert_array_equal(T, T0)


def test_single_pixel_and_single_spaxel_give_zero_smoothing_terms():
    C, T = np.ones((1, 2)), np.ones((2, 1))
    for p in (Smoothness(1.0), Spatial(1.0, shape=(1, 1))):
        assert p.value(C, T, np) == 0.0
        for a in p.templates_grad_split(C, T, np) + p.coefficients_grad_split(C, T, np, C_all=C):
            assert np.all(a == 0)


def test_make_penalties_and_total():
    assert make_penalties() == ()
    ps = make_penalties(smoothness=1.0, sparsity=0.0, spatial=2.0, spatial_shape=(2, 2),
                        ivar_scale=4.0)
    assert [p.name for p in ps] == ["smoothness", "spatial"]
    assert all(p.ivar_scale == 4.0 for p in ps)
    rng = np.random.default_rng(6)
    C, T = rng.uniform(size=(4, 2)), rng.uniform(size=(2, 6))
    assert penalty_total(ps, C, T, np) == pytest.approx(
        ref_smoothness(C, T, 1.0, 4.0) + ref_spatial(C, T, 2.0, 4.0, (2, 2)), rel=1e-12)
    assert penalty_total((), C, T, np) == 0.0


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["smoothness", "sparsity", "spatial"])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_strength_is_rejected_naming_the_parameter(name, bad):
    with pytest.raises(ValueError, match=name):
        make_penalties(**{name: bad}, spatial_shape=(2, 2))


@pytest.mark.parametrize("cls,kw", [(Smoothness, {}), (Sparsity, {}),
                                    (Spatial, {"shape": (2, 2)})])
def test_constructors_validate(cls, kw):
    with pytest.raises(ValueError, match=">= 0"):
        cls(-1.0, **kw)
    with pytest.raises(TypeError, match="real number"):
        cls("1", **kw)
    with pytest.raises(ValueError, match="ivar_scale"):
        cls(1.0, 0.0, **kw)


def test_spatial_needs_a_shape():
    with pytest.raises(ValueError, match="spatial_shape"):
        make_penalties(spatial=1.0)
    for bad in [(3,), (0, 2), (2.5, 2), "ab", None]:
        with pytest.raises(ValueError, match="spatial_shape"):
            Spatial(1.0, shape=bad)
    # a zero strength needs no shape
    assert make_penalties(spatial=0.0) == ()


def test_spatial_check_rejects_wrong_grid_and_streamed_data():
    p = Spatial(1.0, shape=(3, 4))
    p.check("nearly", 12, 50, in_memory=True)
    with pytest.raises(ValueError, match=r"spatial_shape=\(3, 4\).*12.*n_spectra = 13"):
        p.check("nearly", 13, 50, in_memory=True)
    with pytest.raises(ValueError, match="in memory"):
        p.check("nearly", 12, 50, in_memory=False)
    with pytest.raises(ValueError, match="spatial_shape"):
        p.value(np.ones((10, 2)), np.ones((2, 5)), np)
    for q in (Smoothness(1.0), Sparsity(1.0)):
        q.check("nearly", 13, 50, in_memory=False)


def test_only_spatial_asks_for_all_coefficients():
    flags = {p.name: p.needs_all_coefficients
             for p in make_penalties(smoothness=1, sparsity=1, spatial=1, spatial_shape=(2, 2))}
    assert flags == {"smoothness": False, "sparsity": False, "spatial": True}
    # without C_all, a block that is not every spectrum cannot find its neighbours
    C, T = np.ones((4, 2)), np.ones((2, 3))
    with pytest.raises(ValueError, match="spatial_shape"):
        Spatial(1.0, shape=(2, 2)).coefficients_grad_split(C[:2], T, np, rows=slice(0, 2))
    with pytest.raises(ValueError, match="contiguous"):
        Spatial(1.0, shape=(2, 2)).coefficients_grad_split(C[::2], T, np, rows=slice(0, 4, 2),
                                                          C_all=C)
