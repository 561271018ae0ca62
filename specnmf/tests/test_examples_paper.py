"""The paper examples (examples/paper_*.py) run end to end at --scale tiny.

Each script runs in a subprocess into a temporary folder; the claims are read
back from its summary.json.  Skipped where the examples folder is absent (an
installed package without the repository).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (EXAMPLES / "paper_toy.py").exists(),
                       reason="examples/ folder not present (installed package)"),
]


def run_example(name, out, *extra):
    pytest.importorskip("matplotlib")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--scale", "tiny", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "summary.json") as f:
        summary = json.load(f)
    for fig in summary["figures"]:
        assert Path(fig).is_file() and Path(fig).stat().st_size > 1000
    return summary


def test_toy_nearly_and_shift_have_no_clipping_offset_and_nearly_converges_faster(tmp_path):
    s = run_example("paper_toy.py", tmp_path)
    off = s["offset_outside_over_peak"]
    assert off["clip"] > 0.01                         # clipping leaves a positive offset
    assert s["offset_ratio_to_clip"]["nearly"] < 0.1
    assert s["offset_ratio_to_clip"]["shift"] < 0.1
    assert s["offsets_below_tenth_of_clip"] and s["templates_nonnegative"]
    conv = s["convergence"]
    assert conv["nearly_below_shift"]                 # Fig. 2: Nearly-NMF ends lower ...
    assert conv["shift_slows_with_shift"]             # ... and a larger shift is slower
    med = conv["median_final_chi2"]
    assert med["nearly"] < med["shift_1x"] < med["shift_2x"] < med["shift_5x"]


def test_quasars_pipeline_fractions_nonnegative_templates_and_validation(tmp_path):
    s = run_example("paper_quasars.py", tmp_path)
    assert 0.55 < s["fractions"]["missing"] < 0.66    # paper: 61.1 %
    assert 0.05 < s["fractions"]["negative"] < 0.25   # paper: 11.4 %
    assert s["templates_nonnegative"] == {"noisy": True, "noise_free": True}
    v = s["validation"]
    assert v["typical_chi2"] > 0 and math.isfinite(v["ratio"])
    # even the tiny, short fit is within 2 % of the noise-free templates' chi^2
    assert abs(v["ratio"]) < 0.02
    assert s["n_components"] == 5


def test_timing_writes_slopes_for_n_d_q(tmp_path):
    s = run_example("paper_timing.py", tmp_path)
    assert set(s["slopes"]) == {"n", "d", "q"}
    for key, sweep in s["sweeps"].items():
        assert len(sweep["values"]) == len(sweep["median_seconds"]) >= 3
        assert all(t > 0 for t in sweep["median_seconds"])
        assert math.isfinite(s["slopes"][key])
