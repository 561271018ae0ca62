"""Figure 8 of Green & Bailey (2024): time per Nearly-NMF iteration vs n, d and q.

Simulated quasars (:func:`specnmf.datasets._simulate.make_quasars`, rest
frame, trimmed) are fitted with ``SpectralNMF(solver="nearly")`` on a single
BLAS thread (as in the paper) while one parameter varies and the others stay
at the paper's fixed values, n = 750 spectra, q = 5 templates and d = half
the rest-frame grid:

* n: a log-spaced number of spectra;
* q: the number of templates;
* d: the grid rebinned by 1, 2, 4, ... (each halving the dimension).

A point is the median of the per-iteration wall times of the fit (one
coefficient update, one template update and the chi^2 the loop records),
measured with the ``callback`` of ``fit``; error bars are their standard
deviation.  The slope of a straight-line fit in log-log space is written to
summary.json: the paper finds all three scalings roughly linear (slope ~1).

=========  ==============  =====================  ===========  ======================
scale      grid (dloglam)  n values               q values     iterations per point
=========  ==============  =====================  ===========  ======================
tiny       4e-4            50, 100, 200           1, 2, 4      4
reduced    1e-4            50 ... 2000 (6)        1 ... 10     12
paper      1e-4            50 ... 2000 (10)       1 ... 10     100
=========  ==============  =====================  ===========  ======================

Run::

    python examples/paper_timing.py [--scale tiny|reduced|paper] [--out DIR]

Writes fig8_timing.png and summary.json.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

SETTINGS = {
    "tiny": {"dloglam": 4e-4, "n_base": 200, "n": [50, 100, 200], "q": [1, 2, 4],
             "d_factors": [1, 2, 4], "iters": 4, "n_fixed": 100},
    "reduced": {"dloglam": 1e-4, "n_base": 2000, "n": [50, 100, 200, 500, 1000, 2000],
                "q": [1, 2, 3, 5, 7, 10], "d_factors": [1, 2, 4, 8, 16, 32], "iters": 12,
                "n_fixed": 750},
    "paper": {"dloglam": 1e-4, "n_base": 2000,
              "n": [int(v) for v in np.unique(np.geomspace(50, 2000, 10).round())],
              "q": list(range(1, 11)), "d_factors": [1, 2, 4, 8, 16, 32, 64], "iters": 100,
              "n_fixed": 750},
}
Q_FIXED = 5


def time_per_iteration(X, ivar, q, iters, seed=0):
    """Per-iteration wall times (seconds) of a Nearly-NMF fit, from ``fit``'s callback."""
    from specnmf import SpectralNMF

    stamps = []

    def callback(iteration, coefficients, templates, terms):
        stamps.append(time.perf_counter())

    model = SpectralNMF(q, solver="nearly", max_iter=iters + 1, tol=0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, ivar=ivar, callback=callback)
    # the first interval starts after the first iteration: set-up is excluded
    return np.diff(stamps)


def loglog_slope(x, y):
    """Slope of the least-squares line through (log x, log y)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def main(argv=None):
    args = _common.parse_args(__doc__.splitlines()[0], argv=argv)
    out = _common.output_dir(args, "paper_timing")
    log = _common.setup_logging()
    cfg = SETTINGS[args.scale]

    from specnmf.datasets._simulate import make_quasars
    from specnmf.preprocess import rebin, rest_frame_grid, to_rest_frame, trim

    dl = cfg["dloglam"]
    sim = make_quasars(cfg["n_base"], random_state=args.seed, dloglam=dl)
    rest = rest_frame_grid(3600, 10000, 0, 4, dloglam=dl)
    flux, ivar = to_rest_frame(sim.wavelength, sim.X, sim.ivar, sim.redshift, rest)
    wave, flux, ivar = trim(rest, flux, ivar, round(50 * 1e-4 / dl), round(300 * 1e-4 / dl))
    flux, ivar = flux.astype(np.float64), ivar.astype(np.float64)
    # the paper's fixed d is half its full grid
    _, half_flux, half_ivar = rebin(wave, flux, ivar, 2)
    d_fixed = half_flux.shape[1]
    log.info("timing data: %d spectra, full grid %d pixels, fixed d = %d", *flux.shape, d_fixed)

    try:
        from threadpoolctl import threadpool_limits
        limiter, threads = threadpool_limits(limits=1), 1
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        limiter, threads = contextlib.nullcontext(), None
        log.warning("threadpoolctl not installed: BLAS may use several threads")

    results = {}
    with limiter:
        sweeps = {
            "n": [(n, half_flux[:n], half_ivar[:n], Q_FIXED) for n in cfg["n"]],
            "q": [(q, half_flux[:cfg["n_fixed"]], half_ivar[:cfg["n_fixed"]], q)
                  for q in cfg["q"]],
            "d": [],
        }
        for f in cfg["d_factors"]:
            _, fb, vb = rebin(wave, flux[:cfg["n_fixed"]], ivar[:cfg["n_fixed"]], f)
            sweeps["d"].append((fb.shape[1], fb, vb, Q_FIXED))
        for name, points in sweeps.items():
            xs, med, std = [], [], []
            for x, X, V, q in points:
                t = time_per_iteration(X, V, q, cfg["iters"], seed=args.seed)
                xs.append(int(x))
                med.append(float(np.median(t)))
                std.append(float(np.std(t)))
                log.info("%s = %6d (n=%d, d=%d, q=%d): %.4f s per iteration", name, x,
                         X.shape[0], X.shape[1], q, med[-1])
            results[name] = {"values": xs, "median_seconds": med, "std_seconds": std,
                             "slope": loglog_slope(xs, med)}
            log.info("log-log slope in %s: %.2f", name, results[name]["slope"])

    fig = _figure(out, results)
    summary = {
        "scale": args.scale, "settings": cfg, "q_fixed": Q_FIXED, "d_fixed": d_fixed,
        "n_fixed": cfg["n_fixed"], "blas_threads": threads,
        "slopes": {k: v["slope"] for k, v in results.items()},
        "sweeps": results, "environment": _common.environment(), "figures": [fig],
    }
    path = _common.write_summary(out, summary)
    log.info("slopes: %s; wrote %s", {k: round(v, 2) for k, v in summary["slopes"].items()}, path)
    return summary


def _figure(out, results):
    plt = _common.pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(12, 4))
    labels = {"n": "number of spectra n", "d": "number of pixels d", "q": "number of templates q"}
    for a, (name, r) in zip(ax, results.items()):
        x = np.asarray(r["values"], float)
        y = np.asarray(r["median_seconds"])
        a.errorbar(x, y, yerr=r["std_seconds"], fmt="o", color="C0")
        b = np.polyfit(np.log(x), np.log(y), 1)
        a.plot(x, np.exp(np.polyval(b, np.log(x))), "-", color="C1",
               label=f"slope {r['slope']:.2f}")
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel(labels[name])
        a.legend()
    ax[0].set_ylabel("seconds per iteration")
    return _common.save_figure(fig, out / "fig8_timing.png")


if __name__ == "__main__":
    main()
