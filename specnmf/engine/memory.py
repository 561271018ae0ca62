"""The in-memory engine: validated arrays, cached prepared blocks, coverage-sorted crops."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import numpy as np

from ..backends import is_numpy_namespace, to_numpy
from ..protocols import Array, Block, BlockFn, PassResult, Rows, SolverProtocol
from .base import DataSummary, Engine, _nonempty, sum_stats, summarize_block

__all__ = ["InMemory"]

# Elements per block for in-memory passes: small enough that a block's
# temporaries stay in cache, large enough that the matrix products are efficient.
_CACHE_ELEMENTS = 1 << 18
# Elements per block of the small blocks that coverage cropping may choose.
_CROPPED_ELEMENTS = 3 << 17


class InMemory(Engine):
    """Validated arrays held in memory; prepared blocks are cached between passes.

    Parameters
    ----------
    X, ivar : arrays of shape (n_spectra, n_pixels)
        Already validated (see :func:`specnmf._validation.check_spectra`),
        numpy or any array-API namespace ``xp``.
    block_rows : int, optional
        Spectra per block, fixed; ``None`` lets :meth:`plan` choose them.
    """

    def __init__(self, X: Array, ivar: Array, *, xp: ModuleType = np, block_rows: int | None = None,
                 device: object = None) -> None:
        n, d = X.shape
        # a block size the user chose is kept; otherwise plan() may choose another
        self._fixed_blocks = block_rows is not None
        if block_rows is None:
            # accelerators want few large products; CPUs want cache-sized blocks
            block_rows = max(16, _CACHE_ELEMENTS // max(1, d)) if is_numpy_namespace(xp) else n
        super().__init__(n, d, X.dtype if isinstance(X.dtype, np.dtype) else np.float64, xp,
                         block_rows, device)
        self.X, self.ivar = X, ivar
        self._prepared: list[tuple[Rows, Block]] = []
        self._prepared_for: object = None
        self._coverage_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        return to_numpy(self.X[rows, ...]), to_numpy(self.ivar[rows, ...])

    def blocks(self) -> Iterator[tuple[slice, Array, Array]]:
        for rows in self.row_slices():
            yield rows, self.X[rows, ...], self.ivar[rows, ...]

    def scan(self) -> DataSummary:
        if self._summary is None and is_numpy_namespace(self.xp):
            self._summary = summarize_block(to_numpy(self.X), to_numpy(self.ivar))
        return super().scan()

    def _coverage(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First and last observed pixel of every spectrum, and the order sorting the first."""
        if self._coverage_cache is None:
            from .._kernels import spans

            lo, hi = spans(self.ivar)
            first = lo.astype(np.int64)
            last = np.where(hi > 0, hi.astype(np.int64) - 1, 0)
            self._coverage_cache = (first, last, np.argsort(first, kind="stable"))
        return self._coverage_cache

    def cropped_fraction(self, block_rows: int) -> float:
        """Share of the (n_spectra, n_pixels) entries inside the observed spans of sorted blocks."""
        first, last, order = self._coverage()
        starts = np.arange(0, self.n_spectra, block_rows)
        lo = np.minimum.reduceat(first[order], starts)
        hi = np.maximum.reduceat(last[order], starts) + 1
        rows = np.diff(np.append(starts, self.n_spectra))
        return float(np.sum(rows * np.maximum(hi - lo, 1))) / (self.n_spectra * self.n_pixels)

    def choose_block_rows(self, large: int, small: int, *, gain: float = 0.6) -> int:
        """Small cropped blocks when they skip enough unobserved pixels, else large ones.

        Small blocks cost ~1.5x in product efficiency (measured), so they are
        used only when cropping leaves less than ``gain`` of the work.
        """
        if is_numpy_namespace(self.xp) and small < large and self.cropped_fraction(small) < gain:
            return small
        return large

    def plan(self, solver: SolverProtocol | None, n_components: int, *,
             coupled: bool = False) -> None:
        """Choose ``block_rows`` for the passes of ``solver`` (see ``EngineProtocol.plan``).

        All spectra form one block for a coupled penalty (neighbours must be
        read as they are updated) and for ``solver=None`` (the caller blocks
        its own work; one call avoids its fixed costs per block).  Otherwise,
        unless the user fixed the block size, numpy passes take the solver's
        preferred block size, or small blocks sorted by coverage when the
        solver allows cropping and that skips enough unobserved pixels.  A
        plan that already made one block keeps it.
        """
        n = self.n_spectra
        if coupled or solver is None:
            self.block_rows = n
        elif not self._fixed_blocks and is_numpy_namespace(self.xp) and self.block_rows < n:
            large = solver.preferred_block_rows(self.n_pixels, n_components)
            if solver.crops_blocks:
                large = self.choose_block_rows(large, max(16, _CROPPED_ELEMENTS // self.n_pixels))
            self.block_rows = min(n, large)

    def _coverage_blocks(self) -> list[tuple[np.ndarray, slice]]:
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

    def run_pass(self, solver: SolverProtocol, fn: BlockFn, C: Array) -> PassResult:
        crop = is_numpy_namespace(self.xp) and solver.crops_blocks
        # cropped blocks hold other rows and pixels: never reused for an uncropped pass
        key = (solver.prepare_key(), self.block_rows, crop)
        if self._prepared_for != key:
            if crop:
                self._prepared = [
                    (idx, solver.prepare_block(self.X[idx][:, cols], self.ivar[idx][:, cols])._replace(cols=cols))
                    for idx, cols in self._coverage_blocks()]
            else:
                self._prepared = [(rows, solver.prepare_block(Xb, ib)) for rows, Xb, ib in self.blocks()]
            self._prepared_for = key
        parts: list[tuple[Rows, Array | None]] = []
        total = None
        for rows, block in self._prepared:
            part, stats = fn(rows, block, C[rows, ...])
            parts.append((rows, part))
            total = sum_stats(total, stats)
        first = parts[0][1]
        if crop and first is not None:
            # back to the caller's order of spectra: one part covering all rows
            full = np.empty((self.n_spectra, *first.shape[1:]), dtype=to_numpy(first).dtype)
            for idx, part in parts:
                full[idx] = part
            parts = [(slice(0, self.n_spectra), full)]
        return parts, _nonempty(total)
