"""The engine base class and what every engine shares: the data summary, the pass.

See :mod:`specnmf.engine` for the engines and the contract of a pass.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from ..backends import asarray, is_numpy_namespace
from ..protocols import (
    Array,
    Block,
    BlockFn,
    EngineProtocol,
    PassResult,
    Rows,
    SolverProtocol,
    Stat,
)

__all__ = ["DataSummary", "Engine", "summarize_block", "row_summaries", "summary_from_rows",
           "ROW_FIELDS", "sum_stats", "is_lazy"]


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
    def combine(cls, parts: Iterable[DataSummary]) -> DataSummary:
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


#: the per-spectrum sums a :class:`DataSummary` is made of (see :func:`row_summaries`)
ROW_FIELDS = ("sum_ivar", "weighted_sum_X", "sum_abs", "n_observed", "min_observed")


def row_summaries(X: np.ndarray, ivar: np.ndarray) -> dict[str, np.ndarray]:
    """Per-spectrum parts of the summary of one validated numpy block.

    Sums in the working precision (``sum_ivar``, ``weighted_sum_X``,
    ``sum_abs``), the count of observed pixels and the smallest observed flux
    (inf if none), each of shape (n_rows,).  A :class:`DataSummary` of any
    run of rows follows from them exactly (:meth:`DataSummary.from_rows`), so
    a file can store them once (:mod:`specnmf.engine.packed`).
    """
    observed = ivar > 0
    wx = ivar * X
    return {
        "sum_ivar": np.sum(ivar, axis=1),
        "weighted_sum_X": np.sum(wx, axis=1),
        "sum_abs": np.sum(np.abs(wx, out=wx), axis=1),
        "n_observed": np.count_nonzero(observed, axis=1).astype(np.int64),
        "min_observed": np.min(X, axis=1, where=observed, initial=np.inf),
    }


def summary_from_rows(rows: dict[str, np.ndarray], empty_pixels: np.ndarray) -> DataSummary:
    """The :class:`DataSummary` of a block from its :func:`row_summaries`."""
    n_obs = int(rows["n_observed"].sum())
    # per-row sums in the working precision, then float64 across rows
    return DataSummary(
        sum_ivar=float(rows["sum_ivar"].sum(dtype=np.float64)),
        n_observed=n_obs,
        weighted_sum_X=float(rows["weighted_sum_X"].sum(dtype=np.float64)),
        sum_abs=float(rows["sum_abs"].sum(dtype=np.float64)),
        min_observed=float(rows["min_observed"].min()) if n_obs else 0.0,
        empty_spectra=rows["n_observed"] == 0,
        empty_pixels=empty_pixels,
    )


def summarize_block(X: np.ndarray, ivar: np.ndarray) -> DataSummary:
    """Summary of one validated numpy block (see :class:`DataSummary`)."""
    return summary_from_rows(row_summaries(X, ivar), ~np.any(ivar > 0, axis=0))


def sum_stats(total: list[Stat] | None, part: Sequence[Stat]) -> list[Stat]:
    """Add one block's statistics (a tuple of arrays or floats) to a running total.

    The total is a list owned by the pass and updated in place (no new
    (q, n_pixels) arrays per block); ``part`` is left untouched.
    """
    if total is None:
        # array-API arithmetic, which the Array protocol does not spell out
        return [p if isinstance(p, float) else p + 0 for p in part]  # type: ignore[operator]
    for i, p in enumerate(part):
        total[i] += p  # type: ignore[operator]  # floats, or arrays of one namespace
    return total


class Engine(EngineProtocol):
    """Base class: a sequence of row blocks and a pass over them."""

    in_memory = True

    def __init__(self, n_spectra: int, n_pixels: int, dtype: npt.DTypeLike, xp: ModuleType,
                 block_rows: int, device: object = None) -> None:
        self.n_spectra = int(n_spectra)
        self.n_pixels = int(n_pixels)
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.device = device
        self.block_rows = max(1, int(block_rows))
        self._summary: DataSummary | None = None

    def row_slices(self) -> list[slice]:
        n, b = self.n_spectra, self.block_rows
        return [slice(s, min(n, s + b)) for s in range(0, n, b)]

    # -- to be provided by subclasses ------------------------------------
    def _read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Validated numpy block ``(X_b, ivar_b)`` of the spectra ``rows``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------
    def _to_xp(self, a: np.ndarray) -> Array:
        if is_numpy_namespace(self.xp):
            return a
        return asarray(a, self.xp, dtype=self.dtype, device=self.device)

    def blocks(self) -> Iterator[tuple[slice, Array, Array]]:
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

    def _prepared_blocks(self, solver: SolverProtocol, C: Array) -> Iterator[tuple[Rows, Block]]:
        """``(rows, solver.prepare_block(X_b, ivar_b))`` for every block, one at a time:
        a block is used before the next is asked for (an engine may reuse its buffers)."""
        for rows, Xb, ib in self.blocks():
            yield rows, solver.prepare_block(Xb, ib)

    def run_pass(self, solver: SolverProtocol, fn: BlockFn, C: Array) -> PassResult:
        """One pass: ``fn(rows, block, C[rows])`` for every prepared block (:meth:`_prepared_blocks`)."""
        parts: list[tuple[Rows, Array | None]] = []
        total = None
        for rows, block in self._prepared_blocks(solver, C):
            part, stats = fn(rows, block, C[rows, ...])
            parts.append((rows, part))
            total = sum_stats(total, stats)
        return parts, _nonempty(total)

    def plan(self, solver: SolverProtocol | None, n_components: int, *,
             coupled: bool = False) -> None:
        """Choose ``block_rows`` for the passes of ``solver`` (see ``EngineProtocol.plan``).

        Engines that read the data block by block keep the blocks they were
        built with (their size bounds the memory held at once), except that a
        coupled penalty needs all spectra in one block.
        """
        if coupled:
            self.block_rows = self.n_spectra

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """All spectra as validated numpy ``(X, ivar)``.

        Raises
        ------
        ValueError
            If the engine does not hold the spectra in memory.
        """
        if not self.in_memory:
            raise ValueError(f"{type(self).__name__} reads the spectra block by block and does "
                             "not hold them in memory; iterate over blocks() instead")
        return self._read(slice(0, self.n_spectra))


def _nonempty(total: list[Stat] | None) -> list[Stat]:
    """The statistics of a pass, which always has a block (engines hold >= 1 spectrum)."""
    if total is None:
        raise ValueError("a pass over no blocks has no statistics")
    return total


def is_lazy(a: object) -> bool:
    """True for array-likes that should be streamed rather than loaded.

    ``np.memmap``, h5py datasets, zarr arrays and other objects with a
    ``shape`` and row slicing that are not in-memory arrays.
    """
    if a is None:
        return False
    if isinstance(a, np.ndarray):
        # np.memmap, or a view of a memory map (astropy's FITS data with memmap=True)
        base: object = a
        while base is not None:
            if isinstance(base, (np.memmap, mmap.mmap)):
                return True
            base = getattr(base, "base", None)
        return False
    mod = type(a).__module__.split(".")[0]
    return mod in ("h5py", "zarr") or (
        hasattr(a, "shape") and hasattr(a, "__getitem__") and not hasattr(a, "__array_namespace__")
        and mod not in ("numpy", "builtins", "cupy", "torch", "array_api_strict"))


