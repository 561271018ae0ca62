"""The real-data benchmark's protocol pieces and the MUSE example (no timing here).

``benchmarks/`` and ``examples/`` are not part of the installed package; these
tests are skipped when they are absent.
"""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / "benchmarks" / "real.py").exists():
    pytest.skip("benchmarks/ is not part of this installation", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from benchmarks.real import (  # noqa: E402
    heldout_chi2,
    holdout_chunks,
    nnls_predictor,
    split,
    weighted_pca,
    wls_coefficients,
)


def test_split_and_holdout_chunks_are_seeded_contiguous_20_percent():
    train, test = split(100, seed=3)
    assert len(train) == 75 and len(test) == 25 and not set(train) & set(test)
    assert np.array_equal(split(100, seed=3)[0], train)
    held = holdout_chunks(np.ones((50, 200)), seed=3)
    assert np.all(held.sum(axis=1) == 40)
    for row in held:  # one contiguous run per spectrum
        assert np.count_nonzero(np.diff(row.astype(int)) == 1) + row[0] == 1
    assert np.array_equal(holdout_chunks(np.ones((50, 200)), seed=3), held)


def test_weighted_pca_recovers_a_low_rank_matrix_with_missing_pixels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 40))
    ivar = rng.uniform(0.5, 2, X.shape)
    ivar[rng.uniform(size=X.shape) < 0.2] = 0
    P = weighted_pca(X, ivar, 3, n_iter=60, seed=0)
    model = wls_coefficients(X, ivar, P) @ P
    assert np.sum(ivar * (X - model) ** 2) < 1e-8 * np.sum(ivar * X**2)
    np.testing.assert_allclose(P @ P.T, np.eye(3), atol=1e-10)


def test_heldout_score_uses_only_the_fitted_pixels_for_coefficients():
    rng = np.random.default_rng(1)
    T = rng.uniform(size=(2, 30))
    X = rng.uniform(size=(10, 2)) @ T
    ivar = np.ones_like(X)
    held = holdout_chunks(ivar, seed=0)
    test, fit = heldout_chi2(X, ivar, held, nnls_predictor(T))
    assert test < 1e-12 and fit < 1e-12
    X_bad = np.where(held, X + 1.0, X)   # changing held-out flux changes only the score
    test2, fit2 = heldout_chi2(X_bad, ivar, held, nnls_predictor(T))
    assert test2 == pytest.approx(1.0) and fit2 < 1e-12


@pytest.mark.slow
def test_muse_example_on_the_bundled_crop(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("astropy")
    script = ROOT / "examples" / "muse_demo.py"
    main = runpy.run_path(str(script))["main"]
    summary = main(["--crop", "--k", "3", "--max-iter", "15", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    for name in ("muse_templates.png", "muse_maps.png", "muse_faint.png", "muse_spaxels.png",
                 "muse_maps.fits"):
        assert (tmp_path / name).stat().st_size > 0
    assert summary["spatial_shape"] == [12, 12] and summary["medium"] == "air"
    assert "emission-line gas" in [c["name"] for c in summary["components"]]
    assert summary["comparison"]["pca"]["negative_template_fraction"] > 0
    assert summary["comparison"]["nearly"]["negative_template_fraction"] == 0
