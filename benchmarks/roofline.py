r"""How close specnmf's kernels come to reading the data once: a roofline in one run.

    python -m benchmarks.roofline [--quick] [--smoke] [--out PATH]

prints a markdown table and writes ``PATH.md`` and ``PATH.json`` (default
``benchmarks/results_roofline``; a ``--quick`` or ``--smoke`` run defaults to
``benchmarks/results_roofline.partial`` so the committed results stay).

Every operation is reported as a ratio to *the time to read the same arrays
once*, measured in the same child process on the same arrays:

``read``
    single-thread numpy sum of X and of ivar (what issue 18 calls "one read of
    X and ivar"); for ``transform`` also a BLAS mat-vec of both (``A @ 1``)
    with the transform's thread count, which is the issue's reference there.

and the machine's roofline, before the operations (the one they are classed
against) and again after them (the host drifts; both are reported, with the
second core's share of the product peak, :func:`second_core`):

``bandwidth``
    sustained read bandwidth, GB/s (best of the repeats, as the peak): the faster of a numpy sum and a BLAS
    mat-vec over a 256 MiB array (far beyond the last-level cache), 1 and 2
    threads;
``peak``
    arithmetic peak, GFLOP/s: a BLAS matrix product of cache-resident
    256 x 256 operands (float64 and float32; 1 and 2 threads), 2 flops per
    multiply-add.

The operations (n=2000, d=5700, q=5 unless said):

* Nearly-NMF and Shift-NMF iterations, float64 and float32, on 1 thread and
  on both cores (``--quick``: 1 thread), against the same single-thread read, on
  three observed spans: ``full`` (every pixel observed but ~2 % bad pixels),
  ``wrapped`` (the simulated ~40 % window rolled so it wraps around the
  grid: one missing chunk per spectrum, a span of the whole grid) and
  ``narrow`` (the simulated window, ~40 % of the grid, as
  :func:`benchmarks.data.simulate_spectra` makes it);
* ANLS and APG iterations, float64, same data;
* ``SpectralNMF.transform``, n=5000, d=3000, q=5, full coverage, 1 and 2 threads.

Per-iteration times are the median interval between ``fit`` callbacks (as in
``benchmarks/run.py``); ``transform`` the median of repeated warm calls.
Bytes and flops per spectrum come from the algorithm (:func:`counts`), the
achieved GB/s and GFLOP/s from them and the measured time, and each
operation is classed against the measured roofline: memory-bound when its
arithmetic intensity (flop/byte) is below the ridge point peak/bandwidth,
else arithmetic-bound.  "roof" is the roofline time ``max(bytes/bandwidth,
flops/peak)`` over the measured time: 100 % would be on the roof; "floor
ratio" is that roofline time over the read: the smallest ratio to the read
that the operation's bytes and flops allow on this machine.

As in ``benchmarks/run.py`` every measurement runs in a fresh ``spawn``ed
process with BLAS threads limited by threadpoolctl and specnmf's kernels by
``numba.set_num_threads``, with ``SPECNMF_NUMBA_MIN_WORK=0`` so that the
compiled kernels are measured.
"""

from __future__ import annotations

import argparse
import json
import itertools
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks import run as harness

logger = logging.getLogger("specnmf.benchmarks")

HERE = Path(__file__).resolve().parent
SPANS = ("full", "wrapped", "narrow")
#: issue 18's targets, as ratios to the read of the same arrays
TARGETS = {"nearly": 1.5, "shift": 1.5, "anls": 2.5, "apg": 2.5, "transform": 2.0}
_BANDWIDTH_BYTES = 256 << 20
_PEAK_SIZE = 256


def make_config(quick=False, smoke=False):
    """Sizes, iteration counts and repeats of a full, ``--quick`` or ``--smoke`` run."""
    cfg = {"fit": {"n": 2000, "d": 5700, "q": 5, "spans": list(SPANS), "iters": 20,
                   "solvers": {"float64": ["nearly", "shift", "anls", "apg"],
                               "float32": ["nearly", "shift"]},
                   # the iterations on both cores too, against the same single-thread read
                   "threads": [1, 2]},
           "transform": {"n": 5000, "d": 3000, "q": 5, "threads": [1, 2], "repeats": 11},
           "read_repeats": 7, "roof_repeats": 9}
    if quick:
        cfg["fit"].update(iters=4, spans=["full", "narrow"], threads=[1])
        cfg["transform"].update(repeats=3)
        cfg.update(read_repeats=3, roof_repeats=2)
    if smoke:
        # tiny sizes: exercises every code path in seconds; the numbers mean nothing
        cfg["fit"].update(n=80, d=300, iters=3, threads=[1])
        cfg["transform"].update(n=100, d=200, repeats=2)
        cfg.update(read_repeats=2, roof_repeats=1)
    return cfg


