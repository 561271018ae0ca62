"""Real data end to end: templates and maps of a MUSE cube (Abell 478's central galaxy).

Reads the ESO archive cube (DATA / STAT variance / DQ) with
:func:`specnmf.ifu.read_cube`, fits ``k`` non-negative templates to its
spaxels weighted by the pipeline variance, names each component from its
spectrum (emission-line gas, stellar continuum, sky residual), maps them, and
compares Nearly-NMF with the clipped-data baseline and a weighted PCA on this
low-S/N cube.  Writes ``muse_templates.png``, ``muse_maps.png``,
``muse_faint.png``, ``muse_spaxels.png`` and ``summary.json``.

    python examples/muse_demo.py                 # the full 40 x 40 cube if ../shared is there
    python examples/muse_demo.py --crop          # the 12 x 12 crop bundled with specnmf
    python examples/muse_demo.py --cube PATH --out muse_output

See docs/examples/muse.md for what the figures show.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the weighted PCA of benchmarks/real.py

from benchmarks.real import find_cube, weighted_pca, wls_coefficients  # noqa: E402
from specnmf import SpectralNMF  # noqa: E402
from specnmf.datasets import muse_crop_path  # noqa: E402
from specnmf.ifu import coefficient_maps, cube_to_matrix, fit_cube, read_cube, write_maps  # noqa: E402

#: rest-frame lines of the galaxy's gas (air, Angstrom) and its redshift
GAS_LINES = {"H-beta": 4861.33, "[O III]": 5006.84, "[O I]": 6300.30, "[N II] 6548": 6548.05,
             "H-alpha": 6562.80, "[N II] 6583": 6583.45, "[S II] 6716": 6716.44,
             "[S II] 6731": 6730.82}
REDSHIFT = 0.0858  # measured from H-alpha, [N II] and [S II] of the crop
#: strong night-sky emission lines (air, Angstrom): [O I], Na D and OH
SKY_LINES = (5577.34, 5889.95, 6300.30, 6363.78, 7276.41, 7316.28, 7340.89, 7369.25, 7750.64,
             7794.11, 7913.71, 7993.33, 8344.60, 8399.17, 8430.17, 8465.36, 8827.10, 8885.85,
             8919.60, 8943.40, 8958.10, 9001.40, 9037.90)


def line_mask(wavelength, centres, half_width):
    m = np.zeros(wavelength.shape, dtype=bool)
    for c in centres:
        m |= np.abs(wavelength - c) < half_width
    return m


def highpass(t, width=41):
    """The template minus a running median: lines stand out, the continuum goes."""
    from scipy.ndimage import median_filter

    return t - median_filter(t, size=width, mode="nearest")


def describe(templates, wavelength):
    """Per component: share of its |high-pass| power at the gas lines and at the sky lines."""
    gas = line_mask(wavelength, [c * (1 + REDSHIFT) for c in GAS_LINES.values()], 6.0)
    sky = line_mask(wavelength, SKY_LINES, 2.5) & ~gas
    halpha = GAS_LINES["H-alpha"] * (1 + REDSHIFT)
    near = np.abs(wavelength - halpha) < 12  # H-alpha alone, not [N II] (+-20 A)
    out = []
    for t in templates:
        hp = highpass(t)
        a = np.abs(hp)
        base = a[~gas & ~sky].mean() + 1e-300
        line = np.clip(hp[near], 0, None)
        # H-alpha centroid -> line-of-sight velocity relative to z = REDSHIFT
        v = (float(299792.458 * ((wavelength[near] * line).sum() / line.sum() / halpha - 1))
             if near.any() and line.sum() > 0 else None)
        out.append({"gas_line_contrast": float(a[gas].mean() / base) if gas.any() else 0.0,
                    "sky_line_contrast": float(a[sky].mean() / base) if sky.any() else 0.0,
                    "continuum_level": float(np.median(t)), "halpha_velocity_kms": v})
    return out


def name_components(stats, *, gas_min=3.0, gas_share=0.3, sky_min=2.5):
    """'emission-line gas', 'sky residual' or 'stellar continuum' for each component.

    A component whose line contrast at the redshifted gas lines is at least
    ``gas_min`` and ``gas_share`` of the largest contrast of all components is
    gas (a continuum template carries a little line flux too); otherwise one
    whose contrast at the night-sky lines is >= ``sky_min`` is a sky residual;
    the others are continuum.
    """
    top = max(s["gas_line_contrast"] for s in stats)
    names = []
    for s in stats:
        c = s["gas_line_contrast"]
        if c >= max(gas_min, gas_share * top) and c >= s["sky_line_contrast"]:
            names.append("emission-line gas")
        elif s["sky_line_contrast"] >= sky_min:
            names.append("sky residual")
        else:
            names.append("stellar continuum")
    return names


def faint_bias(X, ivar, model, faint):
    """Mean (model - data) over the observed pixels of the faint spaxels, in noise sigmas."""
    obs = ivar[faint] > 0
    r = (model[faint] - X[faint]) * np.sqrt(ivar[faint])
    return float(r[obs].mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", action="store_true", help="use the bundled 12 x 12 crop")
    parser.add_argument("--cube", default=None, help="a MUSE cube (default: ../shared, else the crop)")
    parser.add_argument("--k", type=int, default=4, help="number of components (default 4)")
    parser.add_argument("--max-iter", type=int, default=100,
                        help="iterations of each fit (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="muse_output", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    log = logging.getLogger("specnmf.examples")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    path = muse_crop_path() if args.crop else (find_cube(args.cube) or muse_crop_path())
    cube = read_cube(path)
    ny, nx, n_wave = cube.cube.shape
    wave = cube.wavelength
    log.info("%s: %d x %d spaxels x %d wavelengths (%.0f-%.0f A, %s)", os.path.basename(path),
             ny, nx, n_wave, wave[0], wave[-1], cube.medium)
    timings = {}

    # 1. the templates: exact alternating NNLS, weighted by 1/STAT, DQ pixels left out
    params = {"n_components": args.k, "init": "nndsvda", "random_state": args.seed,
              "max_iter": args.max_iter}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # max_iter may stop before tol: fine for a demo
        model = fit_cube(SpectralNMF(solver="anls", **params), cube.cube, ivar=cube.ivar, mask=cube.mask,
                         header=cube.header)
    timings["anls"] = time.perf_counter() - t0
    X, ivar, _ = cube_to_matrix(cube.cube, ivar=cube.ivar, mask=cube.mask)
    X, ivar = X.astype(np.float64), ivar.astype(np.float64)
    T = np.asarray(model.templates_)
    order = np.argsort(-np.asarray(model.coefficients_).sum(axis=0) * T.sum(axis=1))
    T = T[order]
    C = np.asarray(model.coefficients_)[:, order]
    stats = describe(T, wave)
    names = name_components(stats)
    maps = coefficient_maps(C, (ny, nx))
    write_maps(out / "muse_maps.fits", maps, cube.header, names=names, overwrite=True)

    # 2. Nearly-NMF and the clipped-data baseline, both continued from the ANLS
    #    solution (so the difference is what each objective does to it), and a
    #    weighted PCA with the same k
    fits = {}
    for solver in ("nearly", "clip"):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = SpectralNMF(solver=solver, **params).fit(X, ivar=ivar, templates=T,
                                                         coefficients=C)
        timings[solver] = time.perf_counter() - t0
        fits[solver] = (np.asarray(m.coefficients_), np.asarray(m.templates_))
    fits["anls"] = (C, T)
    t0 = time.perf_counter()
    P = weighted_pca(X, ivar, args.k, n_iter=30, seed=args.seed)
    fits["pca"] = (wls_coefficients(X, ivar, P), P)
    timings["pca"] = time.perf_counter() - t0

    n_obs = int(np.count_nonzero(ivar))
    snr = np.median(X * np.sqrt(ivar), axis=1)
    faint = snr <= np.quantile(snr, 0.25)       # the faintest quarter of the spaxels
    comparison = {}
    for key, (Ck, Tk) in fits.items():
        model_flux = Ck @ Tk
        comparison[key] = {
            # PCA coefficients are signed, so not specnmf.chi2 (which checks C >= 0)
            "chi2_per_pixel": float(np.sum(ivar * (X - model_flux) ** 2)) / n_obs,
            "faint_bias_sigma": faint_bias(X, ivar, model_flux, faint),
            "negative_template_fraction": float(np.mean(Tk < 0)),
            "fit_time_s": timings[key],
        }
        log.info("%-6s chi2/pixel %.4f  faint-spaxel bias %+.3f sigma  negative template "
                 "values %.0f%%  %.1f s", key, comparison[key]["chi2_per_pixel"],
                 comparison[key]["faint_bias_sigma"],
                 100 * comparison[key]["negative_template_fraction"], timings[key])

    # 3. figures
    colors = {"emission-line gas": "C3", "stellar continuum": "C1", "sky residual": "C0"}
    fig, axes = plt.subplots(len(T), 1, figsize=(9, 1.6 * len(T) + 0.6), sharex=True,
                             layout="constrained")
    for k, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(wave, T[k], lw=0.6, color=colors.get(names[k], "k"))
        ax.set_ylabel(f"{k}", rotation=0, labelpad=8)
        ax.text(0.01, 0.8, names[k], transform=ax.transAxes, fontsize=9,
                color=colors.get(names[k], "k"))
        for c in GAS_LINES.values():
            if wave[0] < c * (1 + REDSHIFT) < wave[-1]:
                ax.axvline(c * (1 + REDSHIFT), color="C3", lw=0.4, alpha=0.3)
    axes[-1].set_xlabel(f"wavelength ({cube.medium}, Angstrom)")
    fig.suptitle("specnmf templates of the MUSE cube (ANLS, weighted by 1/STAT); red: gas lines "
                 f"at z = {REDSHIFT}", fontsize=10)
    fig.savefig(out / "muse_templates.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(T), figsize=(2.6 * len(T), 2.9), layout="constrained")
    for k, ax in enumerate(np.atleast_1d(axes)):
        im = ax.imshow(maps[:, :, k] * T[k].mean(), origin="lower", cmap="magma")
        ax.set_title(f"{k}: {names[k]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("coefficient maps (x mean template flux; north up, 0.2\" spaxels)", fontsize=10)
    fig.savefig(out / "muse_maps.png", dpi=90)
    plt.close(fig)

    # the faint spaxels, averaged: where clipping biases the model up
    w_faint = ivar[faint].sum(axis=0)
    mean_data = np.divide((ivar[faint] * X[faint]).sum(axis=0), w_faint,
                          out=np.zeros(n_wave), where=w_faint > 0)
    from scipy.ndimage import uniform_filter1d

    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(9, 5.2), sharex=True, layout="constrained",
                                   gridspec_kw={"height_ratios": [1, 1.3]})
    ax0.plot(wave, mean_data, lw=0.4, color="0.6", label="data (faintest 25 % of spaxels)")
    labels = {"nearly": "Nearly-NMF", "clip": "clipped-data NMF", "pca": "weighted PCA",
              "anls": "ANLS"}
    for key, color in (("nearly", "C3"), ("clip", "C0"), ("pca", "C2")):
        Ck, Tk = fits[key]
        mf = Ck[faint] @ Tk
        mean_model = np.divide((ivar[faint] * mf).sum(axis=0), w_faint, out=np.zeros(n_wave),
                               where=w_faint > 0)
        if key == "nearly":
            ax0.plot(wave, mean_model, lw=0.6, color=color, label="Nearly-NMF model")
        # the residual smoothed over 41 pixels (51 Angstrom): a bias shows as an offset
        ax1.plot(wave, uniform_filter1d(mean_model - mean_data, 41), lw=1.0, color=color,
                 label=f"{labels[key]} (bias {comparison[key]['faint_bias_sigma']:+.3f} sigma)")
    ax0.axhline(0, color="k", lw=0.4)
    ax0.set_ylabel("flux")
    ax0.legend(fontsize=8, loc="upper right")
    ax1.axhline(0, color="k", lw=0.4)
    ax1.set_ylabel("model - data, smoothed")
    ax1.set_xlabel(f"wavelength ({cube.medium}, Angstrom)")
    ax1.legend(fontsize=8, loc="upper right")
    fig.suptitle("faintest quarter of the spaxels: mean spectrum (1e-20 erg/s/cm2/A) and "
                 "mean residual of each model", fontsize=10)
    fig.savefig(out / "muse_faint.png", dpi=90)
    plt.close(fig)

    bright = int(np.argmax(snr))
    dim = int(np.argmin(snr))
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), layout="constrained")
    for ax, i, label in ((axes[0], bright, "brightest spaxel"), (axes[1], dim, "faintest spaxel")):
        ax.plot(wave, X[i], lw=0.4, color="0.6", label=f"{label} (y={i // nx}, x={i % nx})")
        for k in range(len(T)):
            ax.plot(wave, C[i, k] * T[k], lw=0.7, color=colors.get(names[k], "k"),
                    label=f"{k}: {names[k]}" if ax is axes[0] else None)
        ax.plot(wave, C[i] @ T, lw=0.8, color="k", label="model" if ax is axes[0] else None)
        ax.axhline(0, color="k", lw=0.3)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    axes[1].set_xlabel(f"wavelength ({cube.medium}, Angstrom)")
    fig.savefig(out / "muse_spaxels.png", dpi=90)
    plt.close(fig)

    summary = {
        "cube": os.path.basename(path), "spatial_shape": [ny, nx], "n_wave": n_wave,
        "wavelength_range": [float(wave[0]), float(wave[-1])], "medium": cube.medium,
        "negative_flux_fraction": float(np.mean(X[ivar > 0] < 0)),
        "median_snr_per_spaxel": [float(np.quantile(snr, q)) for q in (0.05, 0.5, 0.95)],
        "k": args.k, "max_iter": args.max_iter, "n_faint_spaxels": int(faint.sum()),
        "components": [{"name": n, **s, "map_peak_yx": [int(v) for v in
                                                        np.unravel_index(np.argmax(maps[:, :, k]),
                                                                         (ny, nx))]}
                       for k, (n, s) in enumerate(zip(names, stats))],
        "comparison": comparison,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
