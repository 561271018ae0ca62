r"""specnmf against the published Nearly-NMF code: one command, one table.

    python -m benchmarks.run [--quick] [--cases periter target transform sweep_n sweep_d sweep_q]

prints a markdown table and writes ``benchmarks/results.json`` and
``benchmarks/results.md`` (a quick, smoke or partial run writes
``results.partial.json``/``.md`` instead, so the full results are not
overwritten by a subset).

What is measured (all ratios are baseline time / specnmf time, measured in
one run, on the same simulated data and from the same start):

``periter``
    Time per iteration of ``SpectralNMF(solver="nearly")`` and of
    :func:`benchmarks.baseline.nearly_baseline` at d=5700, n=2000, q=5, in
    float64 and float32, with 1 and 2 threads (BLAS threads by
    ``threadpoolctl.threadpool_limits``, specnmf's compiled kernels by
    ``numba.set_num_threads``).  Both are timed the same way: the
    median wall time between consecutive per-iteration callbacks (the paper's
    statistic; ``fit(callback=...)`` of the public estimator), or, for an
    estimator without a callback, the wall time of a run of ``m2`` iterations
    minus one of ``m1``, over ``m2 - m1``, so setup cost cancels.  specnmf's
    time includes its chi^2 evaluation (it is fused into the next pass over
    the data); the baseline computes no chi^2.  Also the largest difference
    of the iterates after 10 iterations, relative to the largest entry of
    each factor.
``target``
    The baseline runs 1000 iterations (n=750, d=5700, q=5, one thread); its
    chi^2 (:func:`specnmf.chi2`) is the target.  Each specnmf solver then
    runs with ``tol=0`` and a callback that stops it at the first iterate
    whose chi^2 reaches the target; its time-to-target is the wall time from
    the ``fit`` call (validation and setup included) to that callback.  (As
    specnmf learns the chi^2 of iterate k during pass k+1, this counts one
    pass more than needed.)  Without a callback, the ``chi2_`` history of a
    capped run gives the iteration k, timed as ``fit(max_iter=k)``.
``transform``
    ``SpectralNMF.transform`` (batched weighted NNLS) against a Python loop
    over :func:`scipy.optimize.nnls` on the same weighted problems,
    n=5000, d=3000, q=5, and the largest difference of their coefficients.
``sweep_n``, ``sweep_d``, ``sweep_q``
    The paper's Fig. 8 sweeps (one thread, float64) for both
    implementations, with log-log slopes (scaling exponents).

Every measurement runs in a fresh child process (``spawn``), one at a time,
and reports its peak resident memory minus the resident memory after the
data were loaded: the extra memory the algorithm needs.

specnmf is measured in its steady state, with its compiled kernels in use
(``SPECNMF_NUMBA_MIN_WORK=0`` in the children): what a notebook or pipeline
that has loaded them gets.  A process that makes a single call below
``specnmf._kernels.MIN_WORK`` element-passes runs on numpy/BLAS instead, to
save loading numba (~1 s); ``--as-shipped`` measures that rule (e.g. a
5000 x 3000 ``transform`` then takes ~0.15 s instead of ~0.015 s).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

logger = logging.getLogger("specnmf.benchmarks")

HERE = Path(__file__).resolve().parent
CASES = ("periter", "target", "transform", "sweep_n", "sweep_d", "sweep_q")
TARGET_SOLVERS = ("nearly", "anls", "apg")
DATA_SEED = 0
START_SEED = 1


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------
def make_config(quick=False, smoke=False):
    """Sizes, iteration counts and sweep points of a full, ``--quick`` or ``--smoke`` run."""
    cfg = {
        "quick": quick,
        "periter": {"n": 2000, "d": 5700, "q": 5, "dtypes": ["float64", "float32"],
                    "threads": [1, 2], "iters": 40, "m1": 2, "m2": 12, "repeats": 3,
                    "check_iter": 10},
        "target": {"n": 750, "d": 5700, "q": 5, "baseline_iter": 1000, "threads": 1,
                   "solvers": list(TARGET_SOLVERS),
                   # iteration caps; Nearly-NMF follows the baseline's path and
                   # needs about baseline_iter, the others should need far fewer
                   "cap": {"nearly": [1100], "default": [50, 300]},
                   "direct_seconds": 30.0},
        "transform": {"n": 5000, "d": 3000, "q": 5, "repeats": 11, "loop_repeats": 3,
                      "threads": [1, 2]},
        "sweep": {"n": [int(v) for v in np.geomspace(50, 2000, 5).round()],
                  "d": [11400 // 2**i for i in range(5)],
                  "q": list(range(1, 11)),
                  "fixed": {"n": 750, "d": 5700, "q": 5},
                  "iters": 20, "m1": 2, "m2": 12, "repeats": 3},
    }
    if quick:
        cfg["periter"].update(iters=8, m1=1, m2=5, repeats=1)
        cfg["target"].update(baseline_iter=100, cap={"nearly": [120], "default": [30, 100]},
                             direct_seconds=10.0)
        cfg["transform"].update(repeats=1, loop_repeats=1)
        cfg["sweep"].update(n=[50, 316, 2000], d=[11400, 2850, 712], q=[1, 5, 10],
                            iters=5, m1=1, m2=4, repeats=1)
    if smoke:
        # tiny sizes: exercises every code path in seconds; the numbers mean nothing
        cfg["periter"].update(n=120, d=300, iters=3, m1=1, m2=3, repeats=1)
        cfg["target"].update(n=60, d=200, baseline_iter=50,
                             cap={"nearly": [60], "default": [10, 40]})
        cfg["transform"].update(n=200, d=300, repeats=1, loop_repeats=1)
        cfg["sweep"].update(n=[20, 80], d=[400, 200], q=[1, 3], fixed={"n": 60, "d": 200, "q": 3},
                            iters=3, m1=1, m2=3, repeats=1)
    return cfg


# ---------------------------------------------------------------------------
# child side: everything below runs in a fresh process
# ---------------------------------------------------------------------------
def _status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak resident memory above the resident memory at :meth:`start`.

    ``start`` is called once the data are loaded and the code under test has
    been imported (a tiny problem runs first, see :func:`_warm_imports`), so
    the difference is the memory the algorithm itself needs: temporaries,
    copies, precomputed products.  On Linux the kernel's high-water mark is
    reset at ``start`` (write "5" to ``/proc/self/clear_refs``), so memory
    used while generating the data does not count; elsewhere ``ru_maxrss`` is
    used, which can only overstate the starting level and so understates the
    extra memory.
    """

    def start(self):
        # hand freed heap memory (e.g. the data generator's temporaries) back
        # to the OS first, else the algorithm reuses it without growing RSS
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.rss0 = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "ru_maxrss"
        if self.rss0 is None:
            self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss"

    def extra_mib(self):
        peak = _status_kib("VmHWM") if self.method.startswith("VmHWM") else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0.0, (peak - self.rss0) / 1024.0)


