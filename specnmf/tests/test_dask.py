"""Dask arrays: one task per chunk of spectra, statistics reduced in a tree, and the
same answers as in memory under the threaded scheduler and on a process cluster."""

import functools
import logging
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from specnmf import SpectralNMF, chi2  # noqa: E402
from specnmf import _validation as V  # noqa: E402
from specnmf.engine import DaskEngine, InMemory, make_engine  # noqa: E402
from specnmf.solvers import SOLVERS  # noqa: E402

from .conftest import WeightedStandIn, make_toy, weighted_pass  # noqa: E402

# the estimator routes dask arrays through make_engine once it takes block_size
ESTIMATOR_HAS_ENGINES = "block_size" in SpectralNMF(1).get_params()
needs_engine_estimator = pytest.mark.skipif(
    not ESTIMATOR_HAS_ENGINES, reason="SpectralNMF does not take dask arrays yet")


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes: tasks really are pickled and shipped."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    cl = distributed.Client(cluster, set_as_default=False)
    try:
        yield cl
    finally:
        cl.close()
        cluster.close()


@pytest.fixture(scope="module")
def data():
    X, ivar, _ = make_toy(n=90, d=40, k=3, seed=11)
    return X, ivar


def _factors(n, d, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, k)), rng.uniform(size=(k, d))


def _in_memory_pass(X, ivar, C, T):
    Xv, iv = V.check_spectra(X, ivar)
    engine = InMemory(Xv, iv, block_rows=X.shape[0])
    return engine.run_pass(WeightedStandIn(), functools.partial(weighted_pass, T), C)


def _assert_same_pass(got, expected, C):
    parts, total = got
    ref_parts, ref_total = expected
    stacked = np.concatenate([p for _, p in parts])
    rows = [r for r, _ in parts]
    assert rows[0].start == 0 and rows[-1].stop == C.shape[0]
    assert all(a.stop == b.start for a, b in zip(rows[:-1], rows[1:])), "parts not in block order"
    # every part is that block's own rows, computed from that block's coefficients
    for r, p in parts:
        np.testing.assert_array_equal(p, C[r] * 2.0 + r.start)
    assert stacked.shape == C.shape
    np.testing.assert_allclose(total[0], ref_total[0], rtol=1e-12)
    assert total[1] == pytest.approx(ref_total[1], rel=1e-12)
    assert total[2] == C.shape[0]


def test_make_engine_sends_dask_arrays_to_the_dask_engine(data):
    X, ivar = data
    engine = make_engine(da.from_array(X, chunks=(20, -1)), da.from_array(ivar, chunks=(20, -1)),
                         dtype="float64")
    assert isinstance(engine, DaskEngine) and not engine.in_memory
    assert (engine.n_spectra, engine.n_pixels) == X.shape
    assert [r.stop - r.start for r in engine.row_slices()] == [20, 20, 20, 20, 10]


def test_pass_matches_in_memory_under_threads(data):
    X, ivar = data
    C, T = _factors(*X.shape)
    engine = DaskEngine(da.from_array(X, chunks=(13, -1)), da.from_array(ivar, chunks=(13, -1)),
                        dtype="float64")
    with dask.config.set(scheduler="threads"):
        got = engine.run_pass(WeightedStandIn(), functools.partial(weighted_pass, T), C)
    assert len(got[0]) == 7
    _assert_same_pass(got, _in_memory_pass(X, ivar, C, T), C)


def test_pass_matches_in_memory_on_a_process_cluster(data, client):
    X, ivar = data
    C, T = _factors(*X.shape)
    engine = DaskEngine(da.from_array(X, chunks=(13, -1)), da.from_array(ivar, chunks=(13, -1)),
                        dtype="float64")
    with client.as_current(), dask.config.set(scheduler="distributed"):
        got = engine.run_pass(WeightedStandIn(), functools.partial(weighted_pass, T), C)
        pids, _ = engine.run_pass(WeightedStandIn(), _pid_fn, C)
        summary = engine.scan()
    _assert_same_pass(got, _in_memory_pass(X, ivar, C, T), C)
    assert summary.n_observed == int(np.sum(ivar > 0))
    # the blocks were processed in the worker processes, not here
    assert {pid for _, pid in pids}.isdisjoint({os.getpid()})


def _pid_fn(rows, block, C_b):
    return os.getpid(), (1,)


