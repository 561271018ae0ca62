r"""A streamed pass over a span-packed file against one read of that file (issue 18, item 3).

    python -m benchmarks.packed [--n 20000] [--d 11050] [--iters 6] [--block-size 2000]
                                [--cold] [--dir DIR] [--keep] [--out FILE]

1. writes a paper-like dense HDF5 file (float32 ``flux`` and ``ivar``, one
   contiguous observed window per spectrum, 60 % missing, flux NaN outside;
   the writer of :mod:`benchmarks.scale_hdf5`);
2. packs it (:func:`specnmf.io.pack_spectra`, what ``specnmf pack`` runs) and
   reports both sizes;
3. in a child process per file (so each has its own peak RSS, that of the
   fit, measured before the reads), measures
   * ``read``: one plain read of the file's arrays, block by block with the
     fit's block size, into a reused buffer (packed: the contiguous byte
     range of ``flux`` and of ``ivar`` of each block, by ``readinto`` at the
     datasets' offsets; dense: ``read_direct`` of both h5py datasets),
     median of 3;
   * ``engine read`` (packed only): the same blocks as the Packed engine
     hands them to Nearly-NMF's compiled kernel (views of the file's memory
     map; the first block copied into a 1-D buffer), every value summed once
     by numpy: what the kernel reads, without its arithmetic;
   * ``pass``: Nearly-NMF, q=5, float32, ``block_size`` spectra per block;
     the median interval between fit callbacks (the first, which includes
     the start, and the last, the loop's measuring pass, left out): one
     streamed pass over the file plus the (q, d) template step;
   and the ratio pass / read.

The page cache decides what a "read" costs.  By default the files were just
written, so they are read from memory (warm): the pass / read ratio then
measures the kernel's compute against a memory copy.  ``--cold`` evicts the
file from the page cache (``posix_fadvise(DONTNEED)`` after an ``fsync``; no
root needed) before every read and before every pass (in the callback), so
both come from the disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .scale_hdf5 import _load, peak_rss_gib, write_hdf5

_CHILD = r"""
import json, os, resource, statistics, sys, time
import numpy as np

path, kind, q, iters, block_size, cold = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                          int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1")

def evict():
    if cold:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

def timed_median(fn, repeats=3):
    times = []
    for _ in range(repeats):
        evict()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times

from specnmf import SpectralNMF
if kind == "packed":
    from specnmf.io import open_packed
    from specnmf.engine import Packed
    data = open_packed(path)
    X, ivar = data, None
    n, d = data.shape
    slices = [slice(s, min(n, s + block_size)) for s in range(0, n, block_size)]
    width = max(int(data.offsets[r.stop] - data.offsets[r.start]) for r in slices)
    buf = np.empty(width, data.dtype)
    where = [data._file[name].id.get_offset() for name in ("flux", "ivar")]
    raw = open(path, "rb", buffering=0)

    def read():
        # the bytes of each block's range of flux and ivar, by plain reads (a memory map's
        # pages, while mapped, could not be evicted for --cold)
        size = data.dtype.itemsize
        for r in slices:
            a, b = int(data.offsets[r.start]), int(data.offsets[r.stop])
            for offset in where:
                view, done = buf[:b - a].data.cast("B"), 0
                while done < view.nbytes:
                    raw.seek(offset + a * size + done)
                    done += raw.readinto(view[done:])

    engine = Packed(data, dtype=data.dtype, block_rows=block_size)

    def engine_read():
        # what a Nearly-NMF pass reads: each block's spans as the engine hands them to the
        # kernel (views of the memory map, the first block copied), every value read once
        for r in slices:
            Xp, ip, _, mapped = engine._packed_block(r)
            Xp.sum(), ip.sum()
            if mapped:
                data.release(r)
else:
    import h5py
    f = h5py.File(path, "r")
    X, ivar = f["flux"], f["ivar"]
    n, d = X.shape
    slices = [slice(s, min(n, s + block_size)) for s in range(0, n, block_size)]
    buf = np.empty((block_size, d), X.dtype)

    def read():
        for r in slices:
            X.read_direct(buf, r, np.s_[:r.stop - r.start])
            ivar.read_direct(buf, r, np.s_[:r.stop - r.start])
    engine_read = None

report = {"kind": kind}
stamps = []
def callback(it, C, T, terms):
    stamps.append(time.perf_counter())
    evict()
evict()
t0 = time.perf_counter()
model = SpectralNMF(q, solver="nearly", max_iter=iters, tol=0, block_size=block_size,
                    dtype="float32", random_state=0)
