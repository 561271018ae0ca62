"""Streaming from disk: memmap, HDF5, zarr and FITS give the in-memory answer, block
by block, without loading the data and without touching the caller's files."""

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest

from specnmf import SpectralNMF, chi2
from specnmf import _validation as V
from specnmf.engine import InMemory, Streamed, make_engine
from specnmf.solvers import MULTIPLICATIVE, SOLVERS

from .conftest import WeightedStandIn, make_toy, weighted_pass

ESTIMATOR_HAS_ENGINES = "block_size" in SpectralNMF(1).get_params()
needs_engine_estimator = pytest.mark.skipif(
    not ESTIMATOR_HAS_ENGINES, reason="SpectralNMF has no block_size (streaming) yet")

N, D, K = 60, 40, 3
FORMATS = ["npy", "hdf5", "zarr", "fits"]


def _digest(path):
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _write(fmt, directory, X, ivar):
    """Write X and ivar in format ``fmt``; return the file paths."""
    if fmt == "npy":
        paths = [directory / "X.npy", directory / "ivar.npy"]
        np.save(paths[0], X)
        np.save(paths[1], ivar)
    elif fmt == "hdf5":
        h5py = pytest.importorskip("h5py")
        paths = [directory / "spectra.h5"]
        with h5py.File(paths[0], "w") as f:
            f.create_dataset("flux", data=X, chunks=(8, X.shape[1]))
            f.create_dataset("ivar", data=ivar, chunks=(8, X.shape[1]))
    elif fmt == "zarr":
        zarr = pytest.importorskip("zarr")
        paths = [directory / "flux.zarr", directory / "ivar.zarr"]
        for p, a in zip(paths, (X, ivar)):
            z = zarr.create_array(store=str(p), shape=a.shape, dtype=a.dtype, chunks=(9, a.shape[1]))
            z[...] = a
    elif fmt == "fits":
        fits = pytest.importorskip("astropy.io.fits")
        paths = [directory / "spectra.fits"]
        fits.HDUList([fits.PrimaryHDU(X), fits.ImageHDU(ivar, name="IVAR")]).writeto(paths[0])
    return paths


class _Opened:
    """Open the files of one format lazily; closes what it opened."""

    def __init__(self, fmt, paths):
        self.fmt, self.paths, self._close = fmt, paths, []

    def __enter__(self):
        if self.fmt == "npy":
            return tuple(np.load(p, mmap_mode="r") for p in self.paths)
        if self.fmt == "hdf5":
            import h5py

            f = h5py.File(self.paths[0], "r")
            self._close.append(f)
            return f["flux"], f["ivar"]
        if self.fmt == "zarr":
            import zarr

            return tuple(zarr.open_array(str(p), mode="r") for p in self.paths)
        from astropy.io import fits

        hdul = fits.open(self.paths[0], memmap=True, mode="readonly")
        self._close.append(hdul)
        return hdul[0].data, hdul["IVAR"].data

    def __exit__(self, *exc):
        for f in self._close:
            f.close()


@pytest.fixture(scope="module")
def toy():
    X, ivar, _ = make_toy(n=N, d=D, k=K, seed=21)
    return X, ivar


@pytest.fixture(scope="module")
def files(toy, tmp_path_factory):
    """Each format on disk once, with digests to prove the files are left alone."""
    X, ivar = toy
    out = {}
    for fmt in FORMATS:
        directory = tmp_path_factory.mktemp(fmt)
        try:
            paths = _write(fmt, directory, X, ivar)
        except pytest.skip.Exception:
            continue
        out[fmt] = (paths, [_digest(p) for p in paths])
    yield out
    for fmt, (paths, digests) in out.items():
        assert [_digest(p) for p in paths] == digests, f"the {fmt} files were modified"


def _opened(files, fmt):
    if fmt not in files:
        pytest.skip(f"no writer for {fmt}")
    return _Opened(fmt, files[fmt][0])


# -- the engine: streamed, validated, same statistics ----------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_disk_arrays_are_streamed_not_loaded(files, fmt):
    with _opened(files, fmt) as (X, ivar):
        engine = make_engine(X, ivar, block_size=7, dtype="float64")
        assert isinstance(engine, Streamed), f"{fmt} data were loaded into memory"
        assert engine.X is X and engine.ivar is ivar and not engine.in_memory
        assert [r.stop - r.start for r in engine.row_slices()] == [7] * 8 + [4]


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_pass_and_scan_equal_in_memory(files, toy, fmt):
    X, ivar = toy
    Xv, iv = V.check_spectra(X, ivar)
    rng = np.random.default_rng(1)
    C, T = rng.uniform(size=(N, K)), rng.uniform(size=(K, D))
    fn = functools.partial(weighted_pass, T)
    ref_parts, ref_total = InMemory(Xv, iv, block_rows=N).run_pass(WeightedStandIn(), fn, C)
    ref_scan = InMemory(Xv, iv).scan()
    with _opened(files, fmt) as (Xd, ivd):
        engine = Streamed(Xd, ivd, dtype="float64", block_rows=11)
        parts, total = engine.run_pass(WeightedStandIn(), fn, C)
        summary = engine.scan()
        blocks = list(engine.blocks())
    assert len(parts) == 6 and len(ref_parts) == 1
    for rows, part in parts:
        np.testing.assert_array_equal(part, 2.0 * C[rows] + rows.start)
    np.testing.assert_allclose(total[0], ref_total[0], rtol=1e-12)
    assert total[1] == pytest.approx(ref_total[1], rel=1e-12)
    # validated blocks: NaN flux at ivar == 0 became 0, exactly as check_spectra does
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in blocks]), Xv)
    np.testing.assert_array_equal(np.concatenate([i for _, _, i in blocks]), iv)
    assert summary.n_observed == ref_scan.n_observed
    assert summary.min_observed == ref_scan.min_observed
    assert summary.sum_ivar == pytest.approx(ref_scan.sum_ivar, rel=1e-12)
    np.testing.assert_array_equal(summary.empty_spectra, ref_scan.empty_spectra)


