"""Where the data live: in memory, streamed from disk, or on a Dask cluster.

Every solver reads the data once per iteration, as a pass over blocks of whole
spectra (rows): the coefficients of a block are updated inside the block, and
the block returns template statistics whose size does not depend on the number
of spectra (see docs/architecture.md).  An engine owns that pass:

``engine.run_pass(solver, fn, C)``
    for every block of rows ``rows`` (a slice), ``block =
    solver.prepare_block(X_b, ivar_b)`` and ``part, stats = fn(rows, block,
    C[rows])``; returns ``[(rows, part), ...]`` in block order and the
    elementwise sum of all ``stats`` tuples (arrays or floats).  ``fn`` and
    ``solver`` must be picklable (cloudpickle) so that a distributed engine can
    ship them to workers; only the block's rows of ``C`` travel with a task.

The same solver code therefore runs on

* :class:`InMemory` — arrays already in memory (numpy or any array-API
  namespace); validated once, prepared blocks cached between passes;
* :class:`Streamed` — anything that can be sliced by rows into numpy arrays
  (``np.memmap``, ``h5py.Dataset``, ``zarr.Array``, a FITS image opened with
  ``memmap=True``); each pass reads, validates and prepares one block at a
  time, so peak memory is set by ``block_size`` and the templates;
* ``specnmf._dask.DaskEngine`` — dask arrays chunked by spectra, one task per
  chunk and a tree reduction of the statistics.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from . import _validation as V
from .backends import asarray, is_numpy_namespace

__all__ = ["DataSummary", "Engine", "InMemory", "Streamed", "make_engine", "is_lazy"]

# Elements per block for in-memory passes: small enough that a block's
# temporaries stay in cache, large enough that the matrix products are efficient.
_CACHE_ELEMENTS = 1 << 18
# Elements per block when streaming from disk (about 64 MB of float64 per array).
_STREAM_ELEMENTS = 1 << 23


@dataclass
class DataSummary:
    """What one validating pass over the data learns.

    Attributes
    ----------
    sum_ivar : float
        Sum of all inverse variances.
    n_observed : int
        Number of entries with ``ivar > 0``.
    weighted_sum_X, sum_abs : float
        ``sum(ivar * X)`` and ``sum(ivar * abs(X))``.
    min_observed : float
        Smallest flux among observed entries (0 if none).
    empty_spectra : ndarray of bool, shape (n_spectra,)
    empty_pixels : ndarray of bool, shape (n_pixels,)
    """

    sum_ivar: float
    n_observed: int
    weighted_sum_X: float
    sum_abs: float
    min_observed: float
    empty_spectra: np.ndarray
    empty_pixels: np.ndarray

    @property
    def ivar_scale(self) -> float:
        """Mean inverse variance of the observed entries (1 if none): the unit of penalties."""
        return self.sum_ivar / self.n_observed if self.n_observed else 1.0

    @property
    def data_scale(self) -> float:
        """Typical positive flux: weighted mean of X, or of abs(X) if that is <= 0."""
        if self.sum_ivar <= 0:
            return 1.0
        mean = self.weighted_sum_X / self.sum_ivar
        if mean <= 0:
            mean = self.sum_abs / self.sum_ivar
        return mean if mean > 0 else 1.0

    @classmethod
    def combine(cls, parts):
        """Merge the summaries of consecutive blocks of spectra."""
        parts = list(parts)
        observed_pixels = np.zeros_like(parts[0].empty_pixels)
        for p in parts:
            observed_pixels |= ~p.empty_pixels
        return cls(
            sum_ivar=sum(p.sum_ivar for p in parts),
            n_observed=sum(p.n_observed for p in parts),
            weighted_sum_X=sum(p.weighted_sum_X for p in parts),
            sum_abs=sum(p.sum_abs for p in parts),
            min_observed=min(p.min_observed for p in parts),
            empty_spectra=np.concatenate([p.empty_spectra for p in parts]),
            empty_pixels=~observed_pixels,
        )


def summarize_block(X, ivar) -> DataSummary:
    """Summary of one validated numpy block (see :class:`DataSummary`)."""
    observed = ivar > 0
    obs_rows = np.count_nonzero(observed, axis=1)
    n_obs = int(obs_rows.sum())
    wx = ivar * X
    # per-row sums in the working precision, then float64 across rows
    return DataSummary(
        sum_ivar=float(np.sum(ivar, axis=1).sum(dtype=np.float64)),
        n_observed=n_obs,
        weighted_sum_X=float(np.sum(wx, axis=1).sum(dtype=np.float64)),
        sum_abs=float(np.sum(np.abs(wx, out=wx), axis=1).sum(dtype=np.float64)),
        min_observed=float(np.min(X, where=observed, initial=np.inf)) if n_obs else 0.0,
        empty_spectra=obs_rows == 0,
        empty_pixels=~np.any(observed, axis=0),
    )


def sum_stats(total, part):
    """Add one block's statistics (a tuple of arrays or floats) to a running total.

    The total is a list owned by the pass and updated in place (no new
    (q, n_pixels) arrays per block); ``part`` is left untouched.
    """
    if total is None:
        return [p if isinstance(p, float) else p + 0 for p in part]
    for i, p in enumerate(part):
        total[i] += p
    return total


class Engine:
    """Base class: a sequence of row blocks and a pass over them."""

    in_memory = True

    def __init__(self, n_spectra, n_pixels, dtype, xp, block_rows, device=None):
        self.n_spectra = int(n_spectra)
        self.n_pixels = int(n_pixels)
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.device = device
        self.block_rows = max(1, int(block_rows))
        self._summary = None

    def row_slices(self):
        n, b = self.n_spectra, self.block_rows
        return [slice(s, min(n, s + b)) for s in range(0, n, b)]

    # -- to be provided by subclasses ------------------------------------
    def _read(self, rows):
        """Validated numpy block ``(X_b, ivar_b)`` of the spectra ``rows``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------
    def _to_xp(self, a):
        if is_numpy_namespace(self.xp):
            return a
        return asarray(a, self.xp, dtype=self.dtype, device=self.device)

    def blocks(self):
        """Iterate over validated ``(rows, X_b, ivar_b)`` in the working namespace."""
        for rows in self.row_slices():
            Xb, ib = self._read(rows)
            yield rows, self._to_xp(Xb), self._to_xp(ib)

    def scan(self) -> DataSummary:
        """Validate every block once and summarise the data (cached)."""
        if self._summary is None:
            self._summary = DataSummary.combine(
                summarize_block(*self._read(rows)) for rows in self.row_slices())
        return self._summary

    def run_pass(self, solver, fn, C):
        """One pass: ``fn(rows, solver.prepare_block(X_b, ivar_b), C[rows])`` for every block."""
        parts, total = [], None
        for rows, Xb, ib in self.blocks():
            part, stats = fn(rows, solver.prepare_block(Xb, ib), C[rows, ...])
            parts.append((rows, part))
            total = sum_stats(total, stats)
        return parts, total


