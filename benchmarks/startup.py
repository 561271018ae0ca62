r"""Start-up cost of a new process: import, first ``fit()`` per solver, first ``transform()``, CLI.

    python -m benchmarks.startup [--n 500] [--d 4000] [--q 5] [--max-iter 5]
                                 [--solvers nearly shift clip anls apg] [--out FILE]

specnmf writes its kernels' source to its cache directory on first use, and
numba compiles them and caches the machine code on disk.  This measures, each
in a fresh child process, with ``NUMBA_CACHE_DIR`` and ``SPECNMF_CACHE_DIR``
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
import resource
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
import json, resource, sys, time

def clock():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime

def since(start):
    now = clock()
    return now[0] - start[0], now[1] - start[1]

t0 = clock()
import specnmf
t_import = since(t0)
numba_at_import = "numba" in sys.modules
import numpy as np
task, data, model_path, max_iter = sys.argv[1:5]
with np.load(data) as f:
    X, ivar = f["X"], f["ivar"]
q = int(sys.argv[5])
times = []
if task == "transform":
    model = specnmf.load(model_path)
    for _ in range(2):
        t0 = clock()
        model.transform(X, ivar=ivar)
        times.append(since(t0))
else:
    for _ in range(2):
        model = specnmf.SpectralNMF(q, solver=task, max_iter=int(max_iter), tol=0.0,
                                    random_state=0)
        t0 = clock()
        model.fit(X, ivar=ivar)
        times.append(since(t0))
print(json.dumps({"import": t_import, "first": times[0], "second": times[1],
                  "numba_at_import": numba_at_import}))
"""


def _env(cache_dir):
    env = dict(os.environ)
    env.pop("SPECNMF_DISABLE_NUMBA", None)
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env["SPECNMF_CACHE_DIR"] = str(cache_dir)   # the kernels' expanded source
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _child(task, data, model_path, max_iter, q, cache_dir):
    out = subprocess.run([sys.executable, "-c", _CHILD, task, str(data), str(model_path),
                          str(max_iter), str(q)],
                         env=_env(cache_dir), cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cli(model_path, spectra_path, out_path, cache_dir):
    """Wall and CPU seconds of ``python -m specnmf transform`` (the whole process)."""
    if out_path.exists():
        out_path.unlink()
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, "-m", "specnmf", "transform", str(model_path),
                    str(spectra_path), "-o", str(out_path)],
                   env=_env(cache_dir), cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, _children_cpu() - c0


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


def _best(runs):
    """Per quantity, the run with the least wall time (the least disturbed by other load)."""
    return {key: min((r[key] for r in runs), key=lambda v: v[0]) if isinstance(runs[0][key], list)
            else runs[0][key] for key in runs[0]}


def measure(n=500, d=4000, q=5, max_iter=5, solvers=SOLVERS, repeat=3, log=print):
    """Cold and warm timings of every task: ``{task: {"cold": ..., "warm": ...}}``.

    Each value is a dict of (wall, cpu) seconds: "import", "first", "second"
    (CLI: "total").  Warm: the best of ``repeat`` processes.
    """
    rows = {}
    with tempfile.TemporaryDirectory(prefix="specnmf-startup-") as tmp:
        tmp = Path(tmp)
        data, spectra, model_path = _files(tmp, n, d, q)
        for task in ["transform", *solvers, "cli"]:
            cache = tmp / f"cache-{task}"
            cache.mkdir()
            runs = []
            for i in range(1 + repeat):
                if task == "cli":
                    runs.append({"total": list(_cli(model_path, spectra, tmp / "c.fits", cache))})
                else:
                    runs.append(_child(task, data, model_path, max_iter, q, cache))
                state = "cold" if i == 0 else "warm"
                log(f"{task:>10} {state}: " + ", ".join(
                    f"{k} {v[0]:.3f} s (cpu {v[1]:.3f})" for k, v in runs[-1].items()
                    if isinstance(v, list)))
            rows[task] = {"cold": runs[0], "warm": _best(runs[1:])}
    return rows


def _pair(v):
    return f"{v[0]:.2f} ({v[1]:.2f})"


def table(rows, n, d, q, max_iter, repeat):
    lines = [f"Fresh processes, {n} x {d} spectra, k={q}; fit: max_iter={max_iter}, tol=0.  "
             "Wall seconds (CPU seconds, all threads, in brackets).  *cold*: empty numba cache; "
             f"*warm*: best of {repeat} later processes.  *first*/*second*: first and second "
             "identical call in one process; *overhead* = first - second: compiling or "
             "loading kernels (and importing numba on first use).",
             "",
             "| task | cache | import specnmf | first call | second call | overhead |",
             "|---|---|---:|---:|---:|---:|"]
    for task, row in rows.items():
        for state in ("cold", "warm"):
            r = row[state]
            if task == "cli":
                lines.append(f"| `python -m specnmf transform` (whole process) | {state} | | "
                             f"{_pair(r['total'])} | | |")
            else:
                name = "transform()" if task == "transform" else f"fit(), solver={task!r}"
                over = [a - b for a, b in zip(r["first"], r["second"])]
                lines.append(f"| {name} | {state} | {_pair(r['import'])} | {_pair(r['first'])} | "
                             f"{_pair(r['second'])} | {_pair(over)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--d", type=int, default=4000)
    parser.add_argument("--q", type=int, default=5)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--repeat", type=int, default=3, help="warm processes per task")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results_startup.md"))
    args = parser.parse_args(argv)
    import numba

    rows = measure(args.n, args.d, args.q, args.max_iter, args.solvers, args.repeat)
    text = table(rows, args.n, args.d, args.q, args.max_iter, args.repeat)
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
