"""The compute layer: chi^2 in one module, the forms of the multiplicative statistics.

:mod:`specnmf.objective` owns chi^2 and its accumulation rule; the Gram,
dense and fused forms (:mod:`specnmf.solvers.forms`) and the compiled kernel
must give its value, to the rounding the module documents.
"""

import numpy as np
import pytest

from specnmf import _kernels, objective
from specnmf.solvers import forms
from specnmf.solvers.multiplicative import NearlyNMF, ShiftNMF
from .test_kernels import _problem

#: what objective.py documents: the accelerations agree to 50 units of the working precision
ULPS = 50


def _rel(dtype):
    return ULPS * float(np.finfo(dtype).eps)


def test_one_accumulation_rule_for_both_precisions():
    X, ivar, C, T = _problem(200, 300, 4, seed=0)
    X[ivar == 0] = 0
    for dt in (np.float64, np.float32):
        Xd, vd, Cd, Td = (a.astype(dt) for a in (X, ivar, C, T))
        r = Xd - Cd @ Td
        rows = objective.spectrum_chi2(r, vd, np)
        assert rows.dtype == np.float64
        # each spectrum's terms in the working precision, pairwise
        np.testing.assert_array_equal(rows, np.sum(vd * r * r, axis=1).astype(np.float64))
        # the spectra in float64; the public functions follow the same rule
        assert objective.block_chi2(Xd, vd, Cd, Td, np) == float(np.sum(rows))
        assert objective.chi2(Xd, Cd, Td, ivar=vd) == float(np.sum(rows))
        np.testing.assert_array_equal(objective.chi2_per_spectrum(Xd, Cd, Td, ivar=vd), rows)
    # float32 loses only the rounding of its residual
    ref = objective.block_chi2(X, ivar, C, T, np)
    f32 = objective.block_chi2(*(a.astype(np.float32) for a in (X, ivar, C, T)), np)
    assert f32 == pytest.approx(ref, rel=_rel(np.float32))


def test_chi2_from_grams_is_the_residual_chi2():
    from specnmf.solvers import gram

    X, ivar, C, T = _problem(150, 80, 5, seed=1)
    X[ivar == 0] = 0
    vx2 = objective.spectrum_chi2(X, ivar, np)
    a = (ivar * X) @ T.T
    Gp = gram.row_grams(ivar, T, np)
    assert objective.chi2_from_grams(vx2, a, Gp, C, np) == pytest.approx(
        objective.block_chi2(X, ivar, C, T, np), rel=1e-12)


@pytest.mark.skipif(not _kernels.available(), reason="numba not installed (or SPECNMF_DISABLE_NUMBA set)")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("q", [1, 3, _kernels.MAX_Q])
@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_compiled_chi2_is_objectives(dtype, q, shift):
    X, ivar, C, T = _problem(700, 300, q, seed=q, dtype=dtype)    # three chunks of spectra
    X[ivar == 0] = 0
    lo, hi = _kernels.spans(ivar)
    fused = _kernels.mu_pass(ivar, X + dtype(shift), lo, hi, C, T, shift=shift, nearly=True)[1]
    assert fused == pytest.approx(objective.block_chi2(X, ivar, C, T, np), rel=_rel(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("solver", ["nearly", "shift"])
def test_every_form_reports_objectives_chi2(dtype, solver):
    X, ivar, C, T = _problem(120, 60, 3, seed=2, dtype=dtype)
    X[ivar == 0] = 0
    ref = objective.block_chi2(X, ivar, C, T, np)
    names = ["gram", "dense"] + (["fused"] if _kernels.available() else [])
    for name in names:
        s = (NearlyNMF(np, form=name) if solver == "nearly"
             else ShiftNMF(np, shift=2.0, form=name))
        block = s.prepare_block(X, ivar)
        _, (chi, *_) = s.block_step(block, C, T)
        # the Gram form's float64 value expands the square: cancellation of ~1e-16 of sum ivar x^2
        assert chi == pytest.approx(ref, rel=1e-12 if dtype == np.float64 else _rel(dtype)), name
        assert s.block_chi2(block, C, T) == pytest.approx(ref, rel=_rel(dtype)), name


def test_select_is_the_one_choice_of_form(monkeypatch):
    numba = _kernels.available()
    assert forms.select("auto", 3, 3, np).name == ("fused" if numba else "gram")
    assert forms.select("auto", 3, None, np).name == "gram"
    assert forms.select("auto", forms.GRAM_MAX_Q + 1, None, np).name == "dense"
    assert forms.select("auto", None, None, np).name == "dense"
    assert forms.select("dense", 3, 3, np).name == "dense"
    with pytest.raises(ValueError, match="form must be one of"):
        forms.check("sparse", np)
    solver = NearlyNMF(np, n_components=3)
    assert solver._form(3) is solver._form(3)      # chosen once
    assert solver.crops_blocks == solver._form(3).crops_blocks
    assert solver.preferred_block_rows(1000, 3) == solver._form(3).block_elements // 1000