class InMemory(Engine):
    """Validated arrays held in memory; prepared blocks are cached between passes.

    Parameters
    ----------
    X, ivar : arrays of shape (n_spectra, n_pixels)
        Already validated (see :func:`specnmf._validation.check_spectra`),
        numpy or any array-API namespace ``xp``.
    """

    def __init__(self, X, ivar, *, xp=np, block_rows=None, device=None):
        n, d = X.shape
        if block_rows is None:
            # accelerators want few large products; CPUs want cache-sized blocks
            block_rows = max(16, _CACHE_ELEMENTS // max(1, d)) if is_numpy_namespace(xp) else n
        super().__init__(n, d, X.dtype if hasattr(X.dtype, "kind") else np.float64, xp,
                         block_rows, device)
        self.X, self.ivar = X, ivar
        self._prepared = None
        self._prepared_for = None

    def _read(self, rows):
        from .backends import to_numpy

        return to_numpy(self.X[rows, ...]), to_numpy(self.ivar[rows, ...])

    def blocks(self):
        for rows in self.row_slices():
            yield rows, self.X[rows, ...], self.ivar[rows, ...]

    def scan(self):
        if self._summary is None and is_numpy_namespace(self.xp):
            self._summary = summarize_block(self.X, self.ivar)
        return super().scan()

    def _coverage(self):
        """First and last observed pixel of every spectrum, and the order sorting the first."""
        if getattr(self, "_coverage_cache", None) is None:
            from ._kernels import spans

            lo, hi = spans(self.ivar)
            first = lo.astype(np.int64)
            last = np.where(hi > 0, hi.astype(np.int64) - 1, 0)
            self._coverage_cache = (first, last, np.argsort(first, kind="stable"))
        return self._coverage_cache

    def cropped_fraction(self, block_rows):
        """Share of the (n_spectra, n_pixels) entries inside the observed spans of sorted blocks."""
        first, last, order = self._coverage()
        starts = np.arange(0, self.n_spectra, block_rows)
        lo = np.minimum.reduceat(first[order], starts)
        hi = np.maximum.reduceat(last[order], starts) + 1
        rows = np.diff(np.append(starts, self.n_spectra))
        return float(np.sum(rows * np.maximum(hi - lo, 1))) / (self.n_spectra * self.n_pixels)

    def choose_block_rows(self, large, small, *, gain=0.6):
        """Small cropped blocks when they skip enough unobserved pixels, else large ones.

        Small blocks cost ~1.5x in product efficiency (measured), so they are
        used only when cropping leaves less than ``gain`` of the work.
        """
        if is_numpy_namespace(self.xp) and small < large and self.cropped_fraction(small) < gain:
            return small
        return large

    def _coverage_blocks(self):
        """Row blocks of spectra sorted by first observed pixel, with their observed span.

        Survey spectra in a common rest frame observe one contiguous window
        each (61 % of the paper's quasar matrix is missing that way).  Sorted
        by where the window starts, the spectra of a block share most of it,
        so every product of the pass can skip the pixels no spectrum of the
        block observes.  Returns ``[(index array, column slice), ...]``.
        """
        first, last, order = self._coverage()
        out = []
        for s in range(0, self.n_spectra, self.block_rows):
            idx = order[s:s + self.block_rows]
            lo, hi = int(first[idx].min()), int(last[idx].max()) + 1
            out.append((idx, slice(lo, max(hi, lo + 1))))
        return out

    def run_pass(self, solver, fn, C):
        key = (solver.prepare_key(), self.block_rows)
        crop = is_numpy_namespace(self.xp) and getattr(solver, "crops_blocks", False)
        if self._prepared_for != key:
            if crop:
                self._prepared = [
                    (idx, solver.prepare_block(self.X[idx][:, cols], self.ivar[idx][:, cols])._replace(cols=cols))
                    for idx, cols in self._coverage_blocks()]
            else:
                self._prepared = [(rows, solver.prepare_block(Xb, ib)) for rows, Xb, ib in self.blocks()]
            self._prepared_for = key
        parts, total = [], None
        for rows, block in self._prepared:
            part, stats = fn(rows, block, C[rows, ...])
            parts.append((rows, part))
            total = sum_stats(total, stats)
        if crop and parts[0][1] is not None:
            # back to the caller's order of spectra: one part covering all rows
            first = parts[0][1]
            full = np.empty((self.n_spectra, *first.shape[1:]), dtype=first.dtype)
            for idx, part in parts:
                full[idx] = part
            parts = [(slice(0, self.n_spectra), full)]
        return parts, total


class Streamed(Engine):
    """Spectra read block by block from an array-like that slices into numpy arrays.

    Nothing of size (n_spectra, n_pixels) is ever held: each pass reads,
    validates and prepares one block of ``block_rows`` spectra at a time.
    """

    in_memory = False

    def __init__(self, X, ivar, *, dtype, xp=np, block_rows=None, device=None):
        n, d = X.shape
        if ivar is not None and tuple(ivar.shape) != (n, d):
            raise ValueError(f"ivar must have the shape of X {tuple(X.shape)}; got {tuple(ivar.shape)}")
        if block_rows is None:
            block_rows = max(1, _STREAM_ELEMENTS // max(1, d))
        super().__init__(n, d, dtype, xp, block_rows, device)
        self.X, self.ivar = X, ivar

    def _read(self, rows):
        Xb = np.asarray(self.X[rows])
        ib = None if self.ivar is None else np.asarray(self.ivar[rows])
        try:
            return V.check_spectra(Xb, ib, dtype=self.dtype)
        except ValueError as exc:
            raise ValueError(f"spectra {rows.start}..{rows.stop - 1}: {exc}") from None


def is_lazy(a) -> bool:
    """True for array-likes that should be streamed rather than loaded.

    ``np.memmap``, h5py datasets, zarr arrays and other objects with a
    ``shape`` and row slicing that are not in-memory arrays.
    """
    if a is None:
        return False
    if isinstance(a, np.ndarray):
        # np.memmap, or a view of a memory map (astropy's FITS data with memmap=True)
        base = a
        while base is not None:
            if isinstance(base, (np.memmap, mmap.mmap)):
                return True
            base = getattr(base, "base", None)
        return False
    mod = type(a).__module__.split(".")[0]
    return mod in ("h5py", "zarr") or (
        hasattr(a, "shape") and hasattr(a, "__getitem__") and not hasattr(a, "__array_namespace__")
        and mod not in ("numpy", "builtins", "cupy", "torch", "array_api_strict"))


def _is_dask(a) -> bool:
    return type(a).__module__.split(".")[0] == "dask"


def make_engine(X, ivar=None, *, block_size=None, dtype, xp=np, device=None):
    """Choose the engine for the given data.

    Dask arrays go to :class:`specnmf._dask.DaskEngine`; memmaps, h5py and
    zarr datasets to :class:`Streamed`; everything else is validated into
    memory (:class:`InMemory`).  ``block_size`` is the number of spectra per
    block (default: chosen from the number of pixels).
    """
    V.reject_sparse(X, "X")
    V.reject_sparse(ivar, "ivar")
    if _is_dask(X) or _is_dask(ivar):
        from ._dask import DaskEngine

        return DaskEngine(X, ivar, dtype=dtype, xp=xp, block_rows=block_size, device=device)
    if is_lazy(X) or is_lazy(ivar):
        if len(getattr(X, "shape", ())) != 2:
            raise ValueError(f"X must be 2-D (n_spectra, n_pixels); got shape {getattr(X, 'shape', None)}")
        if 0 in tuple(X.shape):
            raise ValueError(f"X is empty (shape {tuple(X.shape)})")
        return Streamed(X, ivar, dtype=dtype, xp=xp, block_rows=block_size, device=device)
    Xv, iv = V.check_spectra(X, ivar, dtype=dtype)
    if not is_numpy_namespace(xp):
        Xv = asarray(Xv, xp, dtype=dtype, device=device)
        iv = asarray(iv, xp, dtype=dtype, device=device)
    return InMemory(Xv, iv, xp=xp, block_rows=block_size, device=device)
