"""Batched exact NNLS (specnmf.solvers.nnls) against scipy.optimize.nnls,
the KKT conditions, degenerate problems, and the coefficient covariance."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import nnls as scipy_nnls

from specnmf.objective import _chi2_rows
from specnmf.solvers.coefficients import spectrum_grams, weighted_nnls
from specnmf.solvers.nnls import nnls_covariance, nnls_gram


def scipy_weighted_nnls(X, ivar, T):
    """Reference: one scipy.optimize.nnls per spectrum on the weighted pixels."""
    out = np.zeros((X.shape[0], T.shape[0]))
    for i in range(X.shape[0]):
        w = np.sqrt(ivar[i])
        obs = w > 0
        if obs.any():
            out[i], _ = scipy_nnls((T[:, obs] * w[obs]).T, X[i, obs] * w[obs], maxiter=2000)
    return out


def assert_chi2_not_worse(X, ivar, T, C, C_ref, rtol=1e-8):
    """chi^2 of every spectrum is within rtol of scipy's (or below it).

    The floor, 1e-12 of the chi^2 at C = 0, only matters for spectra fitted
    exactly (chi^2 = 0), where a relative comparison is meaningless.
    """
    chi2 = _chi2_rows(X, ivar, C, T, np)
    ref = _chi2_rows(X, ivar, C_ref, T, np)
    floor = 1e-12 * _chi2_rows(X, ivar, np.zeros_like(C), T, np)
    excess = chi2 - ref
    assert np.all(excess <= rtol * np.maximum(ref, floor)), np.max(excess / np.maximum(ref, floor))


def assert_kkt(G, b, x, rtol=1e-9):
    """x >= 0, gradient >= 0 on the bound set, ~0 on the free set (complementarity)."""
    g = np.einsum("mkl,ml->mk", G, x) - b
    d = np.sqrt(np.maximum(np.diagonal(G, axis1=1, axis2=2), 0))
    # scale of each gradient entry: |b_k| + sum_l |G_kl| x_l, so the test is unit-free
    scale = np.abs(b) + np.einsum("mkl,ml->mk", np.abs(G), x) + 1e-300
    assert np.all(x >= 0)
    assert np.all(g >= -rtol * scale.max(axis=1, keepdims=True)), "negative gradient"
    free = x > 0
    assert np.all(np.abs(g[free]) <= rtol * np.broadcast_to(scale.max(axis=1, keepdims=True),
                                                            g.shape)[free])
    assert np.all(np.abs(x * g) <= rtol * (x * scale) + 1e-300), "complementarity"
    assert d.shape == x.shape


def make_problem(case, n=60, d=40, q=4, seed=0):
    """Weighted, masked, signed spectra for the degenerate cases of the brief."""
    rng = np.random.default_rng(seed)
    T = np.abs(rng.normal(size=(q, d))) * (rng.uniform(size=(q, d)) > 0.2)
    C = rng.gamma(1.0, 1.0, size=(n, q)) * (rng.uniform(size=(n, q)) > 0.4)
    sigma = rng.uniform(0.3, 3.0, size=(n, d))
    X = C @ T + rng.normal(size=(n, d)) * sigma
    ivar = 1.0 / sigma**2
    ivar[rng.uniform(size=(n, d)) < 0.3] = 0.0
    if case == "zero_rows":
        ivar[::7] = 0.0
    elif case == "zero_template":
        T[1] = 0.0
    elif case == "template_zero_where_observed":
        ivar[:, : d // 2] = 0.0
        T[2, d // 2:] = 0.0
    elif case == "duplicate_templates":
        T[3] = T[0]
    elif case == "scaled_duplicate":
        T[3] = 1e3 * T[0]
    elif case == "all_negative":
        X = -np.abs(X) - 1.0
    elif case == "signed_templates":
        T = rng.normal(size=(q, d))
    elif case == "few_pixels":
        keep = rng.uniform(size=(n, d)) < 0.08  # often fewer observed pixels than templates
        ivar = np.where(keep, ivar, 0.0)
    elif case == "badly_scaled":
        T *= 10.0 ** rng.uniform(-5, 5, size=(q, 1))
    elif case == "near_collinear":
        T[3] = T[0] * (1 + 1e-7 * rng.normal(size=d))
    return X, ivar, T


CASES = ["generic", "zero_rows", "zero_template", "template_zero_where_observed",
         "duplicate_templates", "scaled_duplicate", "all_negative", "signed_templates",
         "few_pixels", "badly_scaled", "near_collinear"]


@pytest.mark.parametrize("case", CASES)
def test_weighted_nnls_chi2_matches_scipy(case):
    X, ivar, T = make_problem(case)
    C = weighted_nnls(X, ivar, T)
    assert C.shape == (X.shape[0], T.shape[0])
    assert np.all(C >= 0) and np.all(np.isfinite(C))
    assert_chi2_not_worse(X, ivar, T, C, scipy_weighted_nnls(X, ivar, T))


@pytest.mark.parametrize("q", [1, 2, 7, 20])
def test_weighted_nnls_any_number_of_components(q):
    X, ivar, T = make_problem("generic", n=40, d=60, q=q, seed=q)
    C = weighted_nnls(X, ivar, T)
    assert_chi2_not_worse(X, ivar, T, C, scipy_weighted_nnls(X, ivar, T))


def test_all_negative_data_gives_zero_coefficients():
    X, ivar, T = make_problem("all_negative")
    assert np.array_equal(weighted_nnls(X, ivar, T), np.zeros((X.shape[0], T.shape[0])))


def test_spectra_without_weight_and_templates_without_support_get_zero():
    X, ivar, T = make_problem("zero_rows")
    C = weighted_nnls(X, ivar, T)
    assert np.all(C[::7] == 0)
    X, ivar, T = make_problem("template_zero_where_observed")
    assert np.all(weighted_nnls(X, ivar, T)[:, 2] == 0)


def test_interior_solution_is_the_weighted_least_squares_solution():
    rng = np.random.default_rng(3)
    T = np.abs(rng.normal(size=(3, 50)))
    X = np.array([5.0, 3.0, 4.0]) @ T + 0.01 * rng.normal(size=(4, 50))
    ivar = rng.uniform(0.5, 2.0, size=X.shape)
    C = weighted_nnls(X, ivar, T)
    for i in range(4):
        w = np.sqrt(ivar[i])
        ref = np.linalg.lstsq((T * w).T, X[i] * w, rcond=None)[0]
        np.testing.assert_allclose(C[i], ref, rtol=1e-10)


def random_gram_problems(m, q, rank, seed):
    """G = A^T A with A of the given rank (singular when rank < q), b = A^T y."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, max(rank, 1), q)) * (rank > 0)
    y = rng.normal(size=(m, max(rank, 1)))
    return np.einsum("mik,mil->mkl", A, A), np.einsum("mik,mi->mk", A, y), A, y