def _load(task, *, paper=False, truth=False):
    from benchmarks.data import simulate_spectra, start_factors

    n, d, q, dt = task["n"], task["d"], task["q"], task.get("dtype", "float64")
    out = simulate_spectra(n, d, q, dtype=dt, random_state=DATA_SEED, return_truth=truth)
    C0, T0 = start_factors(n, d, q, dtype=dt, random_state=START_SEED)
    X, ivar = out[0], out[1]
    data = {"X": X, "ivar": ivar, "C0": C0, "T0": T0}
    if truth:
        data["C_true"], data["T_true"] = out[2], out[3]
    if paper:
        # the published code stores spectra as columns, contiguous
        data.update(Xp=np.ascontiguousarray(X.T), Vp=np.ascontiguousarray(ivar.T),
                    W0=np.ascontiguousarray(T0.T), H0=np.ascontiguousarray(C0.T))
    return data


def _fit(q, solver, m, data, dtype, callback=None):
    from specnmf import SpectralNMF

    extra = {} if callback is None else {"callback": callback}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # e.g. missing-data notices; timing only
        return SpectralNMF(q, solver=solver, max_iter=m, tol=0, dtype=dtype).fit(
            data["X"], ivar=data["ivar"], templates=data["T0"], coefficients=data["C0"], **extra)