@given(cuts=st.lists(st.integers(1, 89), unique=True, max_size=12),
       split_every=st.integers(2, 5))
def test_chunk_sizes_and_tree_shape_do_not_change_the_answer(data, cuts, split_every):
    X, ivar = data
    C, T = _factors(*X.shape, seed=3)
    bounds = [0, *sorted(cuts), X.shape[0]]
    chunks = (tuple(np.diff(bounds)), (X.shape[1],))
    engine = DaskEngine(da.from_array(X, chunks=chunks), da.from_array(ivar, chunks=chunks),
                        dtype="float64", split_every=split_every)
    with dask.config.set(scheduler="sync"):
        got = engine.run_pass(WeightedStandIn(), functools.partial(weighted_pass, T), C)
    assert len(got[0]) == len(bounds) - 1
    _assert_same_pass(got, _in_memory_pass(X, ivar, C, T), C)


def test_scan_validates_and_summarises_like_check_spectra(data):
    X, ivar = data
    X = X.copy()
    ivar = ivar.copy()
    ivar[5] = 0.0          # an empty spectrum
    ivar[:, 7] = 0.0       # an empty pixel
    X[ivar == 0] = np.inf  # non-finite flux is fine where unobserved
    engine = DaskEngine(da.from_array(X, chunks=(16, 10)), da.from_array(ivar, chunks=(16, 10)),
                        dtype="float64", split_every=2)
    s = engine.scan()
    Xv, iv = V.check_spectra(X, ivar)
    ref = InMemory(Xv, iv).scan()
    assert s.n_observed == ref.n_observed == int(np.sum(ivar > 0))
    assert s.sum_ivar == pytest.approx(ref.sum_ivar, rel=1e-12)
    assert s.weighted_sum_X == pytest.approx(ref.weighted_sum_X, rel=1e-12)
    assert s.sum_abs == pytest.approx(ref.sum_abs, rel=1e-12)
    assert s.min_observed == ref.min_observed
    np.testing.assert_array_equal(s.empty_spectra, np.arange(X.shape[0]) == 5)
    np.testing.assert_array_equal(s.empty_pixels, np.arange(X.shape[1]) == 7)
    assert s.ivar_scale == pytest.approx(ref.ivar_scale, rel=1e-12)


def test_bad_chunk_is_reported_with_its_spectra(data):
    X, ivar = data
    ivar = ivar.copy()
    ivar[47, 3] = -1.0
    engine = DaskEngine(da.from_array(X, chunks=(15, -1)), da.from_array(ivar, chunks=(15, -1)),
                        dtype="float64")
    with pytest.raises(ValueError, match=r"spectra 45\.\.59: ivar must be >= 0"):
        engine.scan()
    Xbad = np.where(ivar > 0, X, 0.0)
    Xbad[10, 0] = np.nan
    engine = DaskEngine(da.from_array(Xbad, chunks=(15, -1)), None, dtype="float64")
    with pytest.raises(ValueError, match=r"spectra 0\.\.14: X has 1 NaN/inf"):
        engine.scan()


def test_pixel_chunks_are_merged_with_a_note(data, caplog):
    X, ivar = data
    with caplog.at_level(logging.INFO, logger="specnmf"):
        engine = DaskEngine(da.from_array(X, chunks=(30, 7)), da.from_array(ivar, chunks=(30, 9)),
                            dtype="float64")
    assert engine.X.chunks[1] == (X.shape[1],) and engine.ivar.chunks == engine.X.chunks
    assert any("chunked along pixels" in r.getMessage() for r in caplog.records)


def test_block_rows_rechunks_and_unit_weights(data):
    X, _ = data
    X = np.where(np.isfinite(X), X, 0.0)
    C, T = _factors(*X.shape)
    engine = DaskEngine(da.from_array(X, chunks=(90, 40)), None, dtype="float32", block_rows=25)
    assert [r.stop - r.start for r in engine.row_slices()] == [25, 25, 25, 15]
    engine.block_rows = 90  # e.g. a penalty that needs all spectra in one block
    assert engine.row_slices() == [slice(0, 90)] and engine.X.numblocks == (1, 1)
    blocks = list(engine.blocks())
    assert all(xb.dtype == np.float32 and np.all(ib == 1) for _, xb, ib in blocks)
    np.testing.assert_array_equal(np.concatenate([xb for _, xb, _ in blocks]), X.astype(np.float32))