# ---------------------------------------------------------------------------
# bytes and flops per spectrum, from the algorithms
# ---------------------------------------------------------------------------
def counts(op, *, q, d, span, itemsize):
    """Bytes moved from memory and flops of one spectrum of ``op`` (a multiply-add is 2 flops).

    ``span`` is the mean number of pixels a kernel visits per spectrum (its
    observed span; a BLAS form would run over every pixel of its block).  The templates and
    the per-pixel accumulators (q x d each) are reused by every spectrum and
    stay in cache, so only the per-spectrum data count as memory traffic.
    """
    p = q * (q + 1) // 2                     # packed Gram entries
    if op in ("nearly", "shift"):
        # the fused pass (mu_q in _kernel_template.py.in), per pixel of the span:
        # loop 1: model c.t (2q), residual and chi^2 (x - y - m, s += v r r: 5),
        # v*x and v*(m + y) (3), a += and e += (4q); loop 2: v*x (1), Ab += (2q);
        # loop 3: the model again (2q), v*(m + y) (2), Db += (2q).  Shift-NMF is
        # the same kernel with y != 0.  X and ivar are read once from memory
        # (the three loops re-read the row from cache).
        return {"bytes": 2 * span * itemsize, "flops": span * (12 * q + 11)}
    if op in ("anls", "apg"):
        # the Gram form (anls._Alternating.block_step), compiled: row Grams (2p)
        # and a = (ivar*X) T^T (2q) over each spectrum's span (rows_q); then at the
        # new coefficients C^T (ivar*X) (2q) and the pixel Grams P(C)^T ivar (2p)
        # (pixels_q, over groups of spectra by their spans' union: a little more
        # than the spans).  ivar and the stored ivar*X are each read twice.  The
        # n + d small q x q solves are per spectrum/pixel, not per element, and
        # left out.
        return {"bytes": 4 * span * itemsize, "flops": span * (4 * p + 4 * q)}
    if op == "transform":
        # the Gram kernel (gram_q in _kernel_template.py.in): the weights outside
        # the span searched for zeros (read, not counted as flops), then per pixel
        # of the span the weights' sum (1), v*x (1), u = v*t (q), b += (2q),
        # G += (2p).  Every weight is read once, the flux over the span.
        return {"bytes": (d + span) * itemsize, "flops": span * (2 * p + 3 * q + 2)}
    raise ValueError(f"unknown operation {op!r}")


# ---------------------------------------------------------------------------
# child side
# ---------------------------------------------------------------------------
def _times(fn, repeats):
    fn()                                     # warm: first touch, lazy imports
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _median_time(fn, repeats):
    return float(np.median(_times(fn, repeats)))


def _best_time(fn, repeats):
    # the roofline is what the machine can do: its best run, not its typical one
    return min(_times(fn, repeats))


def _read_sum(X, ivar, repeats):
    """Single-thread numpy sum of X and of ivar (numpy's sum never threads)."""
    return _median_time(lambda: (X.sum(), ivar.sum()), repeats)


def _read_matvec(X, ivar, repeats):
    """BLAS mat-vec of X and ivar with the current BLAS thread limit."""
    ones = np.ones(X.shape[1], dtype=X.dtype)
    return _median_time(lambda: (X @ ones, ivar @ ones), repeats)


def _wrap(X, ivar):
    """Roll each spectrum so its observed window wraps around the grid (centre at pixel 0).

    The observed fraction stays ~40 %, but each spectrum's span is the whole
    grid: one missing chunk per spectrum, in the middle.
    """
    d = ivar.shape[1]
    obs = ivar > 0
    first = obs.argmax(axis=1)
    last = d - 1 - obs[:, ::-1].argmax(axis=1)
    centre = (first + last) // 2
    idx = (np.arange(d)[None, :] + centre[:, None]) % d
    return (np.ascontiguousarray(np.take_along_axis(X, idx, axis=1)),
            np.ascontiguousarray(np.take_along_axis(ivar, idx, axis=1)))