def _estimator_has_callback():
    import inspect

    from specnmf import SpectralNMF

    return "callback" in inspect.signature(SpectralNMF.fit).parameters


def _warm_imports(q, solver=None, transform=False):
    """Run a tiny problem through the code under test, so lazy imports are not counted as memory."""
    from benchmarks.data import simulate_spectra, start_factors

    n, d = max(12, q), max(24, q)
    X, ivar = simulate_spectra(n, d, q, random_state=DATA_SEED)
    C0, T0 = start_factors(n, d, q, random_state=START_SEED)
    tiny = {"X": X, "ivar": ivar, "C0": C0, "T0": T0}
    if solver is not None:
        model = _fit(q, solver, 2, tiny, "float64")
        if transform:
            model.transform(X, ivar=ivar)


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def _per_iteration_callback(call, n_timed, skip=1):
    """Median wall time between consecutive per-iteration callbacks (the paper's statistic).

    ``call(m, callback)`` runs ``m`` iterations.  The first ``skip`` intervals
    (warm-up) and the last one are dropped: specnmf's loop computes the chi^2
    of iterate k during pass k+1, so its final interval is a chi^2-only pass.
    """
    stamps = []

    def callback(*args):
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    call(n_timed + skip + 2, callback)
    dt = np.diff(stamps)[skip:-1]
    return {"per_iter_s": float(np.median(dt)), "per_iter_std_s": float(np.std(dt)),
            "per_iter_all_s": dt.tolist(), "first_callback_s": stamps[0] - t0,
            "timing": "callback"}


def _per_iteration_difference(call, m1, m2, repeats):
    """Median of ``(t(m2) - t(m1)) / (m2 - m1)`` over ``repeats``, after one warm-up call.

    For an estimator without a per-iteration callback: setup cost cancels.
    """
    call(m1, None)
    per, setup = [], []
    for _ in range(repeats):
        t1, _ = _timed(call, m1, None)
        t2, _ = _timed(call, m2, None)
        per.append((t2 - t1) / (m2 - m1))
        setup.append(t1 - m1 * per[-1])
    return {"per_iter_s": float(np.median(per)), "per_iter_all_s": per,
            "setup_s": float(np.median(setup)), "timing": "difference"}


def _per_iteration(call, task, use_callback):
    if use_callback:
        return _per_iteration_callback(call, task["iters"])
    return _per_iteration_difference(call, task["m1"], task["m2"], task["repeats"])


def _task_periter(task):
    from benchmarks.baseline import nearly_baseline

    mem = _PeakMemory()
    q, dt = task["q"], task["dtype"]
    # both implementations are timed the same way: by callback when the
    # estimator offers one, else by the difference of two run lengths
    use_callback = _estimator_has_callback()
    if task["impl"] == "baseline":
        data = _load(task, paper=True)
        Xp, Vp, W0, H0 = data["Xp"], data["Vp"], data["W0"], data["H0"]
        data.clear()                         # the baseline holds only its own orientation
        mem.start()
        res = _per_iteration(lambda m, cb: nearly_baseline(Xp, Vp, W0, H0, m, callback=cb),
                             task, use_callback)
    else:
        _warm_imports(q, task["solver"])
        data = _load(task)
        mem.start()
        res = _per_iteration(lambda m, cb: _fit(q, task["solver"], m, data, dt, callback=cb),
                             task, use_callback)
    res.update(extra_mib=mem.extra_mib(), memory_method=mem.method)
    return res


