r"""specnmf on a GPU against a CuPy port of the paper's update rules.

    python -m benchmarks.gpu [--n 20000] [--d 5700] [--q 5] [--iters 30]
                             [--dtype float32] [--backends cupy torch] [--out FILE]

Measures, on one simulated data set held on the GPU (the masked, signed,
heteroscedastic spectra of :func:`benchmarks.scale_hdf5.simulate_block`):

* the time per iteration of :func:`nearly_paper_cupy`, the paper's Nearly-NMF
  rules (Green & Bailey 2024, eqs. 18-19) written with CuPy exactly as the
  published code writes them with numpy (dense products on the full
  (n_pixels, n_spectra) arrays, ``V*X`` once before the loop, NaN/inf of 0/0
  replaced by 1e-6) -- what the paper's GPU runs did;
* the time per iteration of ``SpectralNMF(solver="nearly", backend=...)`` for
  ``backend="cupy"`` and ``backend="torch"`` (CUDA), from the same start;
* the ratio ``paper / specnmf`` (> 1: specnmf is faster) and the relative
  difference of the final chi^2.

Both are timed the same way: wall time of a run with ``m2`` iterations minus
one with ``m1``, over ``m2 - m1``, after a warm-up run, with the device
synchronised before each clock read, so set-up and transfers cancel.

Without CuPy or without a CUDA device the script prints why and exits with
status 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

NAN_EPS = 1e-6


def _cuda_available():
    """``(cupy, None)`` or ``(None, reason)``."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed (pip install 'specnmf[gpu]')"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver
        return None, f"CuPy cannot reach a CUDA device: {exc}"
    if n < 1:
        return None, "no CUDA device is present"
    return cupy, None


def nearly_paper_cupy(cp, X_paper, V_paper, W, H, n_iter):
    """Nearly-NMF eqs. (18)-(19) in the published code's structure, on CuPy arrays.

    Paper orientation: ``X_paper``, ``V_paper`` of shape (n_pixels, n_spectra),
    ``W`` (n_pixels, q), ``H`` (q, n_spectra).  Returns new ``(W, H)``.
    """
    V_X = V_paper * X_paper
    W, H = W.copy(), H.copy()

    def ratio(F, num, den):
        out = F * num / den
        return cp.nan_to_num(out, nan=NAN_EPS, posinf=NAN_EPS)

    for _ in range(int(n_iter)):
        W_VX = W.T @ V_X
        H = ratio(H, cp.clip(W_VX, 0, None), W.T @ (V_paper * (W @ H)) + cp.clip(-W_VX, 0, None))
        V_XH = V_X @ H.T
        W = ratio(W, cp.clip(V_XH, 0, None), (V_paper * (W @ H)) @ H.T + cp.clip(-V_XH, 0, None))
    return W, H


def _per_iteration(run, sync, m1, m2, repeats=3):
    """Median over ``repeats`` of (t(m2) - t(m1)) / (m2 - m1), after a warm-up."""
    run(m1)
    sync()
    out = []
    for _ in range(repeats):
        times = []
        for m in (m1, m2):
            sync()
            t0 = time.perf_counter()
            run(m)
            sync()
            times.append(time.perf_counter() - t0)
        out.append((times[1] - times[0]) / (m2 - m1))
    return float(np.median(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--d", type=int, default=5_700)
    p.add_argument("--q", type=int, default=5)
    p.add_argument("--iters", type=int, default=30, help="m2; m1 = iters // 3")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--backends", nargs="+", default=["cupy", "torch"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    cp, reason = _cuda_available()
    if cp is None:
        print(f"benchmarks.gpu: skipped -- {reason}; nothing was measured.", file=sys.stderr)
        return None

    from specnmf import SpectralNMF, chi2

    from .scale_hdf5 import calibrate_noise, emit_report, simulate_block, simulate_templates

    T_true = simulate_templates(args.q, args.d, seed=0)
    noise = calibrate_noise(T_true, observed_fraction=0.39, negative_fraction=0.114, seed=0)
    X, ivar = simulate_block(T_true, args.n, observed_fraction=0.39, noise=noise, seed=0,
                             block_index=0)
    X = np.where(ivar > 0, X, 0.0).astype(args.dtype)
    ivar = ivar.astype(args.dtype)
    rng = np.random.default_rng(1)
    C0 = rng.uniform(0.1, 1.0, size=(args.n, args.q)).astype(args.dtype)
    T0 = rng.uniform(0.1, 1.0, size=(args.q, args.d)).astype(args.dtype)
    m1, m2 = max(1, args.iters // 3), args.iters
    sync = cp.cuda.Device().synchronize

    Xg, Vg = cp.asarray(X.T), cp.asarray(ivar.T)
    Wg, Hg = cp.asarray(T0.T), cp.asarray(C0.T)
    paper_s = _per_iteration(lambda m: nearly_paper_cupy(cp, Xg, Vg, Wg, Hg, m), sync, m1, m2)
    W, H = nearly_paper_cupy(cp, Xg, Vg, Wg, Hg, m2)
    paper_chi2 = chi2(X, cp.asnumpy(H).T, cp.asnumpy(W).T, ivar=ivar)
    report = {"n": args.n, "d": args.d, "q": args.q, "dtype": args.dtype,
              "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
              "paper_cupy_seconds_per_iteration": paper_s, "backends": {}}
    del Xg, Vg

    for backend in args.backends:
        if backend == "torch":
            try:
                import torch
            except ImportError:
                report["backends"][backend] = "skipped: PyTorch not installed"
                continue
            if not torch.cuda.is_available():
                report["backends"][backend] = "skipped: PyTorch has no CUDA"
                continue
            data = (torch.asarray(X, device="cuda"), torch.asarray(ivar, device="cuda"))
            bsync = torch.cuda.synchronize
        else:
            data = (cp.asarray(X), cp.asarray(ivar))
            bsync = sync

        def fit(m, backend=backend, data=data):
            return SpectralNMF(args.q, solver="nearly", max_iter=m, tol=0, dtype=args.dtype,
                               backend=backend).fit(data[0], ivar=data[1], templates=T0,
                                                   coefficients=C0)

        ours_s = _per_iteration(fit, bsync, m1, m2)
        model = fit(m2)
        report["backends"][backend] = {
            "seconds_per_iteration": ours_s,
            "speedup_vs_paper_cupy": paper_s / ours_s,
            "chi2_relative_difference": abs(model.chi2_[-1] - paper_chi2) / paper_chi2,
        }
    return emit_report(report, args.out)


if __name__ == "__main__":
    main()