def test_bad_block_on_disk_names_its_spectra(tmp_path, toy):
    X, ivar = toy
    ivar = ivar.copy()
    ivar[30, 2] = np.inf
    np.save(tmp_path / "ivar.npy", ivar)
    engine = make_engine(np.where(ivar > 0, X, 0.0), np.load(tmp_path / "ivar.npy", mmap_mode="r"),
                         block_size=10, dtype="float64")
    with pytest.raises(ValueError, match=r"spectra 30\.\.39: ivar contains NaN or inf"):
        engine.scan()


# -- fits: same answer as in memory, whatever the blocks ---------------------------------------
def _start(seed=4):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, size=(N, K)), rng.uniform(0.1, 1.0, size=(K, D))


def _fit(X, ivar, solver, block_size=None, start=None, **params):
    if solver not in SOLVERS:
        pytest.skip(f"solver {solver!r} not available yet")
    C0, T0 = _start() if start is None else start
    model = SpectralNMF(K, solver=solver, max_iter=15, tol=0, block_size=block_size, **params)
    return model.fit(X, ivar=ivar, templates=T0, coefficients=C0)


@needs_engine_estimator
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("solver", ["nearly", "shift", "anls", "apg"])
def test_streamed_fit_equals_in_memory_fit(files, toy, fmt, solver):
    X, ivar = toy
    ref = _fit(X, ivar, solver)
    with _opened(files, fmt) as (Xd, ivd):
        one_block = _fit(Xd, ivd, solver, block_size=N)
        many_blocks = _fit(Xd, ivd, solver, block_size=7)
    # one block: the same arithmetic, up to rounding
    np.testing.assert_allclose(one_block.chi2_, ref.chi2_, rtol=1e-12)
    np.testing.assert_allclose(one_block.templates_, ref.templates_, rtol=1e-9, atol=1e-12)
    # many blocks: only the summation order of the statistics differs
    rtol = 1e-10 if solver in MULTIPLICATIVE else 1e-7
    np.testing.assert_allclose(many_blocks.chi2_, ref.chi2_, rtol=rtol)
    assert chi2(X, many_blocks.coefficients_, many_blocks.templates_, ivar=ivar) == pytest.approx(
        ref.chi2_[-1], rel=rtol)


@needs_engine_estimator
@pytest.mark.parametrize("solver", ["nearly", "shift"])
def test_block_size_and_order_do_not_change_the_answer(tmp_path, toy, solver):
    h5py = pytest.importorskip("h5py")
    X, ivar = toy
    ref = _fit(X, ivar, solver)
    perm = np.random.default_rng(8).permutation(N)
    with h5py.File(tmp_path / "perm.h5", "w") as f:
        f["flux"], f["ivar"] = X[perm], ivar[perm]
    with h5py.File(tmp_path / "perm.h5", "r") as f:
        for block_size in (1, 5, 13, N + 5):
            C0, T0 = _start()
            got = _fit(f["flux"], f["ivar"], solver, block_size=block_size, start=(C0[perm], T0))
            np.testing.assert_allclose(got.chi2_, ref.chi2_, rtol=1e-10)
            np.testing.assert_allclose(got.templates_, ref.templates_, rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(got.coefficients_, ref.coefficients_[perm], rtol=1e-8,
                                       atol=1e-12)


@needs_engine_estimator
def test_read_only_memmap_fit_leaves_the_file_alone(tmp_path, toy):
    X, ivar = toy
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "ivar.npy", ivar)
    before = [_digest(tmp_path / "X.npy"), _digest(tmp_path / "ivar.npy")]
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    im = np.load(tmp_path / "ivar.npy", mmap_mode="r")
    model = _fit(Xm, im, "nearly", block_size=9, dtype="float32")
    assert model.templates_.dtype == np.float32 and np.all(np.isfinite(model.templates_))
    assert np.isnan(Xm).any()  # the NaN at ivar == 0 are still there, on disk
    assert [_digest(tmp_path / "X.npy"), _digest(tmp_path / "ivar.npy")] == before