def _task_iterates(task):
    """Largest difference of specnmf's and the baseline's iterates after ``m`` iterations."""
    from benchmarks.baseline import nearly_baseline

    data = _load(task, paper=True)
    m = task["m"]
    W, H = nearly_baseline(data["Xp"], data["Vp"], data["W0"], data["H0"], m)
    model = _fit(task["q"], "nearly", m, data, task["dtype"])

    def rel(a, b):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    return {"n_iter": int(model.n_iter_),
            "templates_rel": rel(model.templates_, W.T),
            "coefficients_rel": rel(model.coefficients_, H.T),
            "max_rel": max(rel(model.templates_, W.T), rel(model.coefficients_, H.T))}


def _task_baseline_target(task):
    from benchmarks.baseline import nearly_baseline
    from specnmf import chi2

    _warm_imports(task["q"])                 # specnmf.chi2, used after the clock stops
    data = _load(task, paper=True)
    mem = _PeakMemory()
    mem.start()
    t, (W, H) = _timed(nearly_baseline, data["Xp"], data["Vp"], data["W0"], data["H0"],
                       task["n_iter"])
    extra = mem.extra_mib()
    return {"time_s": t, "n_iter": task["n_iter"],
            "chi2": chi2(data["X"], H.T, W.T, ivar=data["ivar"]),
            "chi2_start": chi2(data["X"], data["C0"], data["T0"], ivar=data["ivar"]),
            "extra_mib": extra, "memory_method": mem.method}


def _task_solver_target(task):
    q, solver, target = task["q"], task["solver"], task["target"]
    try:
        _warm_imports(q, solver)
    except (ValueError, TypeError) as exc:   # the installed estimator rejects the solver
        return {"status": "rejected", "reason": str(exc)}
    data = _load(task)
    mem = _PeakMemory()
    mem.start()
    if _estimator_has_callback():
        return _solver_target_callback(task, data, mem)
    t0, _ = _timed(_fit, q, solver, 0, data, "float64")
    # no callback: fits are deterministic, so a short run first saves running to the cap
    # when the target comes early
    for cap in task["caps"]:
        t_cap, model = _timed(_fit, q, solver, cap, data, "float64")
        history = np.asarray(model.chi2_)
        hit = np.flatnonzero(history <= target)
        if hit.size:
            break
    extra = mem.extra_mib()
    out = {"cap": cap, "time_cap_s": t_cap, "time_setup_s": t0, "extra_mib": extra,
           "memory_method": mem.method, "chi2_final": float(history[-1]),
           "n_iter_run": int(model.n_iter_)}
    if hit.size == 0:
        out.update(status="not reached", time_s=t_cap, n_iter=None)
        return out
    k = int(hit[0])
    estimate = t0 + (t_cap - t0) * k / max(1, model.n_iter_)
    if estimate <= task["direct_seconds"]:
        t_k, _ = _timed(_fit, q, solver, k, data, "float64")
        out.update(status="reached", n_iter=k, time_s=t_k, timing="direct")
    else:
        out.update(status="reached", n_iter=k, time_s=estimate, timing="interpolated")
    return out


def _solver_target_callback(task, data, mem):
    """Wall time from the ``fit`` call to the callback of the first iterate at the target."""
    q, solver, target, cap = task["q"], task["solver"], task["target"], task["caps"][-1]
    found = {}

    def callback(iteration, coefficients, templates, terms):
        if terms["chi2"] <= target:
            found.update(n_iter=int(iteration), time_s=time.perf_counter() - t0)
            return True
        return False

    t0 = time.perf_counter()
    model = _fit(q, solver, cap, data, "float64", callback=callback)
    t_run = time.perf_counter() - t0
    out = {"cap": cap, "time_run_s": t_run, "extra_mib": mem.extra_mib(),
           "memory_method": mem.method, "chi2_final": float(model.chi2_[-1]),
           "n_iter_run": int(model.n_iter_), "timing": "callback"}
    if not found:
        out.update(status="not reached", time_s=t_run, n_iter=None)
    else:
        out.update(status="reached", **found)
    return out