def _spectra(n, d, q, dtype, span):
    from benchmarks.data import simulate_spectra

    missing = 0.0 if span == "full" else 0.6
    X, ivar = simulate_spectra(n, d, q, missing=missing, dtype=dtype,
                               random_state=harness.DATA_SEED)
    if span == "wrapped":
        X, ivar = _wrap(X, ivar)
    return X, ivar


def _mean_span(ivar):
    """Mean observed span (last - first + 1) over the spectra with any weight."""
    from specnmf import _kernels

    lo, hi = _kernels.spans(ivar)
    return float(np.mean(np.maximum(np.asarray(hi, np.int64) - np.asarray(lo, np.int64), 0)))


def _task_fit(task):
    """Per-iteration times of each solver on one data set, and the read of that data set."""
    from benchmarks.data import start_factors

    n, d, q, dt = task["n"], task["d"], task["q"], task["dtype"]
    for solver in task["solvers"]:
        harness._warm_imports(q, solver)
    X, ivar = _spectra(n, d, q, dt, task["span"])
    C0, T0 = start_factors(n, d, q, dtype=dt, random_state=harness.START_SEED)
    data = {"X": X, "ivar": ivar, "C0": C0, "T0": T0}
    out = {"read_s": _read_sum(X, ivar, task["read_repeats"]), "span": _mean_span(ivar),
           "observed": float(np.mean(ivar > 0)), "itemsize": X.itemsize, "solvers": {}}
    for solver in task["solvers"]:
        res = harness._per_iteration_callback(
            lambda m, cb, solver=solver: harness._fit(q, solver, m, data, dt, callback=cb),
            task["iters"])
        out["solvers"][solver] = {"time_s": res["per_iter_s"], "times_s": res["per_iter_all_s"]}
    # the read once more, after the fits: the machine's state may have drifted
    out["read_after_s"] = _read_sum(X, ivar, task["read_repeats"])
    return out


