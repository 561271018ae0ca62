r"""Fitting spectra streamed from an HDF5 file larger than we would like in memory.

    python -m benchmarks.scale_hdf5 [--n 60000] [--d 8000] [--q 5] [--iters 5]
                                    [--block-size 2000] [--solvers nearly] [--dir DIR]

1. writes a float32 HDF5 file with datasets ``flux`` and ``ivar`` of shape
   (n, d) -- by default 60 000 x 8 000, about 3.8 GB -- generated block by
   block (:func:`write_hdf5`), so generating it needs little memory either;
2. for each solver, fits it *in a child process* that opens the file with h5py
   and passes the datasets to ``SpectralNMF(block_size=...)``, so the data are
   streamed; the child reports the wall time of every iteration (through the
   ``callback``) and the parent reads the child's peak resident memory from
   ``resource.getrusage(RUSAGE_CHILDREN)`` once the child has exited;
3. deletes the file (``--keep`` keeps it).

The simulated data imitate the paper's quasar set (Green & Bailey 2024,
sec. III): a non-negative rank-q truth, one contiguous observed window per
spectrum (a rest-frame coverage, ~60 % of the matrix missing, flux NaN
there), heteroscedastic Gaussian noise calibrated so that ~10 % of the
observed fluxes are negative.

The time of one iteration is the median interval between consecutive
callbacks, leaving out the first (it includes the validating scan and the
start) and the last (the loop's final pass only measures chi^2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["simulate_templates", "simulate_block", "calibrate_noise", "write_hdf5",
           "fit_in_child", "fit_each", "peak_rss_gib"]

#: observed window length, as a fraction of the grid, is drawn from f +- this
_WINDOW_JITTER = 0.1


def simulate_templates(q, d, seed=0):
    """Non-negative, spectrum-like templates of shape (q, d).

    A smooth continuum with a few broad emission lines and troughs that reach
    close to 0, normalised to mean 1; the troughs are where noise makes the
    flux negative.
    """
    rng = np.random.default_rng([seed, 7])
    u = np.linspace(0.0, 1.0, d)
    T = np.empty((q, d))
    for k in range(q):
        cont = np.exp(rng.uniform(-1.5, 1.5) * (u - 0.5))
        lines = np.zeros(d)
        for _ in range(6):
            c, w = rng.uniform(0.02, 0.98), rng.uniform(0.003, 0.02)
            lines += rng.uniform(0.5, 4.0) * np.exp(-0.5 * ((u - c) / w) ** 2)
        trough = np.ones(d)
        for _ in range(4):
            c, w = rng.uniform(0.05, 0.95), rng.uniform(0.01, 0.05)
            trough *= 1.0 - 0.97 * np.exp(-0.5 * ((u - c) / w) ** 2)
        T[k] = (cont + lines) * trough
        T[k] /= T[k].mean()
    return T


def simulate_block(T, n_rows, *, observed_fraction, noise, seed, block_index):
    """One block of spectra: ``(X, ivar)`` float32 of shape (n_rows, d).

    ``X`` is NaN where ``ivar == 0`` (outside each spectrum's window).
    """
    rng = np.random.default_rng([seed, 11, block_index])
    q, d = T.shape
    C = rng.gamma(2.0, 0.5, size=(n_rows, q)) * (rng.uniform(size=(n_rows, q)) < 0.8)
    truth = (C @ T).astype(np.float32)
    level = truth.mean(axis=1, keepdims=True) + np.float32(1e-3)
    # heteroscedastic: a per-spectrum level times a smooth per-pixel throughput
    throughput = (1.0 + 0.5 * np.sin(np.linspace(0.0, 3.0 * np.pi, d))).astype(np.float32)
    sigma = (noise * level * rng.uniform(0.5, 2.0, size=(n_rows, 1))).astype(np.float32) * throughput
    X = truth + sigma * rng.standard_normal(size=(n_rows, d), dtype=np.float32)
    f = np.clip(rng.uniform(observed_fraction - _WINDOW_JITTER, observed_fraction + _WINDOW_JITTER,
                            size=n_rows), 0.02, 1.0)
    length = np.maximum(1, np.round(f * d)).astype(np.int64)
    start = rng.integers(0, d - length + 1)
    j = np.arange(d)
    observed = (j >= start[:, None]) & (j < (start + length)[:, None])
    ivar = np.where(observed, 1.0 / (sigma * sigma), 0.0).astype(np.float32)
    X[~observed] = np.nan
    return X, ivar


def calibrate_noise(T, *, observed_fraction, negative_fraction, seed, n_rows=400):
    """Noise level giving ``negative_fraction`` of negative observed fluxes (bisection)."""
    lo, hi = 1e-3, 20.0
    for _ in range(30):
        mid = np.sqrt(lo * hi)
        X, ivar = simulate_block(T, n_rows, observed_fraction=observed_fraction, noise=mid,
                                 seed=seed, block_index=2**31)
        frac = float(np.mean(X[ivar > 0] < 0))
        lo, hi = (mid, hi) if frac < negative_fraction else (lo, mid)
    return float(np.sqrt(lo * hi))


def write_hdf5(path, n, d, *, q=5, observed_fraction=0.4, negative_fraction=0.10, seed=0,
               rows_per_write=2000, verbose=True):
    """Write simulated ``flux`` and ``ivar`` (float32, (n, d)) to HDF5, block by block.

    Returns a dict describing the file (shape, sizes, measured fractions).
    """
    import h5py

    T = simulate_templates(q, d, seed)
    noise = calibrate_noise(T, observed_fraction=observed_fraction,
                            negative_fraction=negative_fraction, seed=seed)
    chunk_rows = max(1, min(n, (2 << 20) // (4 * d)))  # ~2 MB HDF5 chunks of whole spectra
    n_obs = n_neg = 0
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        flux = f.create_dataset("flux", shape=(n, d), dtype="f4", chunks=(chunk_rows, d))
        ivar = f.create_dataset("ivar", shape=(n, d), dtype="f4", chunks=(chunk_rows, d))
        for b, s in enumerate(range(0, n, rows_per_write)):
            e = min(n, s + rows_per_write)
            Xb, ib = simulate_block(T, e - s, observed_fraction=observed_fraction, noise=noise,
                                    seed=seed, block_index=b)
            flux[s:e] = Xb
            ivar[s:e] = ib
            obs = ib > 0
            n_obs += int(obs.sum())
            n_neg += int((Xb[obs] < 0).sum())
            if verbose and b % 10 == 0:
                print(f"  wrote spectra {s}..{e - 1} of {n}", file=sys.stderr, flush=True)
    return {
        "path": str(path), "n_spectra": n, "n_pixels": d, "n_components_truth": q,
        "file_gib": os.path.getsize(path) / 2**30,
        "missing_fraction": 1.0 - n_obs / (n * d),
        "negative_fraction_of_observed": n_neg / max(1, n_obs),
        "write_seconds": time.perf_counter() - t0,
    }


_CHILD = r"""
import json, resource, sys, time
import h5py
import numpy as np
from specnmf import SpectralNMF

path, solver, q, iters, block_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
import specnmf.engine as E

stamps, passes = [], []
def callback(it, C, T, terms):
    stamps.append((it, time.perf_counter(), terms["chi2"]))

def timed(method, label):
    def wrapper(self, *args, **kwargs):
        t = time.perf_counter()
        out = method(self, *args, **kwargs)
        fn = args[1] if len(args) > 1 else None
        name = getattr(getattr(fn, "func", fn), "__name__", label)
        passes.append((name, time.perf_counter() - t))
        return out
    return wrapper

# time every pass over the file: "_block_pass" is a full iteration's pass,
# "_block_chi2" the loop's final measuring pass, "scan" the validating one
E.Streamed.run_pass = timed(E.Engine.run_pass, "pass")
E.Streamed.scan = timed(E.Engine.scan, "scan")
t0 = time.perf_counter()
with h5py.File(path, "r") as f:
    model = SpectralNMF(q, solver=solver, max_iter=iters, tol=0, block_size=block_size,
                        dtype="float32", random_state=0)
    model.fit(f["flux"], ivar=f["ivar"], callback=callback)
t1 = time.perf_counter()
times = [b[1] - a[1] for a, b in zip(stamps[:-1], stamps[1:])]
print(json.dumps({
    "solver": solver, "iterations": model.n_iter_, "fit_seconds": t1 - t0,
    "first_callback_seconds": stamps[0][1] - t0 if stamps else None,
    "iteration_seconds": times,
    "pass_seconds": passes,
    "chi2": [float(v) for v in model.chi2_],
    "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def emit_report(report, out=None):
    """Print the JSON report (and write it to ``out`` if given); returns it."""
    text = json.dumps(report, indent=2)
    if out:
        Path(out).write_text(text)
    print(text)
    return report


def fit_in_child(path, solver, *, q, iters, block_size, threads=None):
    """Fit in a fresh interpreter; return its report plus its peak RSS (GiB)."""
    env = dict(os.environ)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), solver, str(q), str(iters),
                           str(block_size)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fit of {solver} failed:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN is the largest peak among all waited-for children so far;
    # the child's own RUSAGE_SELF is exact, the other a cross-check
    report["peak_rss_gib"] = report["self_maxrss_kib"] / 2**20
    report["children_maxrss_gib"] = after / 2**20 if after > before else None
    full = [t for name, t in report["pass_seconds"] if name == "_block_pass"]
    report["full_pass_seconds_median"] = float(np.median(full)) if full else None
    # callback intervals between two full passes; else the full passes themselves
    per = report["iteration_seconds"][:-1] or full
    report["seconds_per_iteration"] = float(np.median(per)) if per else None
    return report


def fit_each(path, report, solvers, *, q, iters, block_size):
    """:func:`fit_in_child` for each solver, appending its report (or its error)
    and the load average after it to ``report["fits"]``."""
    for solver in solvers:
        print(f"fitting {solver}: {iters} iterations, block_size={block_size}",
              file=sys.stderr, flush=True)
        try:
            fit = fit_in_child(path, solver, q=q, iters=iters, block_size=block_size)
        except RuntimeError as exc:
            fit = {"solver": solver, "error": str(exc)[-2000:]}
            print(f"  {solver} failed: {exc}", file=sys.stderr, flush=True)
        else:
            per, first = fit["seconds_per_iteration"], fit["first_callback_seconds"]
            print(f"  {solver}: {'-' if per is None else f'{per:.2f}'} s/iteration, peak RSS "
                  f"{fit['peak_rss_gib']:.2f} GiB, first callback after "
                  f"{'-' if first is None else f'{first:.1f}'} s", file=sys.stderr, flush=True)
        fit["load_after"] = _load()
        report["fits"].append(fit)


def peak_rss_gib():
    """Peak resident memory of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _load():
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--d", type=int, default=8_000)
    p.add_argument("--q", type=int, default=5)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--block-size", type=int, default=2000)
    p.add_argument("--solvers", nargs="+", default=["nearly"])
    p.add_argument("--missing", type=float, default=0.6)
    p.add_argument("--negative", type=float, default=0.10)
    p.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the HDF5 file")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="specnmf_scale_", dir=args.dir))
    path = directory / "spectra.h5"
    report = {"machine": {"cpus": os.cpu_count(), "load_before": _load()}, "fits": []}
    try:
        print(f"writing {args.n} x {args.d} float32 flux + ivar to {path}", file=sys.stderr)
        report["data"] = write_hdf5(path, args.n, args.d, q=args.q,
                                    observed_fraction=1.0 - args.missing,
                                    negative_fraction=args.negative)
        report["writer_peak_rss_gib"] = peak_rss_gib()
        print(json.dumps(report["data"]), file=sys.stderr)
        fit_each(path, report, args.solvers, q=args.q, iters=args.iters,
                 block_size=args.block_size)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    report["machine"]["load_after"] = _load()
    return emit_report(report, args.out)


if __name__ == "__main__":
    main()