def _task_transform(task):
    from specnmf import SpectralNMF, chi2

    q = task["q"]
    _warm_imports(q, "nearly", transform=True)
    data = _load(task, truth=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(SpectralNMF, "from_templates"):
            model = SpectralNMF.from_templates(data["T_true"])
        else:
            model = SpectralNMF(q, max_iter=0, tol=0).fit(
                data["X"], ivar=data["ivar"], templates=data["T_true"],
                coefficients=data["C_true"])
    X, ivar = data["X"], data["ivar"]
    mem = _PeakMemory()
    mem.start()
    model.transform(X, ivar=ivar)                 # warm-up: first touch
    times = []
    for _ in range(task["repeats"]):
        t, C = _timed(lambda: model.transform(X, ivar=ivar))
        times.append(t)
    return {"time_s": float(np.median(times)), "times_s": times,
            "extra_mib": mem.extra_mib(), "memory_method": mem.method,
            "coefficients": np.asarray(C, dtype=np.float64).tolist(),
            "chi2": chi2(X, C, model.templates_, ivar=ivar)}


def _nnls_loop(X, ivar, T):
    """The obvious reference: one :func:`scipy.optimize.nnls` per spectrum on its observed pixels."""
    from scipy.optimize import nnls

    C = np.zeros((X.shape[0], T.shape[0]))
    for i in range(X.shape[0]):
        w = np.sqrt(ivar[i])
        obs = w > 0
        if obs.any():
            C[i], _ = nnls((T[:, obs] * w[obs]).T, X[i, obs] * w[obs])
    return C


def _task_nnls_loop(task):
    from specnmf import chi2

    _warm_imports(task["q"])
    data = _load(task, truth=True)
    X, ivar, T = data["X"], data["ivar"], data["T_true"]
    _nnls_loop(X[:1], ivar[:1], T)           # warm-up: import scipy.optimize
    mem = _PeakMemory()
    mem.start()
    times = []
    for _ in range(task["repeats"]):
        t, C = _timed(_nnls_loop, X, ivar, T)
        times.append(t)
    return {"time_s": float(np.median(times)), "times_s": times,
            "extra_mib": mem.extra_mib(), "memory_method": mem.method,
            "coefficients": C.tolist(), "chi2": chi2(X, C, T, ivar=ivar)}


_TASKS = {
    "periter": _task_periter,
    "iterates": _task_iterates,
    "baseline_target": _task_baseline_target,
    "solver_target": _task_solver_target,
    "transform": _task_transform,
    "nnls_loop": _task_nnls_loop,
}


def _set_kernel_threads(n):
    """The thread limit for specnmf's numba kernels (BLAS is limited separately)."""
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def _child(task):
    """Entry point of a child process: run one measurement under a thread limit."""
    import traceback

    from threadpoolctl import threadpool_limits

    logging.basicConfig(level=logging.WARNING)
    _set_kernel_threads(task.get("threads", 1))
    # another benchmark script names the module whose _TASKS hold its kinds
    tasks = importlib.import_module(task["module"])._TASKS if "module" in task else _TASKS
    try:
        with threadpool_limits(limits=task.get("threads", 1)):
            out = tasks[task["kind"]](task)
        out["ok"] = True
    except Exception as exc:  # report, never abort the whole run
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()}
    return out


# ---------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------
def _measure(task):
    """Run ``task`` in a fresh spawned process and return its result dict."""
    ctx = multiprocessing.get_context("spawn")
    label = " ".join(f"{k}={v}" for k, v in task.items() if k not in ("target", "module"))
    logger.info("measuring %s", label)
    t = time.perf_counter()
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            out = pool.submit(_child, task).result()
    except Exception as exc:  # a crashed child (e.g. killed for memory)
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out["wall_s"] = time.perf_counter() - t
    if not out.get("ok"):
        logger.warning("%s failed: %s", label, out.get("error"))
    return out


