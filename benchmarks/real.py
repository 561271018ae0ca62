r"""Real-data benchmark: held-out chi^2 of templates learnt from a real MUSE cube.

    python -m benchmarks.real                # the full cube (../shared/data/muse), ~minutes
    python -m benchmarks.real --crop         # the bundled 12 x 12 crop (seconds; no shared/)
    python -m benchmarks.real --k 4 --max-iter 300 --seed 0

Protocol
--------
1. Read the cube with :func:`specnmf.ifu.read_cube` (flux, ``ivar = 1/STAT``,
   ``DQ`` flags -> ``ivar = 0``), one spectrum per spaxel.
2. Split the spaxels at random (seeded) into training (75 %) and test (25 %)
   spectra.
3. Learn ``k`` templates from the training spectra with each method:

   * specnmf's solvers (``nearly``, ``shift``, ``anls``, ``apg``, and
     ``clip``, the clipped-data baseline), weighted by ``ivar``;
   * scikit-learn's ``NMF`` (coordinate descent, ``nndsvda`` start): it takes
     neither weights nor negative data, so, as its users must, negative flux
     is clipped to 0 and missing pixels are filled with 0;
   * NonnegMFPy (Zhu 2016), weighted multiplicative NMF with ``V = ivar``;
     it clips negative flux to 0 itself;
   * a weighted PCA written here (:func:`weighted_pca`): the rank-``k``
     weighted low-rank approximation by alternating weighted least squares,
     as EM-PCA with weights (Bailey 2012) computes it; signed templates and
     coefficients, no mean subtracted (so that it has the same ``k`` vectors
     as the NMF models).

4. For every test spectrum hide a contiguous 20 % chunk of its pixels at a
   random (seeded) position, fit its coefficients on the other 80 % with the
   method's templates, predict the chunk and score
   ``sum(ivar * (x - c @ T)**2)`` over the observed held-out pixels, divided
   by their number (held-out chi^2 per pixel; 1 is the noise level if the
   pipeline variance is right).  The coefficient step is the same for all
   non-negative methods: exact weighted NNLS (``SpectralNMF.transform(X,
   ivar=...)`` for specnmf, :func:`specnmf.solvers.coefficients.weighted_nnls` for
   the templates of scikit-learn and NonnegMFPy), so the comparison is of
   the templates.  PCA coefficients are weighted least squares (signed).

Fit time is the wall time of learning the templates (step 3) in this
process; the machine's load is printed with the table.  Results go to
``benchmarks/results_real.md`` and ``benchmarks/results_real.json``
(``_crop`` suffixed for ``--crop``, ``_seedN`` for ``--seed N`` other than 0).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPECNMF_SOLVERS = ("nearly", "shift", "anls", "apg", "clip")


def find_cube(path=None):
    """The full MUSE cube: ``path``, ``$SPECNMF_SHARED_DATA/muse/...`` or ``../shared/data/muse/...``."""
    candidates = [path, os.environ.get("SPECNMF_SHARED_DATA") and
                  Path(os.environ["SPECNMF_SHARED_DATA"]) / "muse" / "abell478_minicube.fits",
                  HERE.parent.parent / "shared" / "data" / "muse" / "abell478_minicube.fits"]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    return None


def load(crop=False, path=None):
    """(X, ivar, spatial_shape, wavelength, source) of the cube, one row per spaxel."""
    from specnmf.datasets import muse_crop_path
    from specnmf.ifu import cube_to_matrix, read_cube

    source = muse_crop_path() if crop else find_cube(path)
    if source is None:
        raise SystemExit("benchmarks.real: the full MUSE cube is not here (../shared/data/muse); "
                         "give --cube PATH or run with --crop")
    c = read_cube(source)
    X, ivar, shape = cube_to_matrix(c.cube, ivar=c.ivar, mask=c.mask)
    return X.astype(np.float64), ivar.astype(np.float64), shape, c.wavelength, source


def split(n, seed, train_fraction=0.75):
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(train_fraction * n))
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def holdout_chunks(ivar, seed, fraction=0.2):
    """Boolean (n, d) array: a contiguous ``fraction`` of each row's pixels, random position."""
    n, d = ivar.shape
    length = int(round(fraction * d))
    starts = np.random.default_rng(seed + 1).integers(0, d - length + 1, size=n)
    cols = np.arange(d)
    return (cols >= starts[:, None]) & (cols < starts[:, None] + length)


# -- peers ------------------------------------------------------------------------
def weighted_pca(X, ivar, k, *, n_iter=100, seed=0, ridge=1e-10):
    """Rank-``k`` weighted low-rank approximation ``X ~ C @ P`` (signed), EM-PCA style.

    Alternates weighted least squares for the coefficients of each spectrum
    and for each pixel's template values (Bailey 2012's EM-PCA with weights,
    without its per-iteration orthogonalisation, which does not change the
    subspace); the templates are orthonormalised at the end.

    Returns
    -------
    templates : ndarray of shape (k, n_pixels)
    """
    rng = np.random.default_rng(seed)
    P = np.linalg.qr(rng.normal(size=(X.shape[1], k)))[0].T
    WX = ivar * X
    for _ in range(n_iter):
        C = wls_coefficients(X, ivar, P, ridge=ridge)
        # per-pixel normal equations: (C^T diag(w_j) C) p_j = C^T (w_j x_j)
        P = _solve_batched(_grams(ivar.T, C.T), (C.T @ WX).T, ridge).T
        P = np.linalg.qr(P.T)[0].T  # keep the basis well conditioned; same subspace
    return P


