"""Progress of a fit: a tqdm bar, a terminal bar, or log lines.

``SpectralNMF(progress=True)`` shows, after each iteration, the iteration
count out of ``max_iter``, the objective and an ETA (an upper bound: the fit
may meet ``tol`` earlier).  What it draws depends on what is available:

1. `tqdm <https://tqdm.github.io>`_ (the ``progress`` extra): ``tqdm.auto``,
   so a Jupyter notebook with ipywidgets gets a widget and a terminal a text bar;
2. without tqdm, on a terminal: a one-line text bar on stderr, the one the
   ``specnmf`` command draws (:class:`TextBar`);
3. otherwise: log records on the ``"specnmf.progress"`` logger, one every
   :data:`LOG_INTERVAL` seconds and one at the end.  If logging is not set
   up to show INFO records of that logger, they are printed to stderr for
   the duration of the fit.

The display is driven by the fit's ``callback`` hook
(:func:`specnmf.solvers.run`), so it sees exactly the objective values the
fit records and the solvers know nothing about it.  ``verbose`` is separate:
it logs every 10th iteration on the ``"specnmf"`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time

__all__ = ["TextBar", "FitProgress", "progress_callback", "LOG_INTERVAL"]

logger = logging.getLogger("specnmf.progress")

#: seconds between two log records of the logging fallback
LOG_INTERVAL = 2.0


def format_seconds(s):
    """``m:ss`` (``?`` if unknown)."""
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}"


class TextBar:
    """One-line progress (iteration, chi^2, ETA) redrawn in place on a stream."""

    def __init__(self, total, stream, width=24):
        self.total = max(int(total), 1)
        self.stream = stream
        self.width = width
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.shown = False

    def update(self, iteration, chi2=None, force=False, start_iteration=0):
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        frac = min(iteration / self.total, 1.0)
        filled = int(round(frac * self.width))
        done = iteration - start_iteration
        eta = (now - self.start) / done * (self.total - iteration) if done > 0 else float("nan")
        chi = f"  chi2 {chi2:.6g}" if chi2 is not None else ""
        line = (f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
                f"iter {iteration}/{self.total}{chi}  ETA <= {format_seconds(eta)}")
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def close(self):
        self.clear()


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class FitProgress:
    """Progress display of one fit (see the module docstring for which one).

    Parameters
    ----------
    total : int
        ``max_iter``.
    start : int, default=0
        Iteration the fit starts from (resumed fits).
    desc : str, default="specnmf"
        Label of the bar.
    stream : file-like, optional
        Where bars are drawn; default ``sys.stderr`` at the time of the call.
    """

    def __init__(self, total, *, start=0, desc="specnmf", stream=None):
        self.total = max(int(total), 1)
        self.start_iteration = int(start)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        self.t0 = time.monotonic()
        self.last_log = -math.inf
        self.logged_iteration = None
        self.iteration = start
        self.objective = self.chi2 = None
        self._restore = None
        tqdm = _tqdm()
        if tqdm is not None:
            self.kind = "tqdm"
            self.bar = tqdm(total=self.total, initial=self.start_iteration, desc=desc,
                            unit="it", file=self.stream, leave=True, dynamic_ncols=True)
        elif getattr(self.stream, "isatty", lambda: False)():
            self.kind = "text"
            self.bar = TextBar(self.total, self.stream)
        else:
            self.kind = "log"
            self.bar = None
            self._show_logs()

    def _show_logs(self):
        """Print the records to stderr if logging is not set up to show them."""
        if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
            return
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._restore = (handler, logger.level, logger.propagate)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def update(self, iteration, objective, chi2=None):
        """Show that ``iteration`` is done with this ``objective`` (chi^2 plus penalties)."""
        self.iteration, self.objective, self.chi2 = iteration, objective, chi2
        if self.kind == "tqdm":
            self.bar.set_postfix_str(f"objective={objective:.6g}", refresh=False)
            self.bar.update(iteration - self.bar.n)
        elif self.kind == "text":
            self.bar.update(iteration, objective, start_iteration=self.start_iteration)
        else:
            now = time.monotonic()
            if now - self.last_log >= LOG_INTERVAL or iteration >= self.total:
                self.last_log = now
                self._log()

    def _log(self):
        it = self.iteration
        elapsed = time.monotonic() - self.t0
        done = it - self.start_iteration
        eta = elapsed / done * (self.total - it) if done > 0 else float("nan")
        logger.info("%s: iteration %d/%d, objective %.6g, elapsed %s, ETA <= %s", self.desc,
                    it, self.total, self.objective, format_seconds(elapsed), format_seconds(eta))
        self.logged_iteration = it

    def close(self):
        """Finish the display (the last state is logged if it was not yet)."""
        if self.kind == "tqdm":
            self.bar.close()
        elif self.kind == "text":
            self.bar.close()
        else:
            if self.objective is not None and self.logged_iteration != self.iteration:
                self._log()
            if self._restore is not None:
                handler, level, propagate = self._restore
                logger.removeHandler(handler)
                logger.setLevel(level)
                logger.propagate = propagate
                self._restore = None


@contextlib.contextmanager
def progress_callback(progress, total, callback=None, *, start=0, desc="specnmf"):
    """A fit ``callback`` that also shows progress, when ``progress`` is true.

    Yields ``callback`` itself when ``progress`` is false; otherwise a callback
    with the signature of :func:`specnmf.solvers.run`'s that updates a
    :class:`FitProgress` and then calls ``callback`` (its return value still
    stops the fit).  The display is closed on exit, also on an error or Ctrl-C.
    """
    if not progress:
        yield callback
        return
    bar = FitProgress(total, start=start, desc=desc)

    def show(iteration, C, T, terms):
        bar.update(iteration, sum(terms.values()), terms.get("chi2"))
        return callback(iteration, C, T, terms) if callback is not None else None

    try:
        yield show
    finally:
        bar.close()
