r"""The paper's full problem size, streamed from disk: memory and time per iteration.

    python -m benchmarks.scale_paper [--iters 3] [--solvers nearly shift anls apg]
                                     [--block-size 4000] [--dir DIR] [--out FILE]

Green & Bailey (2024, sec. III) fit 5 templates to 130 000 simulated quasar
spectra on an 11 050-pixel rest-frame grid, 61.1 % of it missing and 11.4 % of
the observed fluxes negative.  This script writes data of exactly that shape
and those fractions (float32 flux + ivar, 2 x 5.4 GiB in one HDF5 file; the
simulator is :func:`benchmarks.scale_hdf5.write_hdf5`: a rank-5 non-negative
truth, one contiguous coverage window per spectrum, heteroscedastic noise),
then fits each solver for a few iterations in a child process that streams
the file (``block_size`` spectra at a time), reporting the child's peak
resident memory and the wall time of one iteration, and deletes the file.

The target is a peak RSS under 14 GiB; nothing of size (n_spectra, n_pixels)
is ever in memory, so the peak is set by ``block_size`` x n_pixels and the
coefficients (130 000 x 5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .scale_hdf5 import _load, emit_report, fit_each, peak_rss_gib, write_hdf5

N_SPECTRA = 130_000
N_PIXELS = 11_050
N_COMPONENTS = 5
MISSING = 0.611
NEGATIVE = 0.114


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=2,
                   help="iterations per solver (each full pass over the file is timed)")
    p.add_argument("--solvers", nargs="+", default=["nearly", "shift", "anls", "apg"])
    p.add_argument("--block-size", type=int, default=4000)
    p.add_argument("--n", type=int, default=N_SPECTRA, help="spectra (for a dry run)")
    p.add_argument("--d", type=int, default=N_PIXELS, help="pixels (for a dry run)")
    p.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="specnmf_paper_", dir=args.dir))
    path = directory / "quasars.h5"
    report = {"machine": {"cpus": os.cpu_count(), "load_before": _load()}, "fits": []}
    try:
        free = shutil.disk_usage(directory).free / 2**30
        need = 2 * 4 * args.n * args.d / 2**30
        if free < need * 1.2:
            raise SystemExit(f"need ~{need:.1f} GiB free in {directory}; {free:.1f} GiB available")
        print(f"writing {args.n} x {args.d} float32 flux + ivar ({need:.1f} GiB) to {path}",
              file=sys.stderr, flush=True)
        report["data"] = write_hdf5(path, args.n, args.d, q=N_COMPONENTS,
                                    observed_fraction=1.0 - MISSING, negative_fraction=NEGATIVE)
        report["writer_peak_rss_gib"] = peak_rss_gib()
        print(json.dumps(report["data"]), file=sys.stderr, flush=True)
        fit_each(path, report, args.solvers, q=N_COMPONENTS, iters=args.iters,
                 block_size=args.block_size)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    report["machine"]["load_after"] = _load()
    return emit_report(report, args.out)


if __name__ == "__main__":
    main()
