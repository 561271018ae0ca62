"""The compiled (numba) kernels compute exactly what the numpy/BLAS forms compute.

The fused multiplicative pass and the checking Gram kernel are the default on
the CPU when numba is installed; these tests hold them to the BLAS forms of
the same update rules, whatever the masks, chunking or thread count.
"""

import itertools
import warnings

import numpy as np
import pytest

from specnmf import SpectralNMF, _kernels
from specnmf.penalties import make_penalties
from specnmf.solvers import gram
from specnmf.solvers.anls import ANLS
from specnmf.solvers.apg import APG
from specnmf.solvers.multiplicative import ClipNMF, NearlyNMF, ShiftNMF, minimal_shift
from .conftest import EPS32, assert_float32_tracks_float64, start_sensitivity

pytestmark = [pytest.mark.skipif(not _kernels.available(),
                                 reason="numba not installed (or SPECNMF_DISABLE_NUMBA set)"),
              pytest.mark.filterwarnings("ignore::specnmf.MissingDataWarning")]


def _problem(n, d, q, seed, dtype=np.float64):
    """Signed, weighted spectra with every kind of missing data the kernels special-case."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(0.1, 1.0, (q, d))
    C = rng.uniform(0.1, 1.0, (n, q))
    X = C @ T + rng.normal(0, 0.5, (n, d))
    ivar = rng.uniform(0.5, 2.0, (n, d))
    start = rng.integers(0, d // 2, n)
    stop = start + rng.integers(d // 4, d, n)
    j = np.arange(d)
    ivar[(j < start[:, None]) | (j >= stop[:, None])] = 0      # one window per spectrum
    ivar[rng.uniform(size=(n, d)) < 0.1] = 0                   # holes inside it
    ivar[n // 3] = 0                                           # a spectrum without data
    ivar[:, d // 5] = 0                                        # a pixel without data
    X[ivar == 0] = rng.normal(0, 100, np.count_nonzero(ivar == 0))  # must not matter
    C0 = rng.uniform(0.1, 1.0, (n, q))
    return (X.astype(dtype), ivar.astype(dtype), C0.astype(dtype), T.astype(dtype))


def _solver(name, form, X, ivar, penalties):
    if name == "nearly":
        return NearlyNMF(np, penalties=penalties, form=form)
    if name == "shift":
        return ShiftNMF(np, shift=minimal_shift(X, ivar), penalties=penalties, form=form)
    return ClipNMF(np, penalties=penalties, form=form)


def _iteration(solver, X, ivar, C, T):
    block = solver.prepare_block(X, ivar)
    C_new, (chi, *stats) = solver.block_step(block, C, T, C_all=C)
    return C_new, chi, solver.templates_step(T, stats, C_new)


@pytest.mark.parametrize("name", ["nearly", "shift", "clip"])
@pytest.mark.parametrize("n,q", [(1, 1), (7, 3), (600, 5), (40, 8), (30, _kernels.MAX_Q)])
@pytest.mark.parametrize("penalised", [False, True])
def test_fused_iteration_equals_blas_forms(name, n, q, penalised):
    X, ivar, C, T = _problem(n, 60, q, seed=n + q)
    penalties = make_penalties(smoothness=0.3, sparsity=0.2, ivar_scale=1.0) if penalised else ()
    C_f, chi_f, T_f = _iteration(_solver(name, "fused", X, ivar, penalties), X, ivar, C, T)
    for form in ("gram", "dense"):
        C_r, chi_r, T_r = _iteration(_solver(name, form, X, ivar, penalties), X, ivar, C, T)
        np.testing.assert_allclose(C_f, C_r, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(T_f, T_r, rtol=1e-12, atol=1e-14)
        assert chi_f == pytest.approx(chi_r, rel=1e-12)


def test_thread_count_does_not_change_results():
    X, ivar, C, T = _problem(1000, 80, 4, seed=3)     # four chunks of spectra
    lo, hi = _kernels.spans(ivar)
    one = _kernels.mu_pass(ivar, X, lo, hi, C, T, nearly=True, threads=1)
    two = _kernels.mu_pass(ivar, X, lo, hi, C, T, nearly=True, threads=2)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)
    g1 = _kernels.checked_row_grams(X, ivar, T, threads=1)
    g2 = _kernels.checked_row_grams(X, ivar, T, threads=2)
    assert np.array_equal(g1[0], g2[0]) and np.array_equal(g1[1], g2[1])
    r1 = _kernels.fit_row_grams(ivar, ivar * X, T, lo, hi, threads=1)
    r2 = _kernels.fit_row_grams(ivar, ivar * X, T, lo, hi, threads=2)
    assert np.array_equal(r1[0], r2[0]) and np.array_equal(r1[1], r2[1])


@pytest.mark.parametrize("n,d", [(301, 130), (13, 6 * _kernels.PIX_BLOCK + 5)])
def test_pixel_stats_do_not_depend_on_threads_or_pixel_blocks(n, d):
    # the pixels are shared out in blocks; the sums' bits must not depend on the blocks
    # (the wide grid: each thread's share spans several PIX_BLOCKs)
    X, ivar, C, _ = _problem(n, d, 4, seed=4)
    lo, hi = _kernels.spans(ivar)
    one = _kernels.fit_pixel_stats(ivar, ivar * X, C, lo, hi, threads=1)
    two = _kernels.fit_pixel_stats(ivar, ivar * X, C, lo, hi, threads=2)
    many = _kernels.fit_pixel_stats(ivar, ivar * X, C, lo, hi, threads=7)
    for a, b, c in zip(one, two, many):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    np.testing.assert_allclose(one[0], C.T @ (ivar * X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one[1], gram.pixel_grams(ivar, C, np), rtol=1e-12, atol=0)


@pytest.mark.parametrize("q", [1, 5, _kernels.MAX_Q])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 7, 300])      # groups of PIX_ROWS spectra, the last padded
def test_fit_pixel_stats_match_blas(q, dtype, n):
    X, ivar, C, _ = _problem(n, 70, q, seed=n + q, dtype=dtype)
    A, G = _kernels.fit_pixel_stats(ivar, ivar * X, C, *_kernels.spans(ivar))
    assert A.dtype == G.dtype == np.float64
    C64, V64, W64 = (a.astype(np.float64) for a in (C, ivar, ivar * X))
    A_ref, G_ref = C64.T @ W64, gram.pixel_grams(V64, C64, np)
    # the rounding of the products summed, relative to the sums of their magnitudes
    np.testing.assert_allclose(A, A_ref, rtol=0, atol=1e-13 * (np.abs(C64).T @ np.abs(W64)).max())
    np.testing.assert_allclose(G, G_ref, rtol=1e-13, atol=0)


@pytest.mark.parametrize("q", [1, 5, _kernels.MAX_Q])
def test_fit_row_grams_match_blas(q):
    X, ivar, _, T = _problem(300, 70, q, seed=2)
    G, b = _kernels.fit_row_grams(ivar, ivar * X, T, *_kernels.spans(ivar))
    G_ref, b_ref = gram.row_grams(ivar, T, np, X=X)
    np.testing.assert_allclose(G, G_ref, rtol=1e-13)
    np.testing.assert_allclose(b, b_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["anls", "apg"])
@pytest.mark.parametrize("n,q", [(300, 1), (300, 3), (600, 5), (400, _kernels.MAX_Q)])
@pytest.mark.parametrize("penalised", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_alternating_iteration_compiled_matches_blas(name, n, q, penalised, dtype):
    # the compiled Grams sum in another order than BLAS (for float32 data, in float64),
    # ANLS solves by the compiled NNLS and APG finds its step sizes by Laguerre's method:
    # the same iteration to rounding (with enough spectra per pixel that every exact
    # half-step is unique), amplified by the problems' conditioning
    X, ivar, C, T = _problem(n, 60, q, seed=n + q, dtype=dtype)
    penalties = make_penalties(smoothness=0.3, sparsity=0.2, ivar_scale=1.0) if penalised else ()
    cls = ANLS if name == "anls" else APG

    def iteration(solver):
        block = solver.prepare_block(X, ivar)
        P = solver.row_inputs(C) if name == "apg" else C
        P_new, (chi, *stats) = solver.block_step(block, P, T, C_all=C)
        C_new = solver.row_outputs(P_new, C) if name == "apg" else P_new
        return C_new, chi, solver.templates_step(T, stats, C_new)

    compiled = cls(np, penalties=penalties, n_components=q)
    assert compiled.compiled and not cls(np, penalties=penalties).compiled
    C_k, chi_k, T_k = iteration(compiled)
    C_r, chi_r, T_r = iteration(cls(np, penalties=penalties))
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-3, 1e-5)
    assert (C_k.dtype, T_k.dtype) == (C_r.dtype, T_r.dtype)
    np.testing.assert_allclose(C_k, C_r, rtol=rtol, atol=atol)
    np.testing.assert_allclose(T_k, T_r, rtol=rtol, atol=atol)
    assert chi_k == pytest.approx(chi_r, rel=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("q", [1, 5, _kernels.MAX_Q])
def test_gradient_pass_is_the_gradient_of_chi2(q, dtype):
    """The stationarity check's compiled pass: chi^2's gradient and Hessian diagonal
    in both factors, in float64, from rows or from spans packed one after another."""
    X, ivar, C, T = _problem(600, 90, q, seed=4, dtype=dtype)
    lo, hi = _kernels.spans(ivar)
    shift = 0.3
    X64, v, C64, T64 = (a.astype(np.float64) for a in (X, ivar, C, T))
    wr = v * (X64 - shift - C64 @ T64)
    expected = (-2 * wr @ T64.T, 2 * v @ (T64 * T64).T, -2 * C64.T @ wr, 2 * (C64 * C64).T @ v)
    # the same spans packed one after another, after n_pixels values never read (NaN)
    pad = X.shape[1]
    sizes = (hi - lo).astype(np.int64)
    offsets = pad + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    vp, xp_ = np.full(pad + sizes.sum(), np.nan, dtype), np.full(pad + sizes.sum(), np.nan, dtype)
    for i, (a, b, o) in enumerate(zip(lo.tolist(), hi.tolist(), offsets.tolist())):
        vp[o:o + b - a], xp_[o:o + b - a] = ivar[i, a:b], X[i, a:b]
    starts = (offsets - lo.astype(np.int64)).astype(np.uint64)
    for got in (_kernels.gradient_pass(ivar, X, lo, hi, C, T, shift=shift),
                _kernels.gradient_pass(vp, xp_, lo, hi, C, T, shift=shift, starts=starts)):
        for g, e in zip(got, expected):
            assert g.dtype == np.float64
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12 * np.abs(e).max())


@pytest.mark.parametrize("solver", ["nearly", "shift", "clip"])
def test_stationarity_from_the_compiled_gradient(monkeypatch, solver):
    """The fit's stationarity is the same from the compiled pass as from the residual."""
    X, ivar, _, _ = _problem(300, 70, 3, seed=6)
    fit = dict(n_components=3, solver=solver, max_iter=15, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = SpectralNMF(**fit).fit(X, ivar=ivar)
        monkeypatch.setattr(_kernels, "gradient_pass", lambda *a, **k: pytest.fail("called"))
        with pytest.raises(pytest.fail.Exception):
            SpectralNMF(**fit).fit(X, ivar=ivar)
        monkeypatch.setattr(type(_solver(solver, "auto", X, ivar, ())), "block_gradient",
                            lambda self, block, C, T: None)
        numpy = SpectralNMF(**fit).fit(X, ivar=ivar)
    np.testing.assert_array_equal(compiled.templates_, numpy.templates_)
    assert compiled.stationarity_ == pytest.approx(numpy.stationarity_, rel=1e-12)


def test_spans():
    ivar = np.array([[0, 1, 0, 2, 0], [0, 0, 0, 0, 0], [3, 0, 0, 0, 1.0]])
    lo, hi = _kernels.spans(ivar)
    assert lo.tolist() == [1, 0, 0] and hi.tolist() == [4, 0, 5]


@pytest.mark.parametrize("q,d", [(5, 50), (_kernels.MAX_Q, 50), (3, 2 * _kernels.SUM_BLOCK + 44)])
def test_gram_kernel_matches_numpy_and_checks_the_data(q, d):
    X, ivar, _, T = _problem(300, d, q, seed=1)
    # single observed pixels on both sides of the sums' run boundaries and of
    # the span search's
    B, S = _kernels.SUM_BLOCK, _kernels.SCAN_BLOCK
    edges = {0, 1, S - 1, S, S + 1, 2 * S - 1, 2 * S, B - 1, B, 2 * B - 1, 2 * B, d - S - 1, d - S, d - 2, d - 1}
    for row, j in enumerate(sorted(edges & set(range(d)))):
        ivar[row] = 0
        ivar[row, j] = 1.5
    ivar[20, :] = -0.0                          # negative zeros are zeros
    ivar[20, d // 2] = 1.0
    X[ivar == 0] = np.nan                       # allowed where ivar == 0
    G, b, ok = _kernels.checked_row_grams(X, ivar, T)
    assert ok
    ku, lu = np.triu_indices(q)
    np.testing.assert_allclose(G, ivar @ (T[ku] * T[lu]).T, rtol=1e-13)
    np.testing.assert_allclose(b, (ivar * np.nan_to_num(X)) @ T.T, rtol=1e-12, atol=1e-12)
    observed = np.argwhere(ivar > 0)
    for (i, j), array, value in itertools.product(
            (observed[7], observed[np.argmax(observed[:, 1])]),   # inside a run; the last pixel
            (ivar, X), (-1.0, np.nan, np.inf)):
        if array is X and value == -1.0:
            continue                            # negative flux is fine
        bad = array.copy()
        bad[i, j] = value
        args = (X, bad) if array is ivar else (bad, ivar)
        assert not _kernels.checked_row_grams(*args, T)[2]
    # a bad weight alone in a row of zeros is its span, and found
    for j, value in itertools.product(sorted(edges & set(range(d))), (-1.0, np.nan, np.inf)):
        bad = ivar.copy()
        bad[21] = 0
        bad[21, j] = value
        assert not _kernels.checked_row_grams(X, bad, T)[2]


@pytest.mark.parametrize("solver", ["nearly", "shift", "clip", "anls", "apg"])
def test_fit_is_the_same_without_numba(monkeypatch, solver):
    X, ivar, C, T = _problem(300, 70, 3, seed=5)
    kw = dict(solver=solver, max_iter=30, tol=0, smoothness=0.1)
    fused = SpectralNMF(3, **kw).fit(X, ivar=ivar, templates=T, coefficients=C)
    monkeypatch.setenv("SPECNMF_DISABLE_NUMBA", "1")
    plain = SpectralNMF(3, **kw).fit(X, ivar=ivar, templates=T, coefficients=C)
    np.testing.assert_allclose(fused.chi2_, plain.chi2_, rtol=1e-10)
    np.testing.assert_allclose(fused.templates_, plain.templates_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fused.transform(X, ivar=ivar), plain.transform(X, ivar=ivar),
                               rtol=1e-8, atol=1e-12)


def test_float32_kernel_tracks_float64():
    X, ivar, C, T = _problem(500, 90, 4, seed=8)
    kw = dict(max_iter=50, tol=0)
    m64, spread = start_sensitivity(
        lambda C0, T0: SpectralNMF(4, **kw).fit(X, ivar=ivar, templates=T0, coefficients=C0), C, T)
    m32 = SpectralNMF(4, dtype="float32", **kw).fit(X, ivar=ivar, templates=T, coefficients=C)
    assert m32.templates_.dtype == np.float32
    # monotone up to float32 rounding of the objective
    assert np.all(np.diff(m32.chi2_) <= 10 * EPS32 * m32.chi2_[:-1])
    assert_float32_tracks_float64(m32, m64, spread)


def test_transform_reports_bad_data_like_the_validated_path():
    X, ivar, C, T = _problem(50, 40, 2, seed=2)
    model = SpectralNMF.from_templates(T)
    bad = ivar.copy()
    bad[3, 4] = -1
    with pytest.raises(ValueError, match="ivar must be >= 0"):
        model.transform(X, ivar=bad)
    bad = X.copy()
    bad[np.argwhere(ivar > 0)[0][0], np.argwhere(ivar > 0)[0][1]] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        model.transform(bad, ivar=ivar)


def test_fused_form_needs_numba(monkeypatch):
    monkeypatch.setattr(_kernels, "numba", None)
    with pytest.raises(ValueError, match="numba"):
        NearlyNMF(np, form="fused")
    # the default quietly uses the numpy/BLAS forms
    assert NearlyNMF(np, n_components=3)._form(3).name == "gram"


def test_kernel_nnls_equals_the_numpy_solvers(monkeypatch):
    """Compiled Lawson-Hanson, its hand-offs (hard and fragile problems) and the
    numpy block principal pivoting give the same coefficients on every degenerate case."""
    from specnmf.solvers.coefficients import weighted_nnls
    from specnmf.tests.test_nnls import CASES, make_problem

    for case in CASES:
        X, ivar, T = make_problem(case)
        compiled = weighted_nnls(X, ivar, T)
        with monkeypatch.context() as m:
            m.setenv("SPECNMF_DISABLE_NUMBA", "1")
            plain = weighted_nnls(X, ivar, T)
        chi_c = np.sum(ivar * (X - compiled @ T) ** 2, axis=1)
        chi_p = np.sum(ivar * (X - plain @ T) ** 2, axis=1)
        np.testing.assert_allclose(chi_c, chi_p, rtol=1e-9, atol=1e-9, err_msg=case)


def test_kernel_nnls_hands_off_hard_problems():
    X, ivar = _problem(200, 60, 3, seed=4)[:2]
    rng = np.random.default_rng(0)
    T = rng.uniform(0.1, 1.0, (3, 60))
    T[2] = T[0] * (1 + 1e-5 * rng.normal(size=60))       # nearly collinear: pivot ~1e-10
    G, b, ok, x, status = _kernels.checked_row_grams(np.ascontiguousarray(X), ivar, T, solve=True)
    assert ok and np.any(status != _kernels.SOLVED)


@pytest.mark.parametrize("q", [1, 3, 5, 8, _kernels.MAX_Q])
def test_batched_free_solves_equal_the_active_set_loop(q):
    """The vectorised all-free pass accepts only what the one-problem-at-a-time
    loop would accept at its first step, bit for bit; the rest go to the loop."""
    X, ivar = _problem(700, 80, q, seed=q)[:2]
    rng = np.random.default_rng(q)
    T = rng.uniform(0.1, 1.0, (q, 80))
    G, b, ok = _kernels.checked_row_grams(np.ascontiguousarray(X), ivar, T)
    _kernels._compile_helpers()                                 # else _nnls_rows is plain Python
    b[::3] *= rng.choice([-1.0, 1.0], size=(len(b[::3]), q))   # active bounds
    G[::11, 0] = 0                                              # a template without weight
    out = {}
    for start in (_kernels.SOLVED, _kernels._RETRY):            # _RETRY: skip the batched pass
        x = np.full(b.shape, -1.0)
        status = np.full(len(b), start, dtype=np.int8)
        _kernels._nnls_rows(G, b, x, status, 1e-9, 1e-3, 1e-11, 1e3)
        out[start] = x, status
    np.testing.assert_array_equal(out[_kernels.SOLVED][1], out[_kernels._RETRY][1])
    np.testing.assert_array_equal(out[_kernels.SOLVED][0], out[_kernels._RETRY][0])
    # both paths did real work
    batch = np.zeros(len(b), dtype=np.int8)
    _kernels._free_rows(G, b, np.zeros(b.shape), batch, _kernels._packed_index(q), 1e-3, 1e-11, 1e3)
    assert np.any(batch == _kernels.SOLVED) and np.any(batch == _kernels._RETRY)


@pytest.mark.parametrize("n_components", [None, 3])
def test_auto_form_is_consistent_between_prepare_and_step(n_components):
    # the fused form is chosen only for a solver built for its number of components
    X, ivar, C, T = _problem(30, 40, 3, seed=6)
    solver = NearlyNMF(np, n_components=n_components)
    expected = "fused" if n_components else "gram"
    assert solver._form(3).name == expected
    C_new, chi, T_new = _iteration(solver, X, ivar, C, T)
    C_r, chi_r, T_r = _iteration(NearlyNMF(np, form="gram"), X, ivar, C, T)
    np.testing.assert_allclose(C_new, C_r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(T_new, T_r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("q", range(1, _kernels.MAX_Q + 1))
def test_kernel_source_is_the_template_expanded(q):
    # every template form is expanded, in the packed order of gram.pairs, the same each time
    import ast

    from specnmf.solvers.gram import pairs

    source = _kernels.kernel_source(q)
    assert source == _kernels.kernel_source(q)
    assert "unrolled(" not in source and "sum_k(" not in source and "sum_r(" not in source
    assert "{" not in source
    functions = {f.name: f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef)}
    assert set(functions) == {f"mu_q{q}", f"grad_q{q}", f"gram_q{q}", f"rows_q{q}",
                              f"pixels_q{q}"}
    ku, lu, _ = pairs(q)
    stores = [f"G[i, {p}] = g{k}_{l}" for p, (k, l) in enumerate(zip(ku, lu))]
    lines = [line.strip() for line in source.splitlines()]
    # the checking Gram kernel and the fit's row Grams, each in packed order
    assert [line for line in lines if line.startswith("G[i, ")] == stores + stores
    assert f"m = {' + '.join(f'c{k} * Tm[{k}, j]' for k in range(q))}" in lines


def test_transform_of_any_layout_and_dtype_is_the_same():
    X, ivar, C, T = _problem(300, 50, 3, seed=9)
    model = SpectralNMF.from_templates(T)
    ref = model.transform(X, ivar=ivar)
    # Fortran order takes the numpy solvers: the same minimiser, to rounding
    np.testing.assert_allclose(model.transform(np.asfortranarray(X), ivar=ivar), ref,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.transform(X, ivar=ivar.astype(np.float32)), ref,
                               rtol=1e-5, atol=1e-7)
    X32, iv32 = X.astype(np.float32), ivar.astype(np.float32)
    np.testing.assert_allclose(model.transform(X32, ivar=iv32), model.transform(
        X32.astype(np.float64), ivar=iv32.astype(np.float64)), rtol=1e-10, atol=1e-12)
    # the caller's arrays are left alone
    X_copy = X.copy()
    model.transform(X, ivar=ivar)
    assert np.array_equal(X, X_copy)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("q", [1, 4, _kernels.MAX_Q])
def test_row_grams_acceleration_equals_the_reference(monkeypatch, dtype, q):
    """row_grams(float64=True): the compiled kernel, its tiled BLAS form and the
    fits' one-product form are the same statistics."""
    from specnmf.solvers import gram

    X, ivar, _, T = _problem(500, 70, q, seed=q, dtype=dtype)
    X[ivar == 0] = 0.0
    T = T.astype(np.float64)
    assert gram.kernel_applies(X, ivar, q)
    G, b = gram.row_grams(ivar, T, np, X=X, float64=True)
    monkeypatch.setenv("SPECNMF_DISABLE_NUMBA", "1")
    assert not gram.kernel_applies(X, ivar, q)
    G_ref, b_ref = gram.row_grams(ivar, T, np, X=X, float64=True)
    np.testing.assert_allclose(G, G_ref, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(b, b_ref, rtol=1e-12, atol=1e-12)
    G_fit, b_fit = gram.row_grams(ivar.astype(np.float64), T, np, X=X.astype(np.float64))
    np.testing.assert_allclose(G_ref, G_fit, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(b_ref, b_fit, rtol=1e-12, atol=1e-12)


def test_kkt_test_is_one_definition():
    """The numpy KKT test (nnls._kkt) and the compiled one (_kernels._kkt_ok) give
    the same verdict on every candidate: exact solutions, candidates moved to
    either side of every tolerance, arbitrary free sets, on random, singular,
    nearly dependent and template-less problems."""
    from specnmf.solvers import nnls

    _kernels._compile_helpers()
    rng = np.random.default_rng(0)
    verdicts = []
    for trial in range(300):
        q = int(rng.integers(1, _kernels.MAX_Q + 1))
        A = rng.normal(size=(q + 3, q)) * rng.uniform(0.1, 10.0, q)
        kind = trial % 4
        if kind == 1 and q > 1:
            A[:, -1] = A[:, 0]                                  # duplicate: singular
        elif kind == 2:
            A[:, 0] = 0                                         # no weight: G_00 = 0
        elif kind == 3 and q > 1:
            A[:, -1] = A[:, 0] * (1 + 1e-7 * rng.normal(size=q + 3))
        G = A.T @ A
        b = A.T @ rng.normal(size=q + 3)
        Gs, bs, _, live = nnls._equilibrate(G[:, :, None], b[:, None])
        bmax = np.max(np.abs(bs), axis=0)
        x_opt = nnls._bpp(Gs, bs, live, live, 100)[0]
        M = Gs[:, :, 0].copy()
        M[np.arange(q), np.arange(q)] = 1.0                     # the kernel's convention
        for _ in range(12):
            F = (x_opt > 0) if rng.uniform() < 0.7 else (rng.uniform(size=(q, 1)) < 0.5) & live
            x = np.where(F, x_opt, 0.0)
            tol = nnls._KKT_RTOL * (bmax + q * np.max(np.abs(x), axis=0))
            k = int(rng.integers(q))
            # move one coordinate by about a tolerance (either test's boundary)
            scale = rng.choice([1.0, nnls._FREE_GRAD_FACTOR]) * rng.choice([-1.0, 1.0])
            x[k] += scale * tol[0] * rng.uniform(0.5, 1.5) if F[k, 0] else 0.0
            V, free_ok = nnls._kkt(Gs, bs, x, F, live, bmax)
            numpy_ok = bool(not V.any() and free_ok[0])
            kernel_ok = _kernels._kkt_ok(M, bs[:, 0], x[:, 0], F[:, 0], live[:, 0],
                                         nnls._KKT_RTOL, nnls._FREE_GRAD_FACTOR)
            assert numpy_ok == kernel_ok, (trial, q, kind)
            verdicts.append(numpy_ok)
    assert 0.2 < np.mean(verdicts) < 0.8         # both verdicts, often near the boundary


@pytest.mark.parametrize("q", [1, 4, 7, min(_kernels.MU_UNPAIRED)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_pass_adds_every_observed_pixel_once(q, dtype):
    """The fused pass sums template statistics over pairs of spectra where their
    spans overlap and one spectrum at a time elsewhere: with data the model fits
    exactly in small integers (so every sum is exact, in any order, and Shift-NMF's
    update leaves the coefficients as they are), each statistic must be exactly
    C^T (v*x) and C^T (v*(C T)), for spans that are disjoint, nested, partly
    overlapping, identical, touching or empty, and an odd spectrum left alone
    (and for a q whose kernel sums one spectrum at a time)."""
    rng = np.random.default_rng(q)
    d = 60
    windows = [(0, 20), (30, 50), (5, 55), (10, 30), (0, 40), (20, 60), (7, 33), (7, 33),
               (0, 30), (30, 60), (12, 12), (3, 9), (25, 26), (25, 26), (41, 59)]
    n = len(windows)
    T = rng.integers(1, 4, (q, d)).astype(dtype)
    C = rng.integers(1, 4, (n, q)).astype(dtype)
    X = C @ T
    v = rng.integers(0, 3, (n, d)).astype(dtype)              # holes inside the spans too
    j = np.arange(d)
    for i, (a, b) in enumerate(windows):
        v[i, (j < a) | (j >= b)] = 0
    X[v == 0] = 0
    lo, hi = _kernels.spans(v)
    C_new, chi, A, D = _kernels.mu_pass(v, X, lo, hi, C, T, nearly=False, threads=1)
    seen = v.any(axis=1)
    assert not seen.all()
    np.testing.assert_array_equal(C_new[seen], C[seen])    # the empty ones: zero_division
    assert chi == 0
    np.testing.assert_array_equal(A, C.T.astype(np.float64) @ (v * X))
    np.testing.assert_array_equal(D, C_new.T.astype(np.float64) @ (v * (C @ T)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 15, 16, 5700])
def test_aligned_rows_start_on_cache_lines(dtype, d):
    """mu_q's templates and statistics: each row on a 64-byte boundary, C-contiguous."""
    for _ in range(5):                                  # whatever offset the buffer gets
        a = _kernels._aligned_rows(7, d, dtype)
        assert a.dtype == dtype and a.flags.c_contiguous and a.shape[0] == 7
        assert a.shape[1] >= d and a.strides[0] % 64 == 0
        assert all(row.ctypes.data % 64 == 0 for row in a)


@pytest.mark.parametrize("q", [1, 2, 5, _kernels.MAX_Q])
def test_largest_eigenvalues_are_lapacks_from_above(q):
    """APG's step sizes: lambda_max of many small symmetric matrices, to ~1e-14, never
    below LAPACK's by more than rounding (a step 1/L must not overshoot)."""
    rng = np.random.default_rng(q)
    B = rng.normal(size=(400, q, 2 * q))
    G = B @ B.transpose(0, 2, 1)                                   # generic
    T, v = rng.uniform(size=(q, 40)), rng.uniform(size=(400, 40))
    G[200:] = np.einsum("kj,ij,lj->ikl", T, v[200:], T)           # correlated, as Grams are
    G[0] = 0                                                      # no data
    G[1] = 3 * np.eye(q)                                          # one multiple eigenvalue
    G[2] = np.diag(np.arange(1.0, q + 1))
    G[3] = np.ones((q, q))                                        # rank one
    G[4] = np.diag(np.r_[2.0, 2.0, np.zeros(q)][:q])              # a double largest, zeros
    G[5] = -np.eye(q)                                             # negative definite
    ref = np.linalg.eigvalsh(G)[:, -1]
    got = _kernels.largest_eigenvalues(G)
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=0)
    assert np.all(got >= ref - 4e-16 * q * np.abs(ref))
    assert got[0] == 0 and np.array_equal(got, _kernels.largest_eigenvalues(G, threads=2))


def test_compiled_nnls_does_not_depend_on_threads():
    rng = np.random.default_rng(5)
    B = rng.normal(size=(3000, 4, 6))
    G = B @ B.transpose(0, 2, 1)
    b = rng.normal(size=(3000, 4))
    ku, lu, _ = gram.pairs(4)
    out = []
    for threads in (1, 2, 5):
        x, status = np.zeros((3000, 4)), np.full(3000, _kernels.SOLVED, dtype=np.int8)
        _kernels.nnls_rows(G[:, ku, lu], b, x, status, 1e-9, 1e-3, 1e-11, 1e3, threads=threads)
        out.append((x, status))
    for x, status in out[1:]:
        assert np.array_equal(x, out[0][0]) and np.array_equal(status, out[0][1])