@pytest.mark.parametrize("q,rank", [(1, 1), (3, 3), (6, 6), (6, 3), (12, 12), (12, 5), (4, 0)])
def test_nnls_gram_kkt_and_scipy(q, rank):
    G, b, A, y = random_gram_problems(300, q, rank, seed=q + rank)
    x = nnls_gram(G, b)
    assert x.shape == (300, q)
    assert_kkt(G, b, x)
    for i in range(0, 300, 10):
        ref, _ = scipy_nnls(A[i], y[i], maxiter=2000)
        f = np.sum((A[i] @ x[i] - y[i]) ** 2)
        f_ref = np.sum((A[i] @ ref - y[i]) ** 2)
        assert f <= f_ref + 1e-8 * max(f_ref, 1e-12 * (y[i] @ y[i]))


def test_zero_gram_gives_zero():
    assert np.array_equal(nnls_gram(np.zeros((5, 3, 3)), np.zeros((5, 3))), np.zeros((5, 3)))


def test_single_problem_and_docstring_example():
    x = nnls_gram(np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([3.0, -1.0]))
    np.testing.assert_allclose(x, [1.5, 0.0])
    assert x.shape == (2,)


def test_fallback_path_gives_the_same_answer():
    """With no pivoting allowed, every problem whose unconstrained optimum is
    infeasible goes through the scipy fallback; the answer must not change."""
    G, b, _, _ = random_gram_problems(200, 6, 8, seed=11)
    x = nnls_gram(G, b)
    x_fallback = nnls_gram(G, b, max_iter=0)
    np.testing.assert_allclose(x_fallback, x, rtol=1e-7, atol=1e-9)
    assert_kkt(G, b, x_fallback)


