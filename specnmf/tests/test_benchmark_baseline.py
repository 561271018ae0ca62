"""The benchmark's baseline is the published algorithm, and its data are what the README says.

``benchmarks/`` sits at the repository root (it is not shipped with the
package), so these tests are skipped when it is absent.  No timing here.
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / "benchmarks" / "baseline.py").is_file():
    pytest.skip("benchmarks/ is not part of this installation", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from benchmarks.baseline import nearly_baseline, shift_baseline  # noqa: E402
from benchmarks.data import simulate_spectra, start_factors  # noqa: E402

from specnmf import SpectralNMF  # noqa: E402
from specnmf.datasets import load_doublet  # noqa: E402

DATA = Path(__file__).parent / "data"


def _load(name):
    return np.load(DATA / f"{name}.npy", allow_pickle=False)


@pytest.mark.parametrize("name, baseline", [("nearly", nearly_baseline),
                                            ("shift", shift_baseline)])
def test_baseline_reproduces_published_doublet_outputs(name, baseline):
    # the published code's own regression test: 300 iterations from W = 1, H_start
    X, ivar = load_doublet()
    W, H = baseline(X.T, ivar.T, _load("W_start"), _load("H_start"), 300)
    assert np.allclose(W, _load(f"W_{name}_truth"))
    assert np.allclose(H, _load(f"H_{name}_truth"))


def test_nearly_baseline_reaches_the_published_exact_zeros():
    # the 308 exact zeros of the published templates come from the NaN -> 1e-6 rule
    X, ivar = load_doublet()
    W, _ = nearly_baseline(X.T, ivar.T, _load("W_start"), _load("H_start"), 300)
    assert np.sum(W == 0) == 308


def test_baseline_does_not_modify_its_inputs_or_warn():
    X, ivar = load_doublet()
    W0, H0 = _load("W_start"), _load("H_start")
    copies = [a.copy() for a in (X, ivar, W0, H0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nearly_baseline(X.T, ivar.T, W0, H0, 3)
        shift_baseline(X.T, ivar.T, W0, H0, 3)
    for before, after in zip(copies, (X, ivar, W0, H0)):
        assert np.array_equal(before, after)


def test_zero_denominator_gives_published_placeholder():
    # a spectrum without weight: its coefficients are 0/0 -> 1e-6, never NaN
    X, ivar = simulate_spectra(12, 40, 2, random_state=3)
    ivar[0] = 0.0
    C0, T0 = start_factors(12, 40, 2)
    W, H = nearly_baseline(X.T, ivar.T, T0.T, C0.T, 2)
    assert np.all(np.isfinite(W)) and np.all(np.isfinite(H))
    assert np.all(H[:, 0] == 1e-6)


def test_baseline_rejects_mismatched_shapes():
    X, ivar = simulate_spectra(10, 30, 2)
    C0, T0 = start_factors(10, 30, 2)
    with pytest.raises(ValueError, match="W must have shape"):
        nearly_baseline(X.T, ivar.T, T0, C0.T, 1)
    with pytest.raises(ValueError, match="H must have shape"):
        nearly_baseline(X.T, ivar.T, T0.T, C0, 1)


@given(n=st.integers(4, 30), d=st.integers(8, 40), q=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_specnmf_nearly_follows_the_baseline_iterates(n, d, q, seed):
    # the benchmark compares like with like: same data, same start, same iterates
    X, ivar = simulate_spectra(n, d, q, random_state=seed)
    C0, T0 = start_factors(n, d, q, random_state=seed + 1)
    W, H = nearly_baseline(X.T, ivar.T, T0.T, C0.T, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # e.g. unobserved pixels
        model = SpectralNMF(q, max_iter=5, tol=0).fit(X, ivar=ivar, templates=T0, coefficients=C0)
    # pixels/spectra without any weight are set to 0 by the estimator, 1e-6 by the baseline
    seen_pixels = (ivar > 0).any(axis=0)
    seen_spectra = (ivar > 0).any(axis=1)
    np.testing.assert_allclose(model.templates_[:, seen_pixels], W.T[:, seen_pixels],
                               rtol=1e-9, atol=1e-12 * np.abs(W).max())
    np.testing.assert_allclose(model.coefficients_[seen_spectra], H.T[seen_spectra],
                               rtol=1e-9, atol=1e-12 * np.abs(H).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_simulated_spectra_are_masked_and_signed_as_documented(dtype):
    X, ivar, C, T = simulate_spectra(300, 500, 4, dtype=dtype, random_state=7,
                                     return_truth=True)
    observed = ivar > 0
    assert X.dtype == ivar.dtype == np.dtype(dtype)
    assert abs((~observed).mean() - 0.6) < 0.03
    assert abs((X[observed] < 0).mean() - 0.1) < 0.02
    assert np.all(X[~observed] == 0) and np.all(np.isfinite(X))
    # one contiguous coverage window per spectrum (bad pixels aside), every pixel seen
    assert observed.any(axis=0).all() and observed.any(axis=1).all()
    first = observed.argmax(axis=1)
    last = observed.shape[1] - 1 - observed[:, ::-1].argmax(axis=1)
    span = (last - first + 1) / observed.shape[1]
    assert np.all(observed.sum(axis=1) / observed.shape[1] >= 0.9 * span)
    assert np.all(C >= 0) and np.all(T >= 0) and T.shape == (4, 500)


def test_simulated_spectra_are_seeded():
    a = simulate_spectra(50, 80, 3, random_state=5)
    b = simulate_spectra(50, 80, 3, random_state=5)
    c = simulate_spectra(50, 80, 3, random_state=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_partial_benchmark_run_leaves_the_full_results_alone(tmp_path, capsys):
    # a smoke run of one case: the harness works end to end and writes
    # results.partial.*, not the committed full results.*
    from benchmarks.run import main

    assert main(["--smoke", "--cases", "transform", "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.partial.json",
                                                           "results.partial.md"]
    table = (tmp_path / "results.partial.md").read_text()
    assert "SpectralNMF.transform" in table and "scipy.optimize.nnls loop" in table
    # the harness reports a failed measurement instead of stopping: none may fail
    results = json.loads((tmp_path / "results.partial.json").read_text())["transform"]
    outcomes = [results["loop"], *results["specnmf"].values()]
    assert all(r["ok"] for r in outcomes), [r.get("error") for r in outcomes]
    assert table in capsys.readouterr().out


def test_streaming_scale_script_end_to_end(tmp_path, capsys):
    # the scale benchmark at a toy size: writes the HDF5 file, fits each solver
    # in a child process from the file, reports, and removes the file
    pytest.importorskip("h5py")
    from benchmarks.scale_hdf5 import main

    report = main(["--n", "120", "--d", "60", "--iters", "2", "--block-size", "50",
                   "--solvers", "nearly", "anls", "--dir", str(tmp_path)])
    assert [f["solver"] for f in report["fits"]] == ["nearly", "anls"]
    assert all("error" not in f and f["peak_rss_gib"] > 0 for f in report["fits"])
    assert report["data"]["n_spectra"] == 120 and list(tmp_path.iterdir()) == []
