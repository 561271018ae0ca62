r"""Initialisation and solver traps: every solver x init x seed against the best.

    python -m benchmarks.traps [--quick] [--cases coelho masked] [--max-iter 2000]

``coelho``
    The 80 Coelho (2014) spectra of the stellar demo (the four classes
    other than cool_giant, unit weights), 4 components.  Every solver
    (nearly, shift, clip, anls, apg) from every start (random and
    sequential with seeds 0-2, nndsvd, nndsvda), default ``tol``.  For each
    fit: final chi^2 relative to the best any fit reached, iterations,
    ``converged_``, ``stationarity_`` (KKT residual), ``n_reseeds_`` and the
    components still dead at the end.
``masked``
    Masked, signed, low-rank data like the paper's quasars:
    :func:`benchmarks.data.simulate_spectra` (1500 x 2000, 60 % missing as
    one contiguous window per spectrum, ~10 % of observed fluxes negative,
    rank 5), k=5, from the uniform(0, 1) start of
    :func:`benchmarks.data.start_factors`.  The target is the chi^2 of 1000
    Nearly-NMF iterations from that start; ``anls`` and ``apg`` run to their
    default ``tol``.  ``--quick`` uses 300 x 400.

Prints markdown tables (used in docs/solvers.md, "Traps and how specnmf
avoids them").
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

SOLVERS = ("nearly", "shift", "clip", "anls", "apg")


def coelho(max_iter=2000, seeds=(0, 1, 2), solvers=SOLVERS):
    from specnmf import SpectralNMF
    from specnmf.datasets import load_coelho
    from specnmf.demos import STELLAR_DEMO_CLASSES

    stars = load_coelho(STELLAR_DEMO_CLASSES)
    X = stars.flux
    ivar = np.ones_like(X)
    rows = []
    for solver in solvers:
        for init in ("random", "sequential", "nndsvd", "nndsvda"):
            for seed in (seeds if init in ("random", "sequential") else seeds[:1]):
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = SpectralNMF(4, solver=solver, init=init, random_state=seed,
                                    max_iter=max_iter).fit(X, ivar=ivar)
                rows.append(dict(solver=solver, init=init, seed=seed, n_iter=m.n_iter_,
                                 converged=m.converged_, stationarity=m.stationarity_,
                                 reseeds=m.n_reseeds_, dead=list(map(int, m.dead_components_)),
                                 # clip: chi^2 of the clipped data, the same here (no X < 0)
                                 chi2=float(m.chi2_[-1]),
                                 seconds=time.perf_counter() - t))
                print(".", end="", flush=True)
    print()
    best = min(r["chi2"] for r in rows)
    lines = [f"Coelho stellar set, 80 x {X.shape[1]}, k=4, unit weights, max_iter={max_iter}, "
             f"default tol; best chi^2 {best:.6g}", "",
             "| solver | init | seed | chi^2 / best | iterations | converged_ | stationarity_ "
             "| re-seeds | dead at end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['init']} | {r['seed']} | {r['chi2'] / best:.4f} | "
                     f"{r['n_iter']} | {r['converged']} | {r['stationarity']:.2g} | "
                     f"{r['reseeds']} | {r['dead'] or '-'} |")
    worst = max(r["chi2"] for r in rows) / best
    lines += ["", f"worst / best = {worst:.4f}"]
    return "\n".join(lines), rows


def masked(quick=False):
    from specnmf import SpectralNMF

    from .data import simulate_spectra, start_factors

    n, d, k = (300, 400, 5) if quick else (1500, 2000, 5)
    X, ivar = simulate_spectra(n, d, k, missing=0.6)
    C0, T0 = start_factors(n, d, k)
    runs = [("nearly", dict(max_iter=1000, tol=0)), ("anls", dict(max_iter=2000)),
            ("apg", dict(max_iter=2000))]
    out = {}
    for solver, kw in runs:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = SpectralNMF(k, solver=solver, **kw).fit(X, ivar=ivar, templates=T0, coefficients=C0)
        out[solver] = (m, time.perf_counter() - t)
        print(".", end="", flush=True)
    print()
    target = out["nearly"][0].chi2_[-1]
    lines = [f"masked signed data {n} x {d}, 60 % missing (contiguous windows), k={k}, "
             f"uniform(0, 1) start; target: chi^2 of 1000 Nearly-NMF iterations = {target:.6g}", "",
             "| solver | iterations | converged_ | stationarity_ | final chi^2 | final / target "
             "| first iteration at target | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for solver, (m, sec) in out.items():
        hit = np.flatnonzero(m.chi2_ <= target)
        first = int(hit[0]) if hit.size else "never"
        lines.append(f"| {solver} | {m.n_iter_} | {m.converged_} | {m.stationarity_:.2g} | "
                     f"{m.chi2_[-1]:.6g} | {m.chi2_[-1] / target:.6f} | {first} | {sec:.1f} |")
    return "\n".join(lines), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller masked problem, seed 0 only")
    parser.add_argument("--cases", nargs="+", default=["coelho", "masked"],
                        choices=["coelho", "masked"])
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    args = parser.parse_args(argv)
    if "coelho" in args.cases:
        table, _ = coelho(args.max_iter, seeds=(0,) if args.quick else (0, 1, 2),
                          solvers=args.solvers)
        print(table, "\n", flush=True)
    if "masked" in args.cases:
        table, _ = masked(args.quick)
        print(table, flush=True)


if __name__ == "__main__":
    main()
