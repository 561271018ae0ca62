"""The engine of span-packed files: each pass reads only the observed spans.

A file written by :func:`specnmf.io.pack_spectra` (``specnmf pack``) was
validated when it was packed and records its data summary, so this engine,
unlike :class:`~specnmf.engine.Streamed`, neither validates a block on every
pass nor needs a pass for :meth:`scan`.  A block of consecutive spectra is
one contiguous range of the packed arrays.  Solvers whose compiled kernel
reads spans where they lie (``SolverProtocol.reads_packed``: the
multiplicative ones) get that range as it is: in the working precision of
the file, as views of its memory map (nothing copied: the kernel reads the
page cache, and the pages are unmapped once the block is used), else copied
once into a reused 1-D buffer; for the others it is scattered into a dense (block_rows, n_pixels)
buffer that is reused from block to block, clearing only what the previous
block left outside the new spans, so they read it as any other block.  While
a block is computed, the operating system reads the next one
(``PackedSpectra.will_need``); a thread doing that copy measured slower on
two cores (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..backends import is_numpy_namespace
from ..protocols import Array, Block, Rows, SolverProtocol
from .base import DataSummary, Engine
from .streamed import _STREAM_ELEMENTS

__all__ = ["Packed"]


class Packed(Engine):
    """Spectra streamed from a span-packed file (:class:`specnmf.io.PackedSpectra`).

    Parameters
    ----------
    packed : PackedSpectra
        The open file (its ``ivar`` is inside it).
    dtype : {"float32", "float64"}
        Working precision; the file's own avoids a conversion on every read.
    block_rows : int, optional
        Spectra per block (default: as :class:`~specnmf.engine.Streamed`).
    """

    in_memory = False

    def __init__(self, packed: Any, *, dtype: npt.DTypeLike, xp: ModuleType = np,
                 block_rows: int | None = None, device: object = None) -> None:
        n, d = packed.shape
        if block_rows is None:
            block_rows = max(1, _STREAM_ELEMENTS // max(1, d))
        super().__init__(n, d, dtype, xp, block_rows, device)
        self.packed = packed
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None
        self._filled: tuple[np.ndarray, np.ndarray] | None = None
        self._flat: tuple[np.ndarray, np.ndarray] | None = None
        self._flat_rows: tuple[int, int] | None = None

    def _read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Fresh dense ``(X_b, ivar_b)``: validated when the file was packed, not again."""
        return self.packed.read_block(rows, self.dtype)

    def scan(self) -> DataSummary:
        """The summary recorded at pack time, combined over this engine's blocks.

        Exactly what a validating pass with these blocks computes, when the
        working precision is the file's; in another precision the sums
        differ in rounding, so a pass computes them (without validating).
        """
        if self._summary is None and self.dtype == self.packed.dtype:
            self._summary = self.packed.summary(self.row_slices())
        return super().scan()

    def _reused_block(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """The block ``rows`` in the pass's buffers, which the next block overwrites."""
        if self._buffers is None or self._buffers[0].shape[0] < self.block_rows:
            shape = (self.block_rows, self.n_pixels)
            self._buffers = (np.zeros(shape, self.dtype), np.zeros(shape, self.dtype))
            self._filled = (np.zeros(self.block_rows, np.int64), np.zeros(self.block_rows, np.int64))
        assert self._filled is not None
        X, iv = self.packed.read_block(rows, self.dtype, out=self._buffers, filled=self._filled)
        m = X.shape[0]
        lo, hi = self.packed.spans(rows)
        # rows past this block keep what they held: the next read clears it
        self._filled[0][:m], self._filled[1][:m] = lo, hi
        return X, iv

    def _packed_block(self, rows: slice) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], bool]:
        """The block ``rows`` as its packed spans: ``(X, ivar, (lo, hi, starts), mapped)``,
        spectrum ``i``'s pixel ``j`` at ``starts[i] + j``.

        The spans come with the ``n_pixels`` values before them, so that every
        ``starts[i] = n_pixels + (offset of span i) - lo[i]`` is >= 0: where
        they lie in the file's memory map when the working precision is the
        file's (``mapped``: nothing copied; the caller releases the block's
        pages once it is used), else copied into the pass's 1-D buffers.
        """
        d = self.n_pixels
        off = self.packed.offsets[rows.start:rows.stop + 1]
        size = d + int(off[-1] - off[0])
        lo, hi = self.packed.spans(rows)
        starts = d + (off[:-1] - off[0]) - lo
        views = self.packed.mapped_spans(rows, d) if self.dtype == self.packed.dtype else None
        if views is not None:
            return views[0], views[1], (lo, hi, starts), True
        if self._flat is None or self._flat[0].size < size:
            self._flat = (np.zeros(size, self.dtype), np.zeros(size, self.dtype))
            self._flat_rows = None
        X, iv = self._flat
        # the file does not change: a block the buffers still hold (in the file's
        # precision, the first, on every pass) is not read again
        if self._flat_rows != (rows.start, rows.stop):
            self.packed.read_packed_into(rows, X[d:], iv[d:])
            self._flat_rows = (rows.start, rows.stop)
        X, iv = X[:size], iv[:size]
        X.flags.writeable = iv.flags.writeable = False    # as the memory map's
        return X, iv, (lo, hi, starts), False

    def _prepared_blocks(self, solver: SolverProtocol, C: Array) -> Iterator[tuple[Rows, Block]]:
        """The pass's blocks (see :meth:`Engine._prepared_blocks`): as packed spans for
        solvers that read them where they lie (views of the file's memory map, or
        the pass's 1-D buffers), else dense with the file's spans for solvers that
        take them, else dense (in the pass's reused buffers)."""
        spans = solver.takes_spans and is_numpy_namespace(self.xp)
        packed = spans and solver.reads_packed(C.shape[1])
        slices = self.row_slices()
        for k, rows in enumerate(slices):
            mapped = False
            if packed:
                Xp, ip, known, mapped = self._packed_block(rows)
                block = solver.prepare_block(Xp, ip, spans=known)  # type: ignore[call-arg]
            elif spans:
                # the fused kernel's spans, known from the file: no pass over ivar to find them
                Xb, ib = self._reused_block(rows)
                block = solver.prepare_block(Xb, ib, spans=self.packed.spans(rows))  # type: ignore[call-arg]
            else:
                Xb, ib = self._reused_block(rows)
                block = solver.prepare_block(self._to_xp(Xb), self._to_xp(ib))
            if k + 1 < len(slices):
                self.packed.will_need(slices[k + 1])
            yield rows, block
            if mapped:  # used (the pass uses a block before it asks for the next)
                self.packed.release(rows)