def _task_transform(task):
    from benchmarks.data import simulate_spectra
    from specnmf import SpectralNMF

    n, d, q = task["n"], task["d"], task["q"]
    harness._warm_imports(q, "nearly", transform=True)
    X, ivar, _, T = simulate_spectra(n, d, q, missing=0.0, random_state=harness.DATA_SEED,
                                     return_truth=True)
    model = SpectralNMF.from_templates(T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = _median_time(lambda: model.transform(X, ivar=ivar), task["repeats"])
    return {"time_s": t, "read_s": _read_sum(X, ivar, task["read_repeats"]),
            "read_matvec_s": _read_matvec(X, ivar, task["read_repeats"]),
            "span": _mean_span(ivar), "observed": float(np.mean(ivar > 0)),
            "itemsize": X.itemsize}


def _task_roof(task):
    """Sustained read bandwidth and matrix-product peak at the current thread limit."""
    repeats = task["repeats"]
    a = np.random.default_rng(0).uniform(size=_BANDWIDTH_BYTES // 8)
    m = a.reshape(-1, 4096)
    ones = np.ones(4096)
    t_sum = _best_time(a.sum, repeats)
    t_mv = _best_time(lambda: m @ ones, repeats)
    out = {"bandwidth_sum_gbs": a.nbytes / t_sum / 1e9, "bandwidth_matvec_gbs": a.nbytes / t_mv / 1e9}
    out["bandwidth_gbs"] = max(out["bandwidth_sum_gbs"], out["bandwidth_matvec_gbs"])
    k = _PEAK_SIZE
    for dt in ("float64", "float32"):
        A = np.random.default_rng(1).uniform(size=(k, k)).astype(dt)
        B = np.random.default_rng(2).uniform(size=(k, k)).astype(dt)
        C = np.empty((k, k), dtype=dt)
        reps = 20                             # one product is ~1 ms: time a batch

        def batch(A=A, B=B, C=C, reps=reps):
            for _ in range(reps):
                np.matmul(A, B, out=C)

        out[f"peak_{dt}_gflops"] = 2 * k**3 * reps / _best_time(batch, repeats) / 1e9
    return out


_TASKS = {"fit": _task_fit, "transform": _task_transform, "roof": _task_roof}


def _measure(task):
    """Run ``task`` in a fresh spawned process with ``benchmarks.run``'s harness."""
    return harness._measure({**task, "module": "benchmarks.roofline"})


# ---------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------
def _row(op, label, dtype, threads, time_s, read_s, read_label, cnt, n, roof):
    """One report row: ratios, achieved rates and the roofline class."""
    dt = "float64" if dtype == "float64" else "float32"
    bw = roof[threads]["bandwidth_gbs"]
    peak = roof[threads][f"peak_{dt}_gflops"]
    intensity = cnt["flops"] / cnt["bytes"]
    ridge = peak / bw
    gbs = n * cnt["bytes"] / time_s / 1e9
    gflops = n * cnt["flops"] / time_s / 1e9
    roof_s = max(n * cnt["bytes"] / (bw * 1e9), n * cnt["flops"] / (peak * 1e9))
    return {"operation": op, "case": label, "dtype": dtype, "threads": threads,
            "time_s": time_s, "read_s": read_s, "read": read_label,
            "ratio": time_s / read_s, "target": TARGETS[op],
            "met": time_s / read_s <= TARGETS[op],
            "bytes_per_spectrum": cnt["bytes"], "flops_per_spectrum": cnt["flops"],
            "intensity": intensity, "ridge": ridge, "gbs": gbs, "gflops": gflops,
            "bound": "memory" if intensity < ridge else "arithmetic",
            "roof_fraction": roof_s / time_s, "floor_ratio": roof_s / read_s}


def run(cfg):
    """All measurements of one run; returns ``{"roof", "rows", "raw"}``."""
    threads = sorted(set([1] + cfg["transform"]["threads"] + cfg["fit"]["threads"]))
    roof = {t: _measure({"kind": "roof", "threads": t, "repeats": cfg["roof_repeats"]})
            for t in threads}
    failed = [t for t, r in roof.items() if not r.get("ok")]
    if failed:
        raise RuntimeError(f"roofline measurement failed: {roof[failed[0]].get('error')}")
    rows, raw = [], {"fit": [], "transform": []}
    f = cfg["fit"]
    for t, (dtype, solvers) in itertools.product(f["threads"], f["solvers"].items()):
        for span in f["spans"]:
            res = _measure({"kind": "fit", "n": f["n"], "d": f["d"], "q": f["q"],
                            "dtype": dtype, "span": span, "solvers": solvers,
                            "iters": f["iters"], "read_repeats": cfg["read_repeats"],
                            "threads": t})
            raw["fit"].append(dict(res, dtype=dtype, span=span, threads=t))
            if not res.get("ok"):
                continue
            label = f"n={f['n']} d={f['d']} q={f['q']}, {span} ({res['observed']:.0%} observed)"
            for solver, s in res["solvers"].items():
                # the compiled kernels run over each spectrum's span
                cnt = counts(solver, q=f["q"], d=f["d"], span=res["span"],
                             itemsize=res["itemsize"])
                rows.append(_row(solver, label, dtype, t, s["time_s"], res["read_s"],
                                 "numpy sum, 1 thread", cnt, f["n"], roof))
    c = cfg["transform"]
    for t in c["threads"]:
        res = _measure({"kind": "transform", "n": c["n"], "d": c["d"], "q": c["q"],
                        "repeats": c["repeats"], "read_repeats": cfg["read_repeats"],
                        "threads": t})
        raw["transform"].append(dict(res, threads=t))
        if not res.get("ok"):
            continue
        cnt = counts("transform", q=c["q"], d=c["d"], span=res["span"], itemsize=res["itemsize"])
        label = f"n={c['n']} d={c['d']} q={c['q']}, full ({res['observed']:.0%} observed)"
        rows.append(_row("transform", label, "float64", t, res["time_s"], res["read_matvec_s"],
                         f"BLAS mat-vec, {t} thread{'s' if t > 1 else ''}", cnt, c["n"], roof))
        rows[-1]["ratio_to_sum"] = res["time_s"] / res["read_s"]
    # the roofline again after the operations: on a shared host it drifts, and the
    # two-thread ratios mean little where the second core was not free (see render)
    roof_after = {t: _measure({"kind": "roof", "threads": t, "repeats": cfg["roof_repeats"]})
                  for t in threads}
    roof_after = {t: r for t, r in roof_after.items() if r.get("ok")}
    return {"roof": roof, "roof_after": roof_after, "rows": rows, "raw": raw}


def second_core(roof):
    """Both cores' float64 product peak over one core's in a roofline measurement
    (``{threads: roof}``), or None without both: about 1.6-1.9 on this 2-core machine when
    nothing else runs on it, near 1 when another process has the second core."""
    if 1 in roof and 2 in roof:
        return roof[2]["peak_float64_gflops"] / roof[1]["peak_float64_gflops"]
    return None


def render(results):
    """The markdown report of a results dict."""
    meta = results["meta"]
    out = [(f"Measured {meta['date']} on {meta['machine']} ({meta['cpu_count']} CPUs), "
            f"numpy {meta['numpy']}, BLAS {meta['blas']}, kernels {meta['kernels']}, "
            f"specnmf {meta['specnmf']} (commit {meta['commit']}); load average "
            f"{meta['load_before']} before, {meta['load_after']} after; {meta['mode']} run, "
            f"{meta['total_s']:.0f} s.")]
    out.append("\n### The machine's roofline\n")
    rows = []
    measured = [("before", results["roof"]), ("after", results.get("roof_after", {}))]
    for when, roof in measured:
        for t, r in roof.items():
            rows.append([when, t, f"{r['bandwidth_gbs']:.1f}", f"{r['bandwidth_sum_gbs']:.1f}",
                         f"{r['bandwidth_matvec_gbs']:.1f}", f"{r['peak_float64_gflops']:.1f}",
                         f"{r['peak_float32_gflops']:.1f}",
                         f"{r['peak_float64_gflops'] / r['bandwidth_gbs']:.1f}",
                         f"{r['peak_float32_gflops'] / r['bandwidth_gbs']:.1f}"])
    out.append(harness._md(["measured", "threads", "read bandwidth GB/s", "numpy sum GB/s",
                            "BLAS mat-vec GB/s", "float64 peak GFLOP/s",
                            "float32 peak GFLOP/s", "ridge float64 flop/B",
                            "ridge float32 flop/B"], rows))
    shares = [(when, second_core(roof)) for when, roof in measured]
    shares = [(when, x) for when, x in shares if x is not None]
    if shares:
        busy = any(x < 1.5 for _, x in shares)
        out.append("\nBoth cores' float64 peak over one core's: "
                   + ", ".join(f"{x:.2f} {when} the operations" for when, x in shares)
                   + (" (under 1.5: the second core was not free, and the two-thread ratios"
                      " measure the host as much as the kernels)." if busy else "."))
    out.append("\n### Operations against one read of the same arrays\n")
    rows = []
    for r in results["rows"]:
        rows.append([r["operation"], r["case"], r["dtype"], r["threads"],
                     f"{1e3 * r['time_s']:.2f}", f"{1e3 * r['read_s']:.2f} ({r['read']})",
                     f"{r['ratio']:.2f}x",
                     f"<= {r['target']}x ({'met' if r['met'] else 'not met'})",
                     f"{r['bytes_per_spectrum']:.0f}", f"{r['flops_per_spectrum']:.0f}",
                     f"{r['intensity']:.2f}", f"{r['gbs']:.1f}", f"{r['gflops']:.1f}",
                     r["bound"], f"{r['roof_fraction']:.0%}", f"{r['floor_ratio']:.2f}x"])
    out.append(harness._md(["operation", "data", "dtype", "threads", "ms", "read ms",
                            "ratio to read", "issue 18 target", "bytes/spectrum",
                            "flops/spectrum", "flop/byte", "GB/s", "GFLOP/s", "bound",
                            "roof", "floor ratio"], rows))
    out.append("\nms: per iteration (median interval between fit callbacks) or per "
               "transform call; bytes and flops per spectrum from `benchmarks.roofline.counts`; "
               "bound: memory when flop/byte is below the ridge point (peak / bandwidth), "
               "else arithmetic; roof: the roofline time max(bytes/bandwidth, flops/peak) "
               "over the measured time; floor ratio: that roofline time over the read, the "
               "smallest ratio the operation's bytes and flops allow on this machine.")
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations, repeats and spans (under a minute)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes to check the harness in seconds (numbers meaningless)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without suffix; .md and .json are written "
                             "(default benchmarks/results_roofline, or "
                             "benchmarks/results_roofline.partial for --quick/--smoke)")
    args = parser.parse_args(argv)
    os.environ["SPECNMF_NUMBA_MIN_WORK"] = "0"        # inherited by the spawned children
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = args.out or HERE / ("results_roofline" if mode == "full" else "results_roofline.partial")
    meta = harness._meta(mode)
    meta["command"] = "python -m benchmarks.roofline " + " ".join(
        sys.argv[1:] if argv is None else argv)
    cfg = make_config(args.quick, args.smoke)
    t = time.perf_counter()
    results = {"meta": meta, "config": cfg, **run(cfg)}
    meta["total_s"] = time.perf_counter() - t
    meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
    table = render(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(
        json.dumps(harness._jsonable(results), indent=1) + "\n")
    out.with_name(out.name + ".md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
