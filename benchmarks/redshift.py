"""Redshift fitting: specnmf.redshift.fit_redshifts against redrock, side by side.

    python -m benchmarks.redshift              # 60 quasars, 2-pixel grid (3389 trials), ~2-4 min
    python -m benchmarks.redshift --n 20       # fewer spectra
    python -m benchmarks.redshift --smoke      # tiny: checks the harness only

Both fit the same simulated observed-frame quasars (``make_quasars``: 3600-10000 A,
dloglam 1e-4, 4437 pixels) with the same 5 NMF templates (Nearly-NMF, trained on the
rest-frame versions of other simulated quasars) on the same redshift grid (0.05 <= z <= 4,
uniform in log10(1+z)), in this one process with one thread each (OMP/OpenBLAS/MKL/numba
threads set to 1 before numpy is imported).  redrock reads the templates from the file
``write_redrock`` wrote (RRMETHOD NMF, RRIGM None, the grid as its REDSHIFTS HDU) and runs
``redrock.zfind`` with ``mp_procs=1``; specnmf reads the same file (``read_redrock``).
Both get one untimed warm-up call on 2 spectra (numba compilation), then the timed call on
all spectra.  Writes ``benchmarks/redshift_results.json`` and ``.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import platform
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CATASTROPHIC = 0.0033


def train_templates(n_train, n_components, max_iter, seed, dloglam=1e-4):
    """Nearly-NMF templates on the rest-frame versions of simulated quasars."""
    from specnmf import SpectralNMF
    from specnmf.datasets._simulate import make_quasars
    from specnmf.preprocess import rest_frame_grid, to_rest_frame

    sim = make_quasars(n_train, random_state=seed, z_range=(0.0, 4.1), snr=5.0, dloglam=dloglam)
    rest = rest_frame_grid(3600.0, 10000.0, 0.0, 4.1, dloglam=dloglam)
    flux, ivar = to_rest_frame(sim.wavelength, sim.X, sim.ivar, sim.redshift, rest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # ConvergenceWarning at max_iter
        model = SpectralNMF(n_components, max_iter=max_iter, random_state=seed,
                            dtype="float32").fit(flux, ivar=ivar, wavelength=rest)
    return model


def run(n=60, n_train=600, n_components=5, max_iter=200, step_pixels=2, snr=2.0, seed=0,
        smoke=False):
    from specnmf.datasets._simulate import make_quasars
    from specnmf.redshift import (
        fit_redshifts,
        read_redrock,
        redrock_fit,
        redshift_grid,
        write_redrock,
    )

    if smoke:
        n, n_train, max_iter, step_pixels = 4, 60, 5, 20
    t0 = time.perf_counter()
    model = train_templates(n_train, n_components, max_iter, seed)
    t_train = time.perf_counter() - t0
    test = make_quasars(n, random_state=seed + 1, z_range=(0.05, 4.0), snr=snr,
                        dtype="float64")
    wave = test.wavelength
    z = redshift_grid(0.05, 4.0, wavelength=wave, template_wavelength=model.wavelength_,
                      step=step_pixels * 1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rrtemplate-qso.fits")
        write_redrock(path, model, spectype="QSO", redshifts=z)
        ts = read_redrock(path)
        # warm-ups (numba compilation in both), untimed
        fit_redshifts(ts, test.X[:2], ivar=test.ivar[:2], wavelength=wave)
        redrock_fit(path, test.X[:2], ivar=test.ivar[:2], wavelength=wave)
        t0 = time.perf_counter()
        ours = fit_redshifts(ts, test.X, ivar=test.ivar, wavelength=wave)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = redrock_fit(path, test.X, ivar=test.ivar, wavelength=wave)
        t_rr = time.perf_counter() - t0

    def rate(zfit):
        return float(np.mean(np.abs(zfit - test.redshift) / (1 + test.redshift) < CATASTROPHIC))

    agree = np.abs(ours.z - theirs["z"]) / (1 + theirs["z"]) < 3e-4
    # minima closer than delta chi^2 = 9 are coin flips (redrock's SMALL_DELTA_CHI2)
    sure = (ours.delta_chi2 >= 9) & (theirs["delta_chi2"] >= 9)
    import redrock

    result = {
        "n_spectra": int(n), "n_pixels": int(wave.size), "n_templates": int(n_components),
        "n_redshifts": int(z.size), "z_step_pixels": int(step_pixels), "snr": snr,
        "specnmf_s": t_ours, "redrock_s": t_rr, "ratio": t_rr / t_ours,
        "specnmf_ms_per_spectrum": 1e3 * t_ours / n, "redrock_ms_per_spectrum": 1e3 * t_rr / n,
        "agree_3e-4": float(agree.mean()),
        "agree_3e-4_both_dchi2_ge_9": float(agree[sure].mean()) if sure.any() else None,
        "n_both_dchi2_ge_9": int(sure.sum()),
        "success_specnmf": rate(ours.z), "success_redrock": rate(theirs["z"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_s": t_train, "redrock_version": redrock.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "load_avg": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": smoke,
    }
    return result


def table(r):
    return "\n".join([
        ("| spectra x pixels | templates | trial z | specnmf | redrock 0.21 | ratio | "
         "same z (3e-4 (1+z)) | success specnmf / redrock |"),
        "|---|---|---|---|---|---|---|---|",
        (f"| {r['n_spectra']} x {r['n_pixels']} | {r['n_templates']} NMF | {r['n_redshifts']} | "
         f"{r['specnmf_s']:.2f} s ({r['specnmf_ms_per_spectrum']:.1f} ms/spectrum) | "
         f"{r['redrock_s']:.1f} s ({r['redrock_ms_per_spectrum']:.0f} ms/spectrum) | "
         f"**{r['ratio']:.0f}x** | {100 * r['agree_3e-4']:.0f} % | "
         f"{100 * r['success_specnmf']:.0f} % / {100 * r['success_redrock']:.0f} % |"),
        "",
        f"Same z among the {r['n_both_dchi2_ge_9']} spectra with delta chi^2 >= 9 in both: "
        + ("n/a" if r["agree_3e-4_both_dchi2_ge_9"] is None else
           f"{100 * r['agree_3e-4_both_dchi2_ge_9']:.0f} %") + ".",
        "",
        (f"One process, one thread each; load average {r['load_avg']:.1f} at the end; "
         f"peak RSS {r['peak_rss_mib']:.0f} MiB; {r['date']}."),
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="spectra to fit (default 60)")
    parser.add_argument("--step-pixels", type=int, default=2,
                        help="redshift grid step in pixels of 1e-4 dex (default 2: 3389 trials)")
    parser.add_argument("--snr", type=float, default=2.0, help="S/N per pixel (default 2)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; checks the harness")
    args = parser.parse_args(argv)
    r = run(n=args.n, step_pixels=args.step_pixels, snr=args.snr, smoke=args.smoke)
    md = table(r)
    print(md)
    if not args.smoke:
        (HERE / "redshift_results.json").write_text(json.dumps(r, indent=1) + "\n")
        (HERE / "redshift_results.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
