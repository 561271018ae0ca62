"""Redshifts from NMF templates vs PCA templates: does non-negativity remove false positives?

Green & Bailey (2024) expect non-negative templates to "provide improved results by
eliminating a class of unphysical false positives" that flexible PCA templates allow.  This
script measures it on simulated quasars:

1. training set: ``make_quasars`` spectra de-redshifted onto one rest-frame grid;
2. two template sets of the same rank from the same data: Nearly-NMF (``SpectralNMF``) and a
   weighted PCA (EM-PCA, Bailey 2012 style: alternating weighted least squares, no mean
   subtraction, so that both span a rank-q model of the spectra);
3. held-out observed-frame quasars at several S/N, fitted by ``specnmf.redshift.fit_redshifts``
   (NMF + NNLS, PCA + least squares) and, on a subset, by redrock 0.21 itself reading the
   same templates from the files ``write_redrock`` writes;
4. success (|dz|/(1+z) <= 0.0033), catastrophic failures, and confident wrong answers
   (delta_chi2 > 25 but catastrophic).

    python examples/redshift.py                 # ~15 min on a loaded 2-core machine
    python examples/redshift.py --scale tiny    # seconds; checks the script

Writes PNGs and summary.json to paper_output/redshift (or --out).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CATASTROPHIC = 0.0033
CONFIDENT = 25.0
CONFIG = {
    "tiny": {"n_train": 60, "max_iter": 10, "pca_iter": 3, "n_test": 8, "n_redrock": 2,
             "snrs": (1.0, 4.0), "step_pixels": 40},
    "reduced": {"n_train": 1000, "max_iter": 300, "pca_iter": 25, "n_test": 500,
                "n_redrock": 40, "snrs": (0.5, 1.0, 2.0, 4.0), "step_pixels": 5},
    "paper": {"n_train": 5000, "max_iter": 1000, "pca_iter": 50, "n_test": 1000,
              "n_redrock": 200, "snrs": (0.5, 1.0, 2.0, 4.0), "step_pixels": 2},
}
N_COMPONENTS = 5
Z_TRAIN = (0.0, 4.1)
Z_FIT = (0.05, 4.0)


def weighted_pca(X, ivar, n_components, n_iter, seed):
    """Weighted PCA basis by alternating weighted least squares (EM-PCA without a mean).

    Returns orthonormal vectors of shape (n_components, n_pixels) spanning the best
    weighted rank-``n_components`` model found; a tiny ridge keeps pixels with almost no
    data finite.
    """
    rng = np.random.default_rng(seed)
    X = np.asarray(X, dtype=np.float64)
    W = np.asarray(ivar, dtype=np.float64)
    T = np.linalg.qr(rng.normal(size=(X.shape[1], n_components)))[0].T
    eye = np.eye(n_components)
    WX = W * X
    for _ in range(n_iter):
        G = np.einsum("kj,ij,lj->ikl", T, W, T, optimize=True) + 1e-12 * eye
        C = np.linalg.solve(G, (WX @ T.T)[..., None])[..., 0]
        H = np.einsum("ik,ij,il->jkl", C, W, C, optimize=True)
        ridge = 1e-9 * np.trace(H, axis1=1, axis2=2).mean() / n_components
        T = np.linalg.solve(H + ridge * eye, (WX.T @ C)[..., None])[..., 0].T
        T = np.linalg.qr(T.T)[0].T
    return T


def main(argv=None):
    args = _common.parse_args(__doc__.split("\n\n")[0], argv=argv)
    cfg = CONFIG[args.scale]
    out = _common.output_dir(args, "redshift")
    log = _common.setup_logging()

    from specnmf import SpectralNMF
    from specnmf.datasets._simulate import make_quasars
    from specnmf.preprocess import rest_frame_grid, to_rest_frame
    from specnmf.redshift import (
        fit_redshifts,
        read_redrock,
        redshift_grid,
        write_redrock,
    )

    t0 = time.perf_counter()
    train = make_quasars(cfg["n_train"], random_state=args.seed, z_range=Z_TRAIN, snr=3.0)
    rest = rest_frame_grid(3600.0, 10000.0, *Z_TRAIN)
    flux, ivar = to_rest_frame(train.wavelength, train.X, train.ivar, train.redshift, rest)
    log.info("training set: %d quasars, %d rest pixels (%.0f s)", flux.shape[0], rest.size,
             time.perf_counter() - t0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nmf = SpectralNMF(N_COMPONENTS, max_iter=cfg["max_iter"], random_state=args.seed,
                          dtype="float32").fit(flux, ivar=ivar, wavelength=rest)
    log.info("Nearly-NMF templates: %.0f s", time.perf_counter() - t0)
    t0 = time.perf_counter()
    pca = weighted_pca(flux, ivar, N_COMPONENTS, cfg["pca_iter"], args.seed)
    log.info("weighted PCA templates: %.0f s", time.perf_counter() - t0)

    test = {snr: make_quasars(cfg["n_test"], random_state=args.seed + 10 + i, z_range=Z_FIT,
                              snr=snr, dtype="float64")
            for i, snr in enumerate(cfg["snrs"])}
    wave = next(iter(test.values())).wavelength
    z = redshift_grid(*Z_FIT, wavelength=wave, template_wavelength=rest,
                      step=cfg["step_pixels"] * 1e-4)
    log.info("redshift grid: %d trials (%d-pixel steps)", z.size, cfg["step_pixels"])

    rows = []
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"NMF": os.path.join(tmp, "rrtemplate-qso-nmf.fits"),
                 "PCA": os.path.join(tmp, "rrtemplate-qso-pca.fits")}
        write_redrock(paths["NMF"], nmf, spectype="QSO", redshifts=z)
        write_redrock(paths["PCA"], pca, wavelength=rest, spectype="QSO", redshifts=z,
                      method="PCA")
        sets = {k: read_redrock(p) for k, p in paths.items()}
        try:
            import redrock  # noqa: F401

            from specnmf.redshift import redrock_fit
            have_redrock = True
        except ImportError:
            have_redrock = False
            log.info("redrock not installed: specnmf's fitter only")
        for snr, sim in test.items():
            for method, ts in sets.items():
                t0 = time.perf_counter()
                r = fit_redshifts(ts, sim.X, ivar=sim.ivar, wavelength=wave,
                                  return_chi2_curve=snr == min(cfg["snrs"]))
                dt = time.perf_counter() - t0
                if r.chi2_curve is not None:
                    curves[method] = (r.chi2_curve["QSO"][:4], r.z[:4])
                rows.append(_metrics("specnmf", method, snr, sim.redshift, r.z, r.delta_chi2,
                                     r.zwarn, dt))
                if have_redrock and cfg["n_redrock"]:
                    m = cfg["n_redrock"]
                    t0 = time.perf_counter()
                    rr = redrock_fit(paths[method], sim.X[:m], ivar=sim.ivar[:m],
                                     wavelength=wave)
                    dt = time.perf_counter() - t0
                    rows.append(_metrics("redrock", method, snr, sim.redshift[:m], rr["z"],
                                         rr["delta_chi2"], rr["zwarn"], dt))
                    # the same subset by specnmf, for a like-for-like comparison
                    rows.append(_metrics("specnmf (redrock subset)", method, snr,
                                         sim.redshift[:m], r.z[:m], r.delta_chi2[:m],
                                         r.zwarn[:m], float("nan")))
                log.info("S/N %.1f %s: %s", snr, method, rows[-1 if not have_redrock else -3])

    md = _table(rows)
    print(md)
    summary = {"config": {**cfg, "scale": args.scale, "n_components": N_COMPONENTS,
                          "n_redshifts": int(z.size), "catastrophic": CATASTROPHIC,
                          "confident_delta_chi2": CONFIDENT},
               "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text(md + "\n")
    _figures(out, rest, nmf.templates_, pca, rows, curves, z, test[min(cfg["snrs"])])
    log.info("wrote %s", out)
    return summary


def _metrics(fitter, method, snr, z_true, z, delta, zwarn, seconds):
    dz = np.abs(np.asarray(z) - z_true) / (1 + z_true)
    cat = ~(dz <= CATASTROPHIC)          # NaN (no data) counts as a failure
    return {"fitter": fitter, "templates": method, "snr": float(snr), "n": len(z_true),
            "success": float(np.mean(~cat)), "catastrophic": float(np.mean(cat)),
            "confident_wrong": float(np.mean(cat & (np.asarray(delta) > CONFIDENT))),
            "zwarn0": float(np.mean(np.asarray(zwarn) == 0)),
            "catastrophic_zwarn0": float(np.mean(cat & (np.asarray(zwarn) == 0))),
            "seconds": seconds}


def _table(rows):
    lines = [("| fitter | templates | S/N | n | success | catastrophic | confident wrong "
              "(dchi2 > 25) | catastrophic with zwarn = 0 |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fitter']} | {r['templates']} | {r['snr']:g} | {r['n']} | "
                     f"{100 * r['success']:.1f} % | {100 * r['catastrophic']:.1f} % | "
                     f"{100 * r['confident_wrong']:.1f} % | "
                     f"{100 * r['catastrophic_zwarn0']:.1f} % |")
    return "\n".join(lines)


def _figures(out, rest, T_nmf, T_pca, rows, curves, z, sim):
    plt = _common.pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax, T, name in ((axes[0], T_nmf, "Nearly-NMF"), (axes[1], T_pca, "weighted PCA")):
        for k, t in enumerate(T):
            ax.plot(rest, t / np.max(np.abs(t)) + 1.2 * k, lw=0.6)
        ax.set_ylabel(f"{name}\n(offset, scaled)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("rest wavelength [A]")
    fig.tight_layout()
    fig.savefig(out / "redshift_templates.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for fitter, ls in (("specnmf", "-"), ("redrock", "--")):
        for method, color in (("NMF", "C0"), ("PCA", "C3")):
            sel = [r for r in rows if r["fitter"] == fitter and r["templates"] == method]
            if not sel:
                continue
            ax.plot([r["snr"] for r in sel], [100 * r["catastrophic"] for r in sel], ls,
                    color=color, marker="o", label=f"{method} ({fitter})")
            ax.plot([r["snr"] for r in sel], [100 * r["confident_wrong"] for r in sel], ls,
                    color=color, marker="x", alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("S/N per pixel")
    ax.set_ylabel("% of spectra")
    ax.set_title("catastrophic failures (o) and confident wrong answers (x)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "redshift_failures.png", dpi=110)
    plt.close(fig)

    if curves:
        n = min(len(v[0]) for v in curves.values())
        fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n), sharex=True, squeeze=False)
        for i in range(n):
            ax = axes[i, 0]
            for method, color in (("NMF", "C0"), ("PCA", "C3")):
                if method in curves:
                    c2 = curves[method][0][i]
                    ax.plot(z, c2 - c2.min(), color=color, lw=0.7, label=method)
            ax.axvline(sim.redshift[i], color="k", lw=0.8, ls=":", label="true z")
            ax.set_ylabel("chi2 - min")
        axes[0, 0].legend(fontsize=8)
        axes[-1, 0].set_xlabel("trial redshift")
        fig.tight_layout()
        fig.savefig(out / "redshift_chi2.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