model.fit(X, ivar=ivar, callback=callback)
report["fit_seconds"] = time.perf_counter() - t0
intervals = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
report["iteration_seconds"] = intervals
report["pass_seconds"] = statistics.median(intervals[:-1] or intervals)
report["chi2_last"] = float(model.chi2_[-1])
report["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
# after the fit, so that the plain read's mapped pages do not count in the fit's peak RSS
report["read_seconds"], report["read_runs"] = timed_median(read)
if engine_read is not None:
    report["engine_read_seconds"], report["engine_read_runs"] = timed_median(engine_read)
print(json.dumps(report))
"""


def measure_in_child(path, kind, *, q, iters, block_size, cold):
    """Run the read and pass measurements of one file in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), kind, str(q), str(iters),
                           str(block_size), "1" if cold else "0"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(report):
    """The markdown summary of one run."""
    m, data, pk = report["meta"], report["data"], report["pack"]
    packed, dense = report["packed"], report["dense"]
    cache = "cold (evicted before every read and pass)" if report["cold"] else \
        "warm (files just written, read from the page cache)"
    out = [f"Measured {m['date']} on {m['machine']} ({m['cpu_count']} CPUs), numpy "
           f"{m['numpy']}, BLAS {m['blas']}, kernels {m['kernels']}, specnmf {m['specnmf']} "
           f"(commit {m['commit']}); load average {m['load_before']} before, "
           f"{report['load_after']} after.", "",
           f"Command: `{m['command']}`", "",
           f"Data: {data['n_spectra']} x {data['n_pixels']} float32, "
           f"{data['missing_fraction']:.1%} missing (one window per spectrum); Nearly-NMF, q=5, "
           f"float32, block_size={report['block_size']}, {report['iters']} iterations; page "
           f"cache: {cache}.", "",
           "| file | size GiB | size ratio | read s | pass s | pass / read | peak RSS GiB |",
           "|---|---|---|---|---|---|---|"]
    dense_gib = data["file_gib"]
    packed_gib = pk["file_bytes"] / 2**30
    for name, gib, res in (("dense (Streamed engine)", dense_gib, dense),
                           ("packed (Packed engine)", packed_gib, packed)):
        out.append(f"| {name} | {gib:.3f} | {gib / dense_gib:.2f}x | {res['read_seconds']:.3f} | "
                   f"{res['pass_seconds']:.3f} | "
                   f"{res['pass_seconds'] / res['read_seconds']:.2f}x | {res['peak_rss_gib']:.2f} |")
    out += ["", f"Packed: the engine's read of the blocks (its spans in the memory map, summed) "
                f"{packed['engine_read_seconds']:.3f} s; pass on the packed file / pass on the "
                f"dense file {packed['pass_seconds'] / dense['pass_seconds']:.2f}x; packing took "
                f"{pk['seconds']:.1f} s (peak RSS of the packing process "
                f"{report['pack_peak_rss_gib']:.2f} GiB).  Targets (issue 18): packed size "
                f"<= 0.5x, pass <= 1.3x the read of the packed file."]
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--d", type=int, default=11_050)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--block-size", type=int, default=2000)
    p.add_argument("--missing", type=float, default=0.6)
    p.add_argument("--cold", action="store_true", help="evict the files from the page cache "
                                                       "before every read and pass")
    p.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--out", default=None,
                   help="write the report to OUT.json and OUT.md (default: print only)")
    args = p.parse_args(argv)

    from specnmf.io import pack_spectra

    from .run import _meta

    meta = _meta("packed")
    meta["command"] = "python -m benchmarks.packed " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)
    directory = Path(tempfile.mkdtemp(prefix="specnmf_packed_", dir=args.dir))
    dense_path, packed_path = directory / "dense.h5", directory / "packed.h5"
    report = {"meta": meta, "cold": args.cold, "block_size": args.block_size,
              "iters": args.iters}
    try:
        print(f"writing {args.n} x {args.d} float32 flux + ivar to {dense_path}", file=sys.stderr)
        report["data"] = write_hdf5(dense_path, args.n, args.d, q=5,
                                    observed_fraction=1.0 - args.missing, verbose=False)
        import h5py

        t0 = time.perf_counter()
        with h5py.File(dense_path, "r") as f:
            report["pack"] = pack_spectra(f["flux"], f["ivar"], packed_path,
                                          block_rows=args.block_size)
        report["pack"]["seconds"] = time.perf_counter() - t0
        report["pack_peak_rss_gib"] = peak_rss_gib()
        print(json.dumps(report["pack"]), file=sys.stderr, flush=True)
        for kind, path in (("packed", packed_path), ("dense", dense_path)):
            print(f"measuring {kind}", file=sys.stderr, flush=True)
            report[kind] = measure_in_child(path, kind, q=5, iters=args.iters,
                                            block_size=args.block_size, cold=args.cold)
            print(json.dumps(report[kind]), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    report["load_after"] = _load()
    text = render(report)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(report, indent=2))
        Path(args.out + ".md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
