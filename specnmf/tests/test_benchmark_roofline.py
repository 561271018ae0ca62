"""The roofline script reports every operation, with consistent bytes and flops.

``benchmarks/`` sits at the repository root (it is not shipped with the
package), so these tests are skipped when it is absent.  No timing here.
"""

import json
import sys
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / "benchmarks" / "roofline.py").is_file():
    pytest.skip("benchmarks/ is not part of this installation", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from benchmarks.roofline import TARGETS, counts, main, render, second_core  # noqa: E402


@pytest.mark.parametrize("op", sorted(TARGETS))
def test_flops_grow_with_q_as_the_algorithm_says_and_bytes_do_not(op):
    def at(q, span=700):
        return counts(op, q=q, d=1000, span=span, itemsize=8)

    flops = [at(q)["flops"] for q in range(1, 7)]
    steps = [b - a for a, b in pairwise(flops)]
    if op in ("nearly", "shift"):
        assert steps == [12 * 700] * 5                     # linear in q
    else:
        # the Gram terms grow as q(q+1)/2: the second differences are constant
        assert len({b - a for a, b in pairwise(steps)}) == 1 and steps[1] > steps[0]
    assert len({at(q)["bytes"] for q in range(1, 7)}) == 1   # the data do not depend on q
    # float32 halves the bytes, not the flops; a narrower span costs less of both
    half = counts(op, q=5, d=1000, span=700, itemsize=4)
    assert 2 * half["bytes"] == at(5)["bytes"] and half["flops"] == at(5)["flops"]
    assert at(5, span=300)["bytes"] < at(5)["bytes"] and at(5, span=300)["flops"] < at(5)["flops"]


def test_roofline_script_end_to_end(tmp_path, capsys):
    out = tmp_path / "roof"
    results = main(["--smoke", "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roof.json", "roof.md"]
    saved = json.loads((tmp_path / "roof.json").read_text())
    assert [r["operation"] for r in saved["rows"]] == [r["operation"] for r in results["rows"]]
    # measured before and after the operations, on the same thread counts
    assert set(results["roof_after"]) == set(results["roof"])
    for roof in [*results["roof"].values(), *results["roof_after"].values()]:
        assert roof["bandwidth_gbs"] > 0
        assert roof["peak_float64_gflops"] > 0 and roof["peak_float32_gflops"] > 0
    # every operation of the configuration, each measured (a failed child gives no row)
    cfg = results["config"]
    expected = {(op, dt) for dt, ops in cfg["fit"]["solvers"].items() for op in ops}
    expected.add(("transform", "float64"))
    assert {(r["operation"], r["dtype"]) for r in results["rows"]} == expected
    n_fit = (sum(len(ops) for ops in cfg["fit"]["solvers"].values()) * len(cfg["fit"]["spans"])
             * len(cfg["fit"]["threads"]))
    assert len(results["rows"]) == n_fit + len(cfg["transform"]["threads"])
    for r in results["rows"]:
        assert r["time_s"] > 0 and r["read_s"] > 0
        assert r["ratio"] == pytest.approx(r["time_s"] / r["read_s"])
        assert r["target"] == TARGETS[r["operation"]]
        assert r["bytes_per_spectrum"] > 0 and r["flops_per_spectrum"] > 0
        assert r["intensity"] == pytest.approx(r["flops_per_spectrum"] / r["bytes_per_spectrum"])
        assert r["gflops"] / r["gbs"] == pytest.approx(r["intensity"])
        assert r["bound"] == ("memory" if r["intensity"] < r["ridge"] else "arithmetic")
        assert r["roof_fraction"] > 0 and r["floor_ratio"] > 0
    # the same kernel on float32 reads half the bytes for the same flops
    by = {(r["operation"], r["dtype"], r["case"]): r for r in results["rows"]}
    for (op, dt, case), r in by.items():
        if dt == "float32":
            r64 = by[(op, "float64", case)]
            assert r["flops_per_spectrum"] == r64["flops_per_spectrum"]
            assert 2 * r["bytes_per_spectrum"] == r64["bytes_per_spectrum"]
    table = (tmp_path / "roof.md").read_text()
    if {1, 2} <= set(results["roof"]):
        assert f"{second_core(results['roof']):.2f} before the operations" in table
    assert all(op in table for op in TARGETS) and table in capsys.readouterr().out


def _roof(peak64):
    return {"bandwidth_gbs": 20.0, "bandwidth_sum_gbs": 15.0, "bandwidth_matvec_gbs": 20.0,
            "peak_float64_gflops": peak64, "peak_float32_gflops": 2 * peak64}


@pytest.mark.parametrize("after_2, busy", [(76.0, False), (44.0, True)])
def test_report_says_when_the_second_core_was_not_free(after_2, busy):
    meta = dict.fromkeys(["date", "machine", "cpu_count", "numpy", "blas", "kernels", "specnmf",
                          "commit", "load_before", "load_after", "mode"], "-")
    results = {"meta": dict(meta, total_s=1.0), "rows": [],
               "roof": {1: _roof(40.0), 2: _roof(72.0)},
               "roof_after": {1: _roof(40.0), 2: _roof(after_2)}}
    assert second_core(results["roof"]) == pytest.approx(1.8)
    assert second_core({1: _roof(40.0)}) is None
    table = render(results)
    assert "1.80 before the operations" in table
    assert f"{after_2 / 40:.2f} after the operations" in table
    assert ("the second core was not free" in table) == busy
    # a results file written before the roofline was measured twice still renders
    del results["roof_after"]
    assert "1.80 before the operations" in render(results)