def run_periter(cfg):
    c = cfg["periter"]
    base = {k: c[k] for k in ("n", "d", "q", "iters", "m1", "m2", "repeats")}
    rows = []
    for dtype in c["dtypes"]:
        for threads in c["threads"]:
            common = dict(base, dtype=dtype, threads=threads)
            b = _measure(dict(common, kind="periter", impl="baseline"))
            s = _measure(dict(common, kind="periter", impl="specnmf", solver="nearly"))
            rows.append({"dtype": dtype, "threads": threads, "baseline": b, "specnmf": s})
    iterates = {}
    for dtype in c["dtypes"]:
        iterates[dtype] = _measure(dict(n=c["n"], d=c["d"], q=c["q"], dtype=dtype, threads=1,
                                        kind="iterates", m=c["check_iter"]))
    return {"config": c, "rows": rows, "iterates": iterates}


def run_target(cfg):
    c = cfg["target"]
    size = dict(n=c["n"], d=c["d"], q=c["q"], threads=c["threads"])
    base = _measure(dict(size, kind="baseline_target", n_iter=c["baseline_iter"]))
    solvers = {}
    if base.get("ok"):
        for solver in c["solvers"]:
            caps = c["cap"].get(solver, c["cap"]["default"])
            solvers[solver] = _measure(dict(size, kind="solver_target", solver=solver, caps=caps,
                                            target=base["chi2"],
                                            direct_seconds=c["direct_seconds"]))
    return {"config": c, "baseline": base, "solvers": solvers}


def run_transform(cfg):
    c = cfg["transform"]
    size = dict(n=c["n"], d=c["d"], q=c["q"])
    # the loop is single-threaded by nature; specnmf on one thread and on all
    spec = {t: _measure(dict(size, threads=t, kind="transform", repeats=c["repeats"]))
            for t in c["threads"]}
    loop = _measure(dict(size, threads=1, kind="nnls_loop", repeats=c["loop_repeats"]))
    out = {"config": c, "specnmf": spec, "loop": loop}
    b = np.asarray(loop.pop("coefficients")) if loop.get("ok") else None
    for t, res in spec.items():
        a = np.asarray(res.pop("coefficients")) if res.get("ok") else None
        if a is not None and b is not None:
            res["coefficients_max_rel"] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
            res["chi2_rel"] = float(abs(res["chi2"] - loop["chi2"]) / loop["chi2"])
    return out


def _slope(x, t):
    x, t = np.asarray(x, float), np.asarray(t, float)
    good = np.isfinite(t) & (t > 0)
    if good.sum() < 2:
        return None
    return float(np.polyfit(np.log(x[good]), np.log(t[good]), 1)[0])


