"""Shared helpers of the paper examples: arguments, JSON output, figures, fits.

Not part of the specnmf package; the scripts in this folder import it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

SCALES = ("tiny", "reduced", "paper")


def parse_args(description, *, solver=False, argv=None, extra=None, default_solver="nearly"):
    """``--scale {tiny,reduced,paper}`` (default reduced), ``--out DIR``, optional ``--solver``.

    ``extra(parser)`` may add script-specific arguments.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=SCALES, default="reduced",
                        help="problem size: tiny (tests, seconds), reduced (default, minutes "
                             "on 2 cores), paper (the paper's sizes; see docs/examples/paper.md)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder for the PNGs and summary.json "
                             "(default: paper_output/<script name>)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    if solver:
        parser.add_argument("--solver", default=default_solver,
                            choices=("nearly", "shift", "clip", "anls", "apg"),
                            help=f"solver for the template fits (default: {default_solver})")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def output_dir(args, name):
    out = args.out if args.out is not None else Path("paper_output") / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return logging.getLogger("specnmf.examples")


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else None
    return value


def write_summary(out, summary):
    """Write ``summary.json`` (numpy scalars/arrays converted; non-finite -> null)."""
    path = Path(out) / "summary.json"
    with open(path, "w") as f:
        json.dump(_jsonable(summary), f, indent=2, sort_keys=True)
    return path


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def sequential_fit(X, ivar, n_components, *, stage_iter=50, max_iter=1000, random_state=0,
                   **params):
    """The paper's sequential template build with ``SpectralNMF(init="sequential")``.

    One template is trained for ``stage_iter`` iterations, then a flat template
    with random coefficients is added and all are trained together, up to
    ``n_components``; the fit then continues for ``max_iter`` iterations.
    """
    from specnmf import SpectralNMF

    model = SpectralNMF(n_components, init="sequential", max_iter=max_iter,
                        random_state=random_state, sequential_iter=stage_iter, **params)
    return model.fit(X, ivar=ivar)


def environment():
    """Facts that make timings comparable: CPU count, BLAS threads, versions."""
    import platform

    import specnmf

    return {"python": platform.python_version(), "numpy": np.__version__,
            "specnmf": getattr(specnmf, "__version__", "?"), "cpu_count": os.cpu_count()}