def _grams(weights, F):
    """Grams ``F diag(w_i) F^T`` for each row ``w_i`` of ``weights``, as one matrix product."""
    k = F.shape[0]
    outer = (F[:, None, :] * F[None, :, :]).reshape(k * k, -1)
    return (weights @ outer.T).reshape(-1, k, k)


def _solve_batched(G, b, ridge):
    k = G.shape[-1]
    G[:, np.arange(k), np.arange(k)] += ridge * np.trace(G, axis1=1, axis2=2)[:, None] / k + 1e-300
    return np.linalg.solve(G, b[..., None])[..., 0]


def wls_coefficients(X, ivar, templates, *, ridge=1e-10):
    """Signed weighted least-squares coefficients of each spectrum."""
    return _solve_batched(_grams(ivar, templates), (ivar * X) @ templates.T, ridge)


def fit_sklearn(X, ivar, k, max_iter, seed):
    from sklearn.decomposition import NMF

    # what scikit-learn's users must do: no weights, no negative flux, no missing data
    Xc = np.where(ivar > 0, np.clip(X, 0, None), 0.0)
    model = NMF(k, init="nndsvda", max_iter=max_iter, random_state=seed, tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(Xc)
    return model.components_, model.n_iter_


def fit_nonnegmfpy(X, ivar, k, max_iter, seed):
    from NonnegMFPy import nmf

    np.random.seed(seed)  # NonnegMFPy draws its start from numpy's global generator
    # its orientation: X (n_pixels, n_spectra) = W (n_pixels, k) @ H (k, n_spectra)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every 20 iterations
        g = nmf.NMF(X.T, V=ivar.T, n_components=k)
        g.SolveNMF(maxiters=max_iter, tol=1e-6)
    return g.W.T.copy(), None


# -- scoring ----------------------------------------------------------------------
def heldout_chi2(X, ivar, held, predict):
    """chi^2 per observed held-out pixel, and per observed fitted pixel, of ``predict``."""
    fit_ivar = np.where(held, 0.0, ivar)
    model = predict(X, fit_ivar)
    r2 = ivar * (X - model) ** 2
    test = held & (ivar > 0)
    train = ~held & (ivar > 0)
    return float(r2[test].sum() / test.sum()), float(r2[train].sum() / train.sum())


def nnls_predictor(templates):
    from specnmf.solvers.coefficients import weighted_nnls

    T = np.ascontiguousarray(templates, dtype=np.float64)

    def predict(X, ivar):
        return weighted_nnls(X, ivar, T) @ T
    return predict


def run(args):
    import specnmf
    from specnmf import SpectralNMF

    X, ivar, shape, _, source = load(args.crop, args.cube)
    n, d = X.shape
    train, test = split(n, args.seed)
    Xtr, Wtr, Xte, Wte = X[train], ivar[train], X[test], ivar[test]
    held = holdout_chunks(Wte, args.seed)
    k, max_iter = args.k, args.max_iter
    print(f"data: {source}\n  {shape[0]} x {shape[1]} spaxels x {d} wavelengths; "
          f"{len(train)} training / {len(test)} test spectra; "
          f"{100 * np.mean(X[ivar > 0] < 0):.1f}% negative fluxes; k = {k}, max_iter = {max_iter}",
          flush=True)
    rows = []

    def record(name, fit_time, n_iter, predict, note=""):
        chi_test, chi_fit = heldout_chi2(Xte, Wte, held, predict)
        rows.append({"method": name, "heldout_chi2": chi_test, "fitted_chi2": chi_fit,
                     "fit_time_s": fit_time, "n_iter": n_iter, "note": note})
        print(f"  {name:<28s} held-out chi2/pix {chi_test:9.4f}   fitted 80% {chi_fit:8.4f}   "
              f"fit {fit_time:7.2f} s   iters {n_iter}   load {os.getloadavg()[0]:.1f}", flush=True)

    # compile the numba kernels before anything is timed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for solver in args.solvers:
            warm = SpectralNMF(k, solver=solver, max_iter=2, tol=0, init=args.init,
                               random_state=0).fit(Xtr[:20], ivar=Wtr[:20])
            warm.transform(Xte[:5], ivar=Wte[:5])
    for solver in args.solvers:
        model = SpectralNMF(k, solver=solver, max_iter=max_iter, tol=args.tol, init=args.init,
                            random_state=args.seed)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(Xtr, ivar=Wtr)
        dt = time.perf_counter() - t0
        T = np.asarray(model.templates_)

        def predict(Xh, Wh, model=model, T=T):
            return np.asarray(model.transform(Xh, ivar=Wh)) @ T
        record(f"specnmf {solver}", dt, int(model.n_iter_), predict,
               "clipped-data baseline" if solver == "clip" else "")

    if not args.no_peers:
        try:
            t0 = time.perf_counter()
            T, it = fit_sklearn(Xtr, Wtr, k, max_iter, args.seed)
            record("scikit-learn NMF (cd)", time.perf_counter() - t0, int(it), nnls_predictor(T),
                   "unweighted; negative flux clipped, missing filled with 0")
        except ImportError:
            print("  scikit-learn not installed: skipped")
        try:
            t0 = time.perf_counter()
            T, _ = fit_nonnegmfpy(Xtr, Wtr, k, max_iter, args.seed)
            # NonnegMFPy does not report the iterations it ran (it stops on its own tol)
            record("NonnegMFPy (Zhu 2016)", time.perf_counter() - t0, f"<= {max_iter}",
                   nnls_predictor(T),
                   "weighted multiplicative; clips negative flux")
        except ImportError:
            print("  NonnegMFPy not installed (pip install nonnegmfpy): skipped")
        t0 = time.perf_counter()
        P = weighted_pca(Xtr, Wtr, k, n_iter=args.pca_iter, seed=args.seed)
        record("weighted PCA (EM-PCA style)", time.perf_counter() - t0, args.pca_iter,
               lambda Xh, Wh: wls_coefficients(Xh, Wh, P) @ P, "signed; no mean subtracted")

    best = min((r for r in rows if r["method"].startswith("specnmf")),
               key=lambda r: r["heldout_chi2"], default=None)
    peers = [r for r in rows if not r["method"].startswith("specnmf")]
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    summary = {
        "source": os.path.basename(source), "spatial_shape": list(shape), "n_pixels": d,
        "n_train": int(len(train)), "n_test": int(len(test)), "k": k, "max_iter": max_iter,
        "tol": args.tol, "init": args.init, "seed": args.seed, "holdout_fraction": 0.2,
        "load_average": load_avg, "specnmf_version": specnmf.__version__,
        "numpy": np.__version__, "rows": rows,
        "best_specnmf": best and best["method"],
        "best_specnmf_beats_every_peer": bool(best and all(
            best["heldout_chi2"] <= r["heldout_chi2"] for r in peers)),
    }
    write(summary, args)
    return summary


def table(summary):
    lines = [
        f"Held-out chi^2 on a real MUSE cube ({summary['source']}, "
        f"{summary['spatial_shape'][0]} x {summary['spatial_shape'][1]} spaxels x "
        f"{summary['n_pixels']} wavelengths): {summary['n_train']} training / "
        f"{summary['n_test']} test spectra, k = {summary['k']}, at most {summary['max_iter']} "
        f"iterations (tol {summary['tol']:g}), seed {summary['seed']}; "
        f"a contiguous 20 % of each test spectrum held out.  "
        f"Load average during the run: {summary['load_average']:.1f}.",
        "",
        "| method | held-out chi^2 / pixel | chi^2 / pixel on the fitted 80 % | fit time (s) | "
        "iterations | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(summary["rows"], key=lambda r: r["heldout_chi2"]):
        lines.append(f"| {r['method']} | {r['heldout_chi2']:.4f} | {r['fitted_chi2']:.4f} | "
                     f"{r['fit_time_s']:.2f} | {r['n_iter']} | {r['note']} |")
    lines += ["", f"Best specnmf solver: {summary['best_specnmf']}; at least as good as every "
              f"peer on held-out chi^2: {'yes' if summary['best_specnmf_beats_every_peer'] else 'NO'}."]
    return "\n".join(lines) + "\n"


def write(summary, args):
    suffix = "_crop" if args.crop else ""
    if args.seed != 0:
        suffix += f"_seed{args.seed}"
    if args.smoke:
        suffix += "_smoke"
    md = table(summary)
    (HERE / f"results_real{suffix}.md").write_text(md)
    (HERE / f"results_real{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(md)


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.real", description=__doc__.split("\n\n")[0])
    p.add_argument("--crop", action="store_true", help="use the bundled 12 x 12 crop")
    p.add_argument("--cube", default=None, help="path of the full cube (default: ../shared)")
    p.add_argument("--k", type=int, default=4, help="number of components (default 4)")
    p.add_argument("--max-iter", type=int, default=300, help="iterations of every NMF (300)")
    p.add_argument("--tol", type=float, default=1e-6, help="specnmf tol (1e-6)")
    p.add_argument("--init", default="nndsvda", help="specnmf init (nndsvda)")
    p.add_argument("--pca-iter", type=int, default=50, help="weighted PCA iterations (50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solvers", nargs="+", default=list(SPECNMF_SOLVERS),
                   choices=SPECNMF_SOLVERS)
    p.add_argument("--no-peers", action="store_true", help="specnmf solvers only")
    p.add_argument("--smoke", action="store_true",
                   help="crop, 10 iterations: checks the harness (numbers mean nothing)")
    args = p.parse_args(argv)
    if args.smoke:
        args.crop, args.max_iter, args.pca_iter = True, 10, 5
    return args


def main(argv=None):
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
