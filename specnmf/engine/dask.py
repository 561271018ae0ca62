"""Fits of dask arrays: one task per chunk of spectra, a tree reduction of statistics.

A pass of :class:`DaskEngine` is one task graph, computed with a single
``dask.compute`` on whatever scheduler is active (the threaded default, the
``"processes"`` scheduler, or a ``dask.distributed.Client``):

* one task per chunk of rows: read the chunk, validate it (the rules of
  :func:`specnmf._validation.check_spectra`), move it to the working namespace,
  ``block = solver.prepare_block(X_b, ivar_b)`` and ``part, stats = fn(rows,
  block, C_b)``; the solver, ``fn`` and the chunk's rows of the coefficients
  travel with the task (they are small; the data never leave the workers);
* a tree of additions of the ``stats`` tuples, ``SPLIT_EVERY`` at a time (the
  ``split_every`` of ``dask.array.reduction``), so no single task receives
  every chunk's statistics;
* the new coefficient rows (``part``) come back to the client in block order.

Only the small template step then runs on the client, as in dask-ml's Lloyd
iteration for k-means.  The solver and ``fn`` must be serialisable by
cloudpickle (module-level functions, ``functools.partial`` of them, plain
objects).

Data must be chunked along spectra only; a chunking along pixels is merged
(rechunked to one chunk per row block), which a log message notes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType

import numpy as np
import numpy.typing as npt

from .. import _validation as V
from ..backends import asarray, is_numpy_namespace
from ..protocols import Array, BlockFn, PassResult, Rows, SolverProtocol, Stat
from .base import DataSummary, Engine, _nonempty, sum_stats, summarize_block

logger = logging.getLogger("specnmf")

__all__ = ["DaskEngine", "SPLIT_EVERY"]

#: fan-in of the tree that adds the blocks' statistics
SPLIT_EVERY = 8


def _validate_chunk(X_b: object, ivar_b: object, dtype: npt.DTypeLike,
                    rows: slice) -> tuple[np.ndarray, np.ndarray]:
    try:
        return V.check_spectra(np.asarray(X_b), None if ivar_b is None else np.asarray(ivar_b),
                               dtype=dtype)
    except ValueError as exc:
        raise ValueError(f"spectra {rows.start}..{rows.stop - 1}: {exc}") from None


def _summarize_chunk(X_b: object, ivar_b: object, dtype: npt.DTypeLike,
                     rows: slice) -> DataSummary:
    return summarize_block(*_validate_chunk(X_b, ivar_b, dtype, rows))


def _run_chunk(solver: SolverProtocol, fn: BlockFn, rows: slice, X_b: object, ivar_b: object,
               C_b: Array, dtype: npt.DTypeLike, xp: ModuleType,
               device: object) -> tuple[Array | None, tuple[Stat, ...]]:
    """Worker side of one block: validate, convert, prepare, apply ``fn``."""
    Xv, iv = _validate_chunk(X_b, ivar_b, dtype, rows)
    Xw: Array = Xv
    iw: Array = iv
    if not is_numpy_namespace(xp):
        Xw = asarray(Xv, xp, dtype=dtype, device=device)
        iw = asarray(iv, xp, dtype=dtype, device=device)
    part, stats = fn(rows, solver.prepare_block(Xw, iw), C_b)
    return part, tuple(stats)


def _add_stats(*parts: tuple[Stat, ...]) -> list[Stat]:
    total = None
    for part in parts:
        total = sum_stats(total, part)
    return _nonempty(total)


def _combine_summaries(*parts: DataSummary) -> DataSummary:
    return DataSummary.combine(parts)


def _tree(items: Iterable[object], combine: Callable[..., object], split_every: int) -> object:
    """Reduce delayed ``items`` with ``combine`` in a tree of fan-in ``split_every``.

    Consecutive items are combined, so an order-sensitive ``combine`` (such as
    concatenating per-spectrum masks) sees them in block order.
    """
    from dask import delayed

    items = list(items)
    while len(items) > 1:
        items = [delayed(combine)(*items[i:i + split_every])
                 for i in range(0, len(items), split_every)]
    return items[0]


class DaskEngine(Engine):
    """Spectra held as dask arrays chunked by spectra (rows).

    Parameters
    ----------
    X : dask.array.Array or array-like of shape (n_spectra, n_pixels)
        Flux.  Chunks along pixels are merged (one chunk per row block).
    ivar : dask.array.Array or array-like of shape (n_spectra, n_pixels) or None
        Inverse variance, rechunked like ``X``; ``None`` means unit weights.
    dtype : {"float64", "float32"} or numpy dtype
        Working precision.
    xp : namespace, default numpy
        Array namespace the blocks are converted to on the workers.
    block_rows : int, optional
        Spectra per task.  ``None`` keeps the row chunks of ``X``.
    device : optional
        Device of ``xp`` for the blocks.
    split_every : int, default :data:`SPLIT_EVERY`
        Fan-in of the reduction tree.
    """

    in_memory = False

    def __init__(self, X, ivar=None, *, dtype: npt.DTypeLike, xp: ModuleType = np,
                 block_rows: int | None = None, device: object = None,
                 split_every: int = SPLIT_EVERY) -> None:
        import dask.array as da

        if not isinstance(X, da.Array):
            X = da.from_array(X, chunks=ivar.chunks if isinstance(ivar, da.Array) else "auto")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_spectra, n_pixels); got shape {X.shape}")
        if any(math.isnan(c) for c in X.chunks[0]):
            raise ValueError("X has unknown chunk sizes along spectra; call "
                             "X.compute_chunk_sizes() first")
        n, d = X.shape
        if n == 0 or d == 0:
            raise ValueError(f"X is empty (shape {X.shape})")
        if ivar is not None:
            if tuple(getattr(ivar, "shape", ())) != (n, d):
                raise ValueError(f"ivar must have the shape of X {X.shape}; "
                                 f"got {getattr(ivar, 'shape', None)}")
            if not isinstance(ivar, da.Array):
                ivar = da.from_array(ivar, chunks=X.chunks)
        if isinstance(split_every, bool) or int(split_every) < 2:
            raise ValueError(f"split_every must be an integer >= 2; got {split_every!r}")

        if len(X.chunks[1]) > 1:
            logger.info("X is chunked along pixels (%d chunks); merging them so that each "
                        "task holds whole spectra", len(X.chunks[1]))
        if ivar is not None and len(ivar.chunks[1]) > 1:
            logger.info("ivar is chunked along pixels (%d chunks); merging them",
                        len(ivar.chunks[1]))
        self.X, self.ivar = X, ivar
        self.split_every = int(split_every)
        self._rechunk(X.chunks[0] if block_rows is None else int(block_rows))
        self._block_rows = max(self.X.chunks[0])
        super().__init__(n, d, V.check_dtype(dtype), xp, self._block_rows, device)

    def _rechunk(self, rows: int | tuple[int, ...]) -> None:
        """Chunks of ``rows`` spectra (an int or a tuple of sizes), whole spectra each."""
        self.X = self.X.rechunk({0: rows, 1: -1})
        if self.ivar is not None:
            self.ivar = self.ivar.rechunk(self.X.chunks)
        bounds = np.cumsum((0,) + tuple(self.X.chunks[0]))
        self._slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    @property
    def block_rows(self) -> int:
        """Largest number of spectra per task; setting it rechunks the arrays."""
        return self._block_rows

    @block_rows.setter
    def block_rows(self, value: int) -> None:
        value = max(1, int(value))
        if value != self._block_rows:
            self._rechunk(value)
            value = max(self.X.chunks[0])
        self._block_rows = value

    def row_slices(self) -> list[slice]:
        return list(self._slices)

    def _chunks(self) -> Iterator[tuple[slice, object, object]]:
        xs = self.X.to_delayed().ravel()
        ivs = [None] * len(xs) if self.ivar is None else self.ivar.to_delayed().ravel()
        return zip(self._slices, xs, ivs)

    def _read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        import dask

        X_b = self.X[rows]
        ivar_b = None if self.ivar is None else self.ivar[rows]
        X_b, ivar_b = dask.compute(X_b, ivar_b)
        return _validate_chunk(X_b, ivar_b, self.dtype, rows)

    def scan(self) -> DataSummary:
        """Validate every chunk (one task each) and summarise the data (cached)."""
        if self._summary is None:
            import dask
            from dask import delayed

            parts = [delayed(_summarize_chunk)(X_b, ivar_b, self.dtype, rows)
                     for rows, X_b, ivar_b in self._chunks()]
            (self._summary,) = dask.compute(_tree(parts, _combine_summaries, self.split_every))
        return self._summary

    def run_pass(self, solver: SolverProtocol, fn: BlockFn, C: Array) -> PassResult:
        """One pass as one task graph; see the module docstring.

        Returns ``[(rows, part), ...]`` in block order and the sum of all
        blocks' statistics.
        """
        import dask
        from dask import delayed

        parts: list[object] = []
        stats: list[object] = []
        for rows, X_b, ivar_b in self._chunks():
            part, st = delayed(_run_chunk, nout=2, pure=False)(
                solver, fn, rows, X_b, ivar_b, C[rows, ...], self.dtype, self.xp, self.device)
            parts.append(part)
            stats.append(st)
        computed, total = dask.compute(parts, _tree(stats, _add_stats, self.split_every))
        rows_parts: list[tuple[Rows, Array | None]] = list(zip(self._slices, computed))
        return rows_parts, total
