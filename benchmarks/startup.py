r"""Start-up cost of a new process: import, first ``fit()`` per solver, first ``transform()``, CLI.

    python -m benchmarks.startup [--n 500] [--d 4000] [--q 5] [--max-iter 5]
                                 [--solvers nearly shift clip anls apg] [--out FILE]

numba compiles specnmf's kernels on first use and caches the machine code on
disk.  This measures, each in a fresh child process, with ``NUMBA_CACHE_DIR``
pointing at a directory of its own:

* **cold**: the directory empty (first process on a machine: compiles);
* **warm**: a second process with the same directory (loads from the cache).

For each task the child reports the time of ``import specnmf``, of the first
call and of a second, identical call in the same process; "first - second" is
the start-up overhead (compiling or loading kernels), the second call being
the steady-state cost of the work itself.  The tasks are ``fit`` with each
solver (``max_iter`` iterations, ``tol=0``) and ``transform`` on simulated
survey-like spectra (:mod:`benchmarks.data`: 60 % missing, 10 % negative
flux).  The CLI row is the wall time of the whole command
``python -m specnmf transform model.fits spectra.fits -o c.fits``
(interpreter start, import, reading both files, transform, writing).

Writes ``benchmarks/results_startup.md`` (``--out``).  The numbers depend on
the machine's load; the ratios cold/warm are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("nearly", "shift", "clip", "anls", "apg")

# run in the child: times import, then a first and a second identical call
_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import specnmf
t_import = time.perf_counter() - t0
import numpy as np
task, data, model_path, max_iter = sys.argv[1:5]
with np.load(data) as f:
    X, ivar = f["X"], f["ivar"]
q = int(sys.argv[5])
times = []
if task == "transform":
    model = specnmf.load(model_path)
    for _ in range(2):
        t0 = time.perf_counter()
        model.transform(X, ivar=ivar)
        times.append(time.perf_counter() - t0)
else:
    for _ in range(2):
        model = specnmf.SpectralNMF(q, solver=task, max_iter=int(max_iter), tol=0.0,
                                    random_state=0)
        t0 = time.perf_counter()
        model.fit(X, ivar=ivar)
        times.append(time.perf_counter() - t0)
print(json.dumps({"import": t_import, "first": times[0], "second": times[1]}))
"""


def _env(cache_dir):
    env = dict(os.environ)
    env.pop("SPECNMF_DISABLE_NUMBA", None)
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _child(task, data, model_path, max_iter, q, cache_dir):
    out = subprocess.run([sys.executable, "-c", _CHILD, task, str(data), str(model_path),
                          str(max_iter), str(q)],
                         env=_env(cache_dir), cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cli(model_path, spectra_path, out_path, cache_dir):
    if out_path.exists():
        out_path.unlink()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "specnmf", "transform", str(model_path),
                    str(spectra_path), "-o", str(out_path)],
                   env=_env(cache_dir), cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0


def _files(tmp, n, d, q):
    """Simulated spectra (npz for the children, FITS for the CLI) and a saved model."""
    from benchmarks.data import simulate_spectra
    from specnmf import SpectralNMF
    from specnmf.io import write_spectra

    X, ivar = simulate_spectra(n, d, q, random_state=0)
    data = tmp / "spectra.npz"
    np.savez(data, X=X, ivar=ivar)
    spectra = tmp / "spectra.fits"
    write_spectra(spectra, X, ivar=ivar)
    # the model is fitted here without the kernels, so that this process
    # never touches the children's numba caches
    os.environ["SPECNMF_DISABLE_NUMBA"] = "1"
    try:
        model = SpectralNMF(q, max_iter=50, random_state=0).fit(X, ivar=ivar)
    finally:
        del os.environ["SPECNMF_DISABLE_NUMBA"]
    model_path = tmp / "model.fits"
    model.save(model_path)
    return data, spectra, model_path


def measure(n=500, d=4000, q=5, max_iter=5, solvers=SOLVERS, log=print):
    """Cold and warm timings of every task; a dict of rows ``{task: {"cold": ..., "warm": ...}}``."""
    rows = {}
    with tempfile.TemporaryDirectory(prefix="specnmf-startup-") as tmp:
        tmp = Path(tmp)
        data, spectra, model_path = _files(tmp, n, d, q)
        tasks = ["transform"] + [s for s in solvers]
        for task in tasks:
            cache = tmp / f"cache-{task}"
            cache.mkdir()
            row = {}
            for state in ("cold", "warm"):
                row[state] = _child(task, data, model_path, max_iter, q, cache)
                log(f"{task:>10} {state}: " + ", ".join(f"{k} {v:.3f} s"
                                                       for k, v in row[state].items()))
            rows[task] = row
        cache = tmp / "cache-cli"
        cache.mkdir()
        row = {}
        for state in ("cold", "warm"):
            row[state] = {"total": _cli(model_path, spectra, tmp / "c.fits", cache)}
            log(f"{'CLI':>10} {state}: total {row[state]['total']:.3f} s")
        rows["cli"] = row
    return rows


def table(rows, n, d, q, max_iter):
    lines = [f"Fresh processes, {n} x {d} spectra, k={q}; fit: max_iter={max_iter}, tol=0.  "
             "Seconds.  *first*/*second*: first and second identical call in one process; "
             "*overhead* = first - second (compiling or loading kernels).",
             "",
             "| task | cache | import | first call | second call | overhead |",
             "|---|---|---:|---:|---:|---:|"]
    for task, row in rows.items():
        for state in ("cold", "warm"):
            r = row[state]
            if task == "cli":
                lines.append(f"| `specnmf transform` (whole command) | {state} | | "
                             f"{r['total']:.2f} | | |")
            else:
                name = "transform()" if task == "transform" else f"fit(), solver={task!r}"
                lines.append(f"| {name} | {state} | {r['import']:.2f} | {r['first']:.3f} | "
                             f"{r['second']:.3f} | {r['first'] - r['second']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--d", type=int, default=4000)
    parser.add_argument("--q", type=int, default=5)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results_startup.md"))
    args = parser.parse_args(argv)
    import numba

    rows = measure(args.n, args.d, args.q, args.max_iter, args.solvers)
    text = table(rows, args.n, args.d, args.q, args.max_iter)
    head = (f"# Start-up times (`python -m benchmarks.startup`)\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python "
            f"{platform.python_version()}, numba {numba.__version__}, {os.cpu_count()} CPUs "
            f"(load average {os.getloadavg()[0]:.1f} at the end).\n\n")
    print()
    print(text)
    Path(args.out).write_text(head + text + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