def test_warm_start_gives_the_same_answer():
    G, b, _, _ = random_gram_problems(200, 5, 9, seed=12)
    x = nnls_gram(G, b)
    rng = np.random.default_rng(0)
    for x0 in (x, rng.uniform(-1, 1, size=x.shape), np.zeros_like(x)):
        np.testing.assert_allclose(nnls_gram(G, b, x0=x0), x, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gemm_work", [16 * 40 * 3, 16 * 5])
def test_chunks_do_not_change_the_answer(monkeypatch, gemm_work):
    import specnmf.solvers.gram as gram_module
    import specnmf.solvers.nnls as nnls_module

    X, ivar, T = make_problem("generic", n=50)
    C = weighted_nnls(X, ivar, T)
    # equal up to the rounding of differently sized matrix products
    np.testing.assert_allclose(weighted_nnls(X, ivar, T, block_size=7), C, rtol=1e-12, atol=1e-14)
    G, b = spectrum_grams(X, ivar, T)
    monkeypatch.setattr(nnls_module, "_CHUNK_ELEMENTS", 16 * 6)  # 6 problems per chunk
    # 3 rows per product; or 1 row, 5 pixels and 16 pair columns per product
    monkeypatch.setattr(gram_module, "_GEMM_MAX_WORK", gemm_work)
    monkeypatch.setattr(gram_module, "_SUBS_PER_TASK", 2)  # several threads
    # (with numba, weighted_nnls solves by Cholesky where nnls_gram uses LU:
    # the same unique minimiser, to rounding)
    np.testing.assert_allclose(nnls_gram(G, b), C, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(weighted_nnls(X, ivar, T), C, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(spectrum_grams(X, ivar, T)[0], G, rtol=1e-13)


def test_spectrum_grams_are_the_weighted_normal_equations():
    X, ivar, T = make_problem("generic", n=9, d=13, q=3)
    G, b = spectrum_grams(X, ivar, T, block_size=4)
    for i in range(9):
        np.testing.assert_allclose(G[i], T @ np.diag(ivar[i]) @ T.T, rtol=1e-12)
        np.testing.assert_allclose(b[i], T @ (ivar[i] * X[i]), rtol=1e-12)


def test_float32_input_gives_float32_and_inputs_are_not_modified():
    X, ivar, T = make_problem("generic", n=20)
    X32, ivar32, T32 = X.astype(np.float32), ivar.astype(np.float32), T.astype(np.float32)
    copies = [a.copy() for a in (X32, ivar32, T32)]
    C = weighted_nnls(X32, ivar32, T32)
    assert C.dtype == np.float32
    for a, c in zip((X32, ivar32, T32), copies):
        np.testing.assert_array_equal(a, c)
    G, b = spectrum_grams(X, ivar, T)
    G0, b0 = G.copy(), b.copy()
    nnls_gram(G, b, x0=np.ones_like(b))
    nnls_covariance(G, np.ones_like(b), free_only=True)
    np.testing.assert_array_equal(G, G0)
    np.testing.assert_array_equal(b, b0)


def test_array_api_input_comes_back_in_its_namespace():
    xp = pytest.importorskip("array_api_strict")
    X, ivar, T = make_problem("generic", n=10)
    C = weighted_nnls(xp.asarray(X), xp.asarray(ivar), xp.asarray(T))
    assert C.__array_namespace__() is xp
    np.testing.assert_allclose(np.asarray(C), weighted_nnls(X, ivar, T))


# -- hypothesis -------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def weighted_problems(draw):
    n = draw(st.integers(1, 4))
    d = draw(st.integers(1, 10))
    q = draw(st.integers(1, 5))
    X = draw(hnp.arrays(np.float64, (n, d), elements=finite))
    ivar = draw(hnp.arrays(np.float64, (n, d), elements=st.sampled_from([0.0, 0.1, 1.0, 7.5])))
    # templates as small as 1e-6 of the data scale (not 1e-308: the exact
    # coefficients would overflow)
    T = draw(hnp.arrays(np.float64, (q, d),
                        elements=st.one_of(st.just(0.0), st.floats(1e-6, 10, width=64))))
    return X, ivar, T


@given(weighted_problems())
def test_property_never_worse_than_scipy(problem):
    X, ivar, T = problem
    C = weighted_nnls(X, ivar, T)
    assert np.all(C >= 0) and np.all(np.isfinite(C))
    assert_chi2_not_worse(X, ivar, T, C, scipy_weighted_nnls(X, ivar, T))


@given(weighted_problems(), st.floats(1e-3, 1e3), st.randoms(use_true_random=False))
def test_property_template_scale_and_order_leave_the_fit_unchanged(problem, scale, rnd):
    """Rescaling a template rescales its coefficient; permuting templates
    permutes coefficients: the chi^2 of each spectrum does not change."""
    X, ivar, T = problem
    perm = list(range(T.shape[0]))
    rnd.shuffle(perm)
    T2 = T[perm].copy()
    T2[0] *= scale
    chi2 = _chi2_rows(X, ivar, weighted_nnls(X, ivar, T), T, np)
    chi2_2 = _chi2_rows(X, ivar, weighted_nnls(X, ivar, T2), T2, np)
    floor = 1e-12 * _chi2_rows(X, ivar, np.zeros((X.shape[0], T.shape[0])), T, np)
    assert np.all(np.abs(chi2_2 - chi2) <= 1e-8 * np.maximum(chi2, floor))


@given(st.integers(1, 6), st.integers(0, 8), st.integers(0, 2**32 - 1))
def test_property_kkt_on_random_psd_problems(q, rank, seed):
    G, b, _, _ = random_gram_problems(20, q, rank, seed)
    assert_kkt(G, b, nnls_gram(G, b))


# -- covariance -------------------------------------------------------------

def test_covariance_pulls_are_unit_normal():
    """Simulated spectra with known templates and coefficients well away from
    0, Gaussian noise with the given ivar: (estimate - truth) / sigma ~ N(0, 1)."""
    rng = np.random.default_rng(2024)
    n, d, q = 3000, 80, 3
    wave = np.linspace(0, 1, d)
    T = np.stack([np.exp(-0.5 * ((wave - mu) / 0.12) ** 2) for mu in (0.2, 0.5, 0.8)])
    truth = rng.uniform(20, 40, size=(n, q))
    sigma = rng.uniform(0.5, 2.0, size=(n, d))
    X = truth @ T + rng.normal(size=(n, d)) * sigma
    ivar = 1.0 / sigma**2
    ivar[rng.uniform(size=(n, d)) < 0.2] = 0.0
    C, cov = weighted_nnls(X, ivar, T, return_covariance=True)
    assert np.all(C > 0)
    pulls = (C - truth) / np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    assert np.all(np.abs(pulls.mean(axis=0)) < 0.1), pulls.mean(axis=0)
    assert np.all(np.abs(pulls.std(axis=0) - 1) < 0.1), pulls.std(axis=0)
    G, _ = spectrum_grams(X, ivar, T)
    np.testing.assert_allclose(nnls_covariance(G, C), cov, rtol=1e-12)


def test_covariance_is_inverse_gram_for_interior_solutions():
    G, _, _, _ = random_gram_problems(100, 4, 9, seed=5)
    x = np.ones((100, 4))
    inv = np.linalg.inv(G)
    np.testing.assert_allclose(nnls_covariance(G, x), inv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(nnls_covariance(G, x, free_only=True), inv, rtol=1e-9, atol=1e-12)


def test_free_only_covariance_is_the_inverse_on_the_free_set():
    G, _, _, _ = random_gram_problems(50, 4, 9, seed=6)
    x = np.array([1.0, 0.0, 2.0, 0.0]) * np.ones((50, 1))
    cov = nnls_covariance(G, x, free_only=True)
    free = [0, 2]
    np.testing.assert_allclose(cov[:, [[0], [2]], free], np.linalg.inv(G[:, [[0], [2]], free]),
                               rtol=1e-9)
    assert np.all(cov[:, [1, 3], :] == 0) and np.all(cov[:, :, [1, 3]] == 0)
    # the default keeps the unconstrained uncertainty of the bound coefficients
    np.testing.assert_allclose(nnls_covariance(G, x), np.linalg.inv(G), rtol=1e-9)


def test_singular_covariance_is_a_finite_pseudo_inverse():
    G, _, _, _ = random_gram_problems(30, 4, 2, seed=7)  # rank 2 of 4
    G[:5] = 0.0  # no weight at all
    cov = nnls_covariance(G, np.ones((30, 4)))
    assert np.all(np.isfinite(cov))
    np.testing.assert_allclose(cov, cov.transpose(0, 2, 1))
    assert np.all(cov[:5] == 0)
    # a generalised inverse: G cov G = G
    np.testing.assert_allclose(G @ cov @ G, G, atol=1e-8 * np.abs(G).max())


def test_docstring_covariance_example():
    G = np.array([[[4.0, 0.0], [0.0, 0.25]]])
    np.testing.assert_allclose(nnls_covariance(G, np.array([[1.0, 0.0]])),
                               [[[0.25, 0.0], [0.0, 4.0]]])


# -- bad input --------------------------------------------------------------

@pytest.mark.parametrize("G,b,match", [
    (np.zeros((2, 3, 4)), np.zeros((2, 3)), "G must have shape"),
    (np.zeros((2, 3, 3)), np.zeros((2, 4)), "b must have shape"),
    (np.full((1, 2, 2), np.nan), np.zeros((1, 2)), "finite"),
    (-np.eye(2)[None], np.zeros((1, 2)), "positive semi-definite"),
])
def test_nnls_gram_rejects_bad_input(G, b, match):
    with pytest.raises(ValueError, match=match):
        nnls_gram(G, b)


def test_bad_arguments_are_named():
    G, b = np.eye(2)[None], np.ones((1, 2))
    with pytest.raises(ValueError, match="max_iter"):
        nnls_gram(G, b, max_iter=-1)
    with pytest.raises(ValueError, match="x0"):
        nnls_gram(G, b, x0=np.ones((2, 2)))
    with pytest.raises(TypeError, match="G"):
        nnls_gram(np.array([[["a"]]]), b)
    X, ivar, T = make_problem("generic", n=5)
    with pytest.raises(ValueError, match="templates"):
        weighted_nnls(X, ivar, T[:, :-1])
    with pytest.raises(ValueError, match="block_size"):
        weighted_nnls(X, ivar, T, block_size=0)
