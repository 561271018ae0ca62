"""Span-packed files: the dense source exactly, validated once, fitted bit for bit as streamed."""

import hashlib
import warnings

import numpy as np
import pytest

from specnmf import SpectralNMF, _kernels, cli
from specnmf import _validation as V
from specnmf._packed import PackedSpectra
from specnmf.engine import Packed, Streamed, make_engine
from specnmf.io import open_packed, pack_spectra, read_spectra

from .conftest import make_toy

h5py = pytest.importorskip("h5py")

N, D, K = 45, 36, 3


def windowed(n=N, d=D, seed=0, dtype=np.float64):
    """make_toy's spectra seen through one window each (flux NaN outside), with pixels
    of ivar 0 inside the windows, one spectrum seen nowhere and one seen everywhere."""
    X, ivar, _ = make_toy(n=n, d=d, k=K, missing=0.1, seed=seed)
    rng = np.random.default_rng(seed)
    length = rng.integers(d // 4, d, size=n)
    start = rng.integers(0, d - length + 1)
    j = np.arange(d)
    outside = (j < start[:, None]) | (j >= (start + length)[:, None])
    outside[3] = True
    outside[5] = False
    ivar[outside] = 0.0
    X[outside] = np.nan
    return X.astype(dtype), ivar.astype(dtype)


def dense_of(X, ivar, dtype=None):
    """What the packed file must give back: validated arrays, flux 0 where ivar == 0."""
    Xv, iv = V.check_spectra(X, ivar, dtype=dtype)
    return np.where(iv > 0, Xv, 0).astype(Xv.dtype), iv


@pytest.fixture
def source(tmp_path):
    X, ivar = windowed()
    path = tmp_path / "dense.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("flux", data=X, chunks=(8, D))
        f.create_dataset("ivar", data=ivar, chunks=(8, D))
        f["wavelength"] = np.linspace(1000.0, 2000.0, D)
    return path, X, ivar


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_is_the_dense_source_exactly(tmp_path, dtype):
    X, ivar = windowed(dtype=dtype)
    X0, ivar0 = X.copy(), ivar.copy()
    info = pack_spectra(X, ivar, tmp_path / "p.h5", block_rows=7,
                        metadata={"wavelength": np.arange(D, dtype=float)})
    np.testing.assert_array_equal(X, X0)       # NaN where NaN: nothing was written into them
    np.testing.assert_array_equal(ivar, ivar0)
    Xd, ivd = dense_of(X, ivar)
    observed = ivar > 0
    with open_packed(tmp_path / "p.h5", verify=True) as packed:
        assert packed.shape == (N, D) and packed.dtype == dtype and info["dtype"] == np.dtype(dtype).name
        X_back, iv_back = packed[:], packed.ivar[:]
        assert X_back.dtype == dtype and iv_back.dtype == dtype
        np.testing.assert_array_equal(X_back, Xd)
        np.testing.assert_array_equal(iv_back, ivd)
        lo, hi = packed.spans()
        seen = observed.any(axis=1)
        np.testing.assert_array_equal(lo, np.where(seen, observed.argmax(axis=1), 0))
        np.testing.assert_array_equal(hi, np.where(seen, D - observed[:, ::-1].argmax(axis=1), 0))
        assert info["packed_values"] == int((hi - lo).sum()) < N * D
        # only the spans are stored: with zeros inside them (ivar == 0 pixels) kept
        assert packed.offsets[-1] == info["packed_values"]
        np.testing.assert_array_equal(packed.metadata["wavelength"], np.arange(D))
        # every way of slicing rows reads the same rows
        for key in (4, -2, slice(3, 30, 4), np.array([7, 1, 7]), observed.any(axis=1)):
            np.testing.assert_array_equal(packed[key], Xd[key])
            np.testing.assert_array_equal(packed.ivar[key], ivd[key])
        np.testing.assert_array_equal(np.asarray(packed), Xd)


def test_unit_weights_and_precision_chosen_at_pack_time(tmp_path):
    X = np.abs(make_toy(n=10, d=8, seed=1)[2])
    pack_spectra(X, None, tmp_path / "p.h5", dtype="float32")
    with open_packed(tmp_path / "p.h5") as packed:
        assert packed.dtype == np.float32
        np.testing.assert_array_equal(packed.ivar[:], np.ones((10, 8), np.float32))
        np.testing.assert_array_equal(packed[:], X.astype(np.float32))


@pytest.mark.parametrize("block_rows", [None, 1, 7, N])
def test_stored_summary_is_what_a_validating_pass_finds(tmp_path, block_rows):
    X, ivar = windowed()
    pack_spectra(X, ivar, tmp_path / "p.h5", block_rows=5)
    with open_packed(tmp_path / "p.h5") as packed:
        got = Packed(packed, dtype=np.float64, block_rows=block_rows).scan()
    want = Streamed(X, ivar, dtype=np.float64, block_rows=block_rows).scan()
    for field in ("sum_ivar", "n_observed", "weighted_sum_X", "sum_abs", "min_observed"):
        assert getattr(got, field) == getattr(want, field), field
    np.testing.assert_array_equal(got.empty_spectra, want.empty_spectra)
    np.testing.assert_array_equal(got.empty_pixels, want.empty_pixels)


@pytest.mark.parametrize("solver", ["nearly", "shift", "clip", "anls", "apg"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fit_and_transform_are_bit_identical_to_the_streamed_dense_file(source, tmp_path,
                                                                        solver, dtype):
    path, X, ivar = source
    pack_spectra(X, ivar, tmp_path / "p.h5")
    params = dict(solver=solver, max_iter=4, tol=0, random_state=0, dtype=dtype, block_size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the spectrum seen nowhere
        with open_packed(tmp_path / "p.h5") as packed, h5py.File(path, "r") as f:
            assert type(make_engine(packed, dtype=dtype)) is Packed
            a = SpectralNMF(K, **params).fit(packed)
            b = SpectralNMF(K, **params).fit(f["flux"], ivar=f["ivar"])
            np.testing.assert_array_equal(a.transform(packed), b.transform(f["flux"], ivar=f["ivar"]))
        c = SpectralNMF(K, **params).fit(X, ivar=ivar)
    np.testing.assert_array_equal(a.templates_, b.templates_)
    np.testing.assert_array_equal(a.coefficients_, b.coefficients_)
    np.testing.assert_array_equal(a.chi2_, b.chi2_)
    # in memory the blocks differ (coverage-sorted crops): equal up to rounding
    tol = 1e-3 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(a.chi2_[:2], c.chi2_[:2], rtol=tol)


def test_packed_file_holds_its_own_ivar(tmp_path):
    X, ivar = windowed()
    pack_spectra(X, ivar, tmp_path / "p.h5")
    with open_packed(tmp_path / "p.h5") as packed, pytest.raises(ValueError, match="own ivar"):
        SpectralNMF(K).fit(packed, ivar=ivar)


def test_read_spectra_memmap_returns_the_packed_reader(tmp_path):
    X, ivar = windowed()
    pack_spectra(X, ivar, tmp_path / "p.h5", metadata={"wavelength": np.linspace(1, 2, D)})
    lazy = read_spectra(tmp_path / "p.h5", memmap=True)
    assert lazy.ivar is None and lazy.flux.shape == (N, D)
    np.testing.assert_array_equal(lazy.wavelength, np.linspace(1, 2, D))
    lazy.flux.close()
    eager = read_spectra(tmp_path / "p.h5")
    Xd, ivd = dense_of(X, ivar)
    np.testing.assert_array_equal(eager.flux, Xd)
    np.testing.assert_array_equal(eager.ivar, ivd)


@pytest.mark.parametrize("change, message", [
    (lambda X, ivar: ivar.__setitem__((9, 20), -1.0), r"spectra 7\.\.13: .*negative"),
    (lambda X, ivar: (X.__setitem__((30, 5), np.nan), ivar.__setitem__((30, 5), 1.0)),
     r"spectra 28\.\.34: X has 1 NaN/inf"),
    (lambda X, ivar: ivar.__setitem__((40, 1), np.inf), r"spectra 35\.\.41: .*ivar"),
])
def test_bad_input_is_refused_at_pack_time_naming_the_spectra(tmp_path, change, message):
    X, ivar = windowed()
    change(X, ivar)
    with pytest.raises(ValueError, match=message):
        pack_spectra(X, ivar, tmp_path / "p.h5", block_rows=7)
    assert list(tmp_path.iterdir()) == []   # no file, not even a partial one


def test_bad_shapes_are_refused(tmp_path):
    X, ivar = windowed()
    with pytest.raises(ValueError, match="shape of flux"):
        pack_spectra(X, ivar[:, :-1], tmp_path / "p.h5")
    with pytest.raises(ValueError, match="2-D"):
        pack_spectra(X[0], None, tmp_path / "p.h5")
    pack_spectra(X, ivar, tmp_path / "p.h5")
    with pytest.raises(FileExistsError):
        pack_spectra(X, ivar, tmp_path / "p.h5")


def test_a_modified_file_is_detected_when_verified(tmp_path):
    X, ivar = windowed()
    path = tmp_path / "p.h5"
    pack_spectra(X, ivar, path)
    open_packed(path, verify=True).close()
    with h5py.File(path, "r+") as f:
        f["ivar"][10] = -5.0          # what validation would have refused
    with open_packed(path) as packed:
        # not re-validated on open or on a pass: verify is asked for
        assert packed.ivar[:].min() == -5.0
        with pytest.raises(ValueError, match="checksum mismatch in ivar"):
            packed.verify()
    with pytest.raises(ValueError, match="checksum mismatch"):
        open_packed(path, verify=True)
    with h5py.File(path, "r+") as f:
        f["offsets"][3] = f["offsets"][4] + 1   # structure: found on every open
    with pytest.raises(ValueError, match="inconsistent packed layout"):
        open_packed(path)


def test_not_a_packed_file(source):
    with pytest.raises(ValueError, match="not a packed spectra file"):
        open_packed(source[0])


def test_cli_pack_writes_refuses_overwrite_and_verifies(source, tmp_path, capsys):
    path, X, ivar = source
    before = _sha(path)
    out = tmp_path / "p.h5"
    assert cli.main(["pack", str(path), str(out), "--block-rows", "9"]) == 0
    text = capsys.readouterr().out
    assert "packed file:" in text and "dense flux+ivar:" in text
    assert _sha(path) == before                   # the source is only read
    Xd, ivd = dense_of(X, ivar)
    with open_packed(out, verify=True) as packed:
        np.testing.assert_array_equal(packed[:], Xd)
        np.testing.assert_array_equal(packed.ivar[:], ivd)
        np.testing.assert_array_equal(packed.metadata["wavelength"], np.linspace(1000, 2000, D))
    packed_sha = _sha(out)
    assert cli.main(["pack", str(path), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _sha(out) == packed_sha
    assert cli.main(["pack", str(path), str(out), "--overwrite", "--flux", "flux",
                     "--ivar", "ivar", "--verify"]) == 0
    assert "checksums verified" in capsys.readouterr().out
    assert cli.main(["pack", "--verify", str(out)]) == 0
    assert "checksums:        ok" in capsys.readouterr().out
    with h5py.File(out, "r+") as f:
        f["flux"][0] += 1.0
    assert cli.main(["pack", "--verify", str(out)]) == 2
    assert "checksum mismatch in flux" in capsys.readouterr().err
    assert cli.main(["pack", str(path), str(tmp_path / "q.h5"), "--flux", "nope"]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err


def test_cli_fit_of_a_packed_file_streams_it(source, tmp_path):
    path = source[0]
    out = tmp_path / "p.h5"
    assert cli.main(["pack", str(path), str(out)]) == 0
    assert cli.main(["fit", str(out), "--memmap", "-k", "2", "--max-iter", "3",
                     "-o", str(tmp_path / "m.npz")]) == 0
    assert (tmp_path / "m.npz").exists()


def test_spans_are_those_of_the_working_precision(tmp_path):
    X, ivar = windowed()
    lo = int(np.argmax(ivar[0] > 0))
    ivar[0, lo] = 1e-50                       # observed in float64, 0 in float32
    pack_spectra(X, ivar, tmp_path / "p.h5", dtype="float32")
    Xd, ivd = dense_of(X, ivar, dtype="float32")
    with open_packed(tmp_path / "p.h5") as packed:
        assert packed.spans(slice(0, 1))[0][0] > lo
        np.testing.assert_array_equal(packed[:], Xd)
        np.testing.assert_array_equal(packed.ivar[:], ivd)


@pytest.mark.skipif(not _kernels.available(), reason="numba not installed")
@pytest.mark.parametrize("solver", ["nearly", "shift"])
def test_multiplicative_passes_read_the_spans_where_they_lie(tmp_path, monkeypatch, solver):
    """The compiled multiplicative kernel reads a packed block's spans as they are
    stored: no pass of the fit makes a dense block, not even the final stationarity
    check's (a compiled gradient pass), and the result is the one of dense blocks
    (the test above)."""
    from specnmf.solvers import forms

    X, ivar = windowed()
    pack_spectra(X, ivar, tmp_path / "p.h5")
    dense = []
    monkeypatch.setattr(Packed, "_reused_block",
                        lambda self, rows, real=Packed._reused_block: dense.append(rows) or real(self, rows))
    monkeypatch.setattr(forms, "dense_rows",
                        lambda block, d, real=forms.dense_rows: dense.append(d) or real(block, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_packed(tmp_path / "p.h5") as packed:
            model = SpectralNMF(K, solver=solver, max_iter=3, tol=0, random_state=0,
                                block_size=7).fit(packed)
    assert dense == [] and np.all(np.isfinite(model.chi2_)) and np.isfinite(model.stationarity_)


@pytest.mark.skipif(not _kernels.available(), reason="numba not installed")
@pytest.mark.parametrize("dtype, mapped", [("float64", True), ("float32", False)])
def test_blocks_are_read_in_the_memory_map_in_the_files_precision(tmp_path, monkeypatch, dtype, mapped):
    """In the file's precision every block but the first (which has fewer than
    n_pixels values before it) reaches the kernel as views of the memory map:
    nothing copied, its pages released once used; in another precision each
    block is copied (converted).  The fit is the same either way."""
    X, ivar = windowed()
    pack_spectra(X, ivar, tmp_path / "p.h5")              # float64
    copied, released = [], []
    for name, log in (("read_packed_into", copied), ("release", released)):
        real = getattr(PackedSpectra, name)
        monkeypatch.setattr(PackedSpectra, name, lambda self, rows, *a, real=real, log=log:
                            log.append(rows.start) or real(self, rows, *a))
    fit = dict(n_components=K, solver="nearly", max_iter=3, tol=0, random_state=0, block_size=7,
               dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_packed(tmp_path / "p.h5") as packed:
            model = SpectralNMF(**fit).fit(packed)
        reference = SpectralNMF(**fit).fit(X, ivar=ivar)
    starts = set(range(0, N, 7))
    assert set(released) == starts                         # every block's pages, once used
    assert set(copied) == ({0} if mapped else starts)
    np.testing.assert_array_equal(model.templates_, reference.templates_)
    np.testing.assert_array_equal(model.chi2_, reference.chi2_)