def test_blocks_arrive_in_the_working_namespace(data):
    xps = pytest.importorskip("array_api_strict")
    X, ivar = data
    seen = []

    class Recorder(WeightedStandIn):
        def prepare_block(self, X_b, ivar_b):
            seen.append(type(X_b))
            return super().prepare_block(X_b, ivar_b)

    C, T = _factors(*X.shape)
    engine = DaskEngine(da.from_array(X, chunks=(30, -1)), da.from_array(ivar, chunks=(30, -1)),
                        dtype="float64", xp=xps)
    fn = functools.partial(_namespace_fn, xps.asarray(T))
    with dask.config.set(scheduler="sync"):
        parts, total = engine.run_pass(Recorder(), fn, xps.asarray(C))
    assert seen and all(t is type(xps.asarray(0.0)) for t in seen)
    assert total[0] == pytest.approx(_in_memory_pass(X, ivar, C, T)[1][1], rel=1e-12)


def _namespace_fn(T, rows, block, C_b):
    import array_api_strict as xps

    X, ivar, _ = block
    resid = X - C_b @ T
    return C_b, (float(xps.sum(ivar * resid * resid)),)


def test_bad_arguments(data):
    X, ivar = data
    with pytest.raises(ValueError, match="2-D"):
        DaskEngine(da.ones((4, 5, 6)), None, dtype="float64")
    with pytest.raises(ValueError, match="ivar must have the shape of X"):
        DaskEngine(da.from_array(X), da.from_array(ivar[:-1]), dtype="float64")
    with pytest.raises(ValueError, match="split_every"):
        DaskEngine(da.from_array(X), None, dtype="float64", split_every=1)
    unknown = da.from_array(X)[da.from_array(X[:, 0]) > -np.inf]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        DaskEngine(unknown, None, dtype="float64")


# -- end to end: fits of dask arrays equal in-memory fits -----------------------------------
def _same_start(X, k=3, seed=2):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, size=(X.shape[0], k)), rng.uniform(0.1, 1.0, size=(k, X.shape[1]))


def _fit_pair(solver, X, ivar, Xd, ivard, max_iter=15):
    if solver not in SOLVERS:
        pytest.skip(f"solver {solver!r} not available yet")
    C0, T0 = _same_start(X)
    params = dict(solver=solver, max_iter=max_iter, tol=0, random_state=0)
    ref = SpectralNMF(3, **params).fit(X, ivar=ivar, templates=T0, coefficients=C0)
    got = SpectralNMF(3, **params).fit(Xd, ivar=ivard, templates=T0, coefficients=C0)
    return ref, got


@needs_engine_estimator
@pytest.mark.parametrize("solver", ["nearly", "anls", "apg"])
def test_fit_of_dask_arrays_equals_in_memory_fit_threaded(data, solver):
    X, ivar = data
    Xd, ivard = da.from_array(X, chunks=(25, 20)), da.from_array(ivar, chunks=(25, 20))
    with dask.config.set(scheduler="threads"):
        ref, got = _fit_pair(solver, X, ivar, Xd, ivard)
    assert got.n_iter_ == ref.n_iter_ == 15
    np.testing.assert_allclose(got.chi2_, ref.chi2_, rtol=1e-6)
    assert chi2(X, got.coefficients_, got.templates_, ivar=ivar) == pytest.approx(
        chi2(X, ref.coefficients_, ref.templates_, ivar=ivar), rel=1e-6)


@needs_engine_estimator
@pytest.mark.slow
@pytest.mark.parametrize("solver", ["nearly", "anls", "apg"])
def test_fit_of_dask_arrays_equals_in_memory_fit_on_a_cluster(data, client, solver):
    X, ivar = data
    Xd, ivard = da.from_array(X, chunks=(25, -1)), da.from_array(ivar, chunks=(25, -1))
    with client.as_current(), dask.config.set(scheduler="distributed"):
        # each iteration is a round trip to the cluster: keep them few
        ref, got = _fit_pair(solver, X, ivar, Xd, ivard, max_iter=6)
    assert got.n_iter_ == 6
    np.testing.assert_allclose(got.chi2_, ref.chi2_, rtol=1e-6)
    assert chi2(X, got.coefficients_, got.templates_, ivar=ivar) == pytest.approx(
        chi2(X, ref.coefficients_, ref.templates_, ivar=ivar), rel=1e-6)