def run_sweep(cfg, var):
    c = cfg["sweep"]
    points = []
    for value in c[var]:
        size = dict(c["fixed"], **{var: value})
        common = dict(size, dtype="float64", threads=1, iters=c["iters"], m1=c["m1"],
                      m2=c["m2"], repeats=c["repeats"], kind="periter")
        b = _measure(dict(common, impl="baseline"))
        s = _measure(dict(common, impl="specnmf", solver="nearly"))
        points.append({var: value, "baseline": b, "specnmf": s})

    def times(impl):
        return [p[impl]["per_iter_s"] if p[impl].get("ok") else float("nan") for p in points]

    return {"variable": var, "fixed": c["fixed"], "points": points,
            "exponent": {"baseline": _slope(c[var], times("baseline")),
                         "specnmf": _slope(c[var], times("specnmf"))}}


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------
def _md(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _err(res):
    """Short table cell for a failed measurement (the full message is in results.json)."""
    return "error: " + str(res.get("error", "?")).split(":")[0]


def _ms(res):
    return f"{1e3 * res['per_iter_s']:.1f}" if res.get("ok") else _err(res)


def _mib(res):
    return f"{res['extra_mib']:.0f}" if res.get("ok") and "extra_mib" in res else "-"


def _ratio(a, b):
    if not (a and b) or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return "-"
    return f"{a / b:.2f}x"


def _per_iter_ratio(b, s):
    if not (b.get("ok") and s.get("ok")):
        return "-"
    return _ratio(b["per_iter_s"], s["per_iter_s"])


def render(results):
    """The markdown report of a results dict."""
    out = []
    meta = results["meta"]
    out.append(f"Measured {meta['date']} on {meta['machine']} ({meta['cpu_count']} CPUs), "
               f"numpy {meta['numpy']}, BLAS {meta['blas']}, kernels {meta.get('kernels', '?')}, specnmf {meta['specnmf']} "
               f"(commit {meta['commit']}); load average {meta['load_before']} before, "
               f"{meta['load_after']} after; {meta['mode']} run, "
               f"{meta['total_s']:.0f} s.  Ratios are baseline time / specnmf time.")

    if "periter" in results:
        r = results["periter"]
        c = r["config"]
        out.append(f"\n### Time per iteration, Nearly-NMF (d={c['d']}, n={c['n']}, q={c['q']})\n")
        b64 = {row["threads"]: row["baseline"] for row in r["rows"]
               if row["dtype"] == "float64"}
        rows = []
        for row in r["rows"]:
            b, s = row["baseline"], row["specnmf"]
            ref = b64.get(row["threads"], {})
            it = r["iterates"].get(row["dtype"], {})
            rows.append([row["dtype"], row["threads"], _ms(b), _ms(s), _per_iter_ratio(b, s),
                         _per_iter_ratio(ref, s) if row["dtype"] != "float64" else "",
                         _mib(b), _mib(s),
                         f"{it['max_rel']:.1e}" if it.get("ok") else _err(it)])
        out.append(_md(["dtype", "threads", "baseline ms/iter", "specnmf ms/iter", "ratio",
                        "ratio vs float64 baseline", "baseline extra MiB",
                        "specnmf extra MiB",
                        f"max rel. diff. of iterates after {c['check_iter']} iter."], rows))

    if "target" in results:
        r = results["target"]
        c = r["config"]
        b = r["baseline"]
        out.append(f"\n### Time to the baseline's {c['baseline_iter']}-iteration chi^2 "
                   f"(n={c['n']}, d={c['d']}, q={c['q']}, {c['threads']} thread)\n")
        if not b.get("ok"):
            out.append(f"baseline failed: {b.get('error')}")  # no target without it
        else:
            rows = [["baseline (published structure)", c["baseline_iter"],
                     f"{b['time_s']:.2f}", "1.00x", f"{b['chi2']:.6g}", _mib(b), ""]]
            for solver, s in r["solvers"].items():
                if not s.get("ok"):
                    rows.append([solver, "-", "-", "-", "-", "-", _err(s)])
                elif s["status"] == "rejected":
                    rows.append([solver, "-", "-", "-", "-", "-", "not available"])
                elif s["status"] == "not reached":
                    rows.append([solver, f"> {s['cap']}", f"> {s['time_s']:.2f}",
                                 f"< {b['time_s'] / s['time_s']:.2f}x",
                                 f"{s['chi2_final']:.6g}", _mib(s), "target not reached"])
                else:
                    rows.append([solver, s["n_iter"], f"{s['time_s']:.2f}",
                                 _ratio(b["time_s"], s["time_s"]), f"{s['chi2_final']:.6g}",
                                 _mib(s), s["timing"]])
            out.append(_md(["solver", "iterations to target", "seconds", "ratio",
                            "final chi^2", "extra MiB", "note"], rows))

    if "transform" in results:
        r = results["transform"]
        c = r["config"]
        spec, loop = r["specnmf"], r["loop"]
        out.append(f"\n### transform: batched weighted NNLS (n={c['n']}, d={c['d']}, "
                   f"q={c['q']}; median of {c['repeats']} calls, the loop of {c['loop_repeats']})\n")
        rows = [["scipy.optimize.nnls loop", 1, f"{loop['time_s']:.4f}" if loop.get("ok")
                 else _err(loop), "1.00x", _mib(loop), ""]]
        for t, s in spec.items():
            diff = (f"{s['coefficients_max_rel']:.1e} / {s['chi2_rel']:.1e}"
                    if "coefficients_max_rel" in s else "")
            rows.append(["SpectralNMF.transform", t,
                         f"{s['time_s']:.4f}" if s.get("ok") else _err(s),
                         _ratio(loop.get("time_s"), s.get("time_s")), _mib(s), diff])
        out.append(_md(["method", "threads", "seconds", "ratio", "extra MiB",
                        "coefficient / chi^2 difference"], rows))
        out.append("\nDifferences: largest coefficient difference over the largest "
                   "coefficient, and relative difference of the total chi^2.")

    sweeps = [results[k] for k in ("sweep_n", "sweep_d", "sweep_q") if k in results]
    for sw in sweeps:
        var = sw["variable"]
        fixed = ", ".join(f"{k}={v}" for k, v in sw["fixed"].items() if k != var)
        out.append(f"\n### Fig. 8 sweep in {var} ({fixed}; float64, 1 thread)\n")
        rows = [[p[var], _ms(p["baseline"]), _ms(p["specnmf"]),
                 _per_iter_ratio(p["baseline"], p["specnmf"]), _mib(p["baseline"]),
                 _mib(p["specnmf"])] for p in sw["points"]]
        out.append(_md([var, "baseline ms/iter", "specnmf ms/iter", "ratio",
                        "baseline extra MiB", "specnmf extra MiB"], rows))
    if sweeps:
        out.append("\n### Scaling exponents (log-log slope of time per iteration)\n")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        out.append(_md(["variable", "baseline", "specnmf nearly"],
                       [[sw["variable"], fmt(sw["exponent"]["baseline"]),
                         fmt(sw["exponent"]["specnmf"])] for sw in sweeps]))
    return "\n".join(out) + "\n"


def _meta(mode):
    from threadpoolctl import threadpool_info

    import specnmf

    blas = [f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
            if i.get("user_api") == "blas"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=HERE, capture_output=True, text=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.system()} {platform.machine()} "
                       f"{platform.processor() or ''}".strip(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": ", ".join(blas) or "unknown",
            "kernels": _kernels_meta(),
            "specnmf": specnmf.__version__, "commit": commit, "mode": mode,
            "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
            "load_before": [round(v, 2) for v in os.getloadavg()]}


def _kernels_meta():
    from specnmf import _kernels

    if not _kernels.available():
        return "numpy/BLAS only (numba not installed or disabled)"
    import numba

    threshold = os.environ.get("SPECNMF_NUMBA_MIN_WORK", f"{_kernels.MIN_WORK:g}")
    return (f"numba {numba.__version__}, used from {threshold} element-passes "
            "(SPECNMF_NUMBA_MIN_WORK)")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer sweep points, iterations and repeats (~3 minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes to check the harness in seconds (numbers meaningless)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="which measurements to run (default: all)")
    parser.add_argument("--output-dir", type=Path, default=HERE,
                        help="where results.json and results.md (results.partial.* for a "
                             "quick, smoke or partial run) are written")
    parser.add_argument("--as-shipped", action="store_true",
                        help="keep specnmf's work threshold for its compiled kernels (small "
                             "calls on numpy/BLAS) instead of measuring the kernels")
    args = parser.parse_args(argv)
    if not args.as_shipped:
        os.environ["SPECNMF_NUMBA_MIN_WORK"] = "0"     # inherited by the spawned children
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)

    cfg = make_config(args.quick, args.smoke)
    results = {"meta": _meta("smoke" if args.smoke else "quick" if args.quick else "full")}
    t = time.perf_counter()
    runners = {"periter": run_periter, "target": run_target, "transform": run_transform,
               "sweep_n": lambda c: run_sweep(c, "n"), "sweep_d": lambda c: run_sweep(c, "d"),
               "sweep_q": lambda c: run_sweep(c, "q")}
    for case in CASES:
        if case in args.cases:
            results[case] = runners[case](cfg)
    results["meta"]["total_s"] = time.perf_counter() - t
    results["meta"]["load_after"] = [round(v, 2) for v in os.getloadavg()]

    table = render(results)
    full = not (args.quick or args.smoke) and set(args.cases) == set(CASES)
    stem = "results" if full else "results.partial"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(
        json.dumps(_jsonable(results), indent=1) + "\n")
    (args.output_dir / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
