"""The contracts between solvers, engines and penalties, as ``typing.Protocol`` classes.

A fit is three kinds of objects that know nothing of each other's classes
(docs/architecture.md):

* a *solver* (:class:`SolverProtocol`): pure update rules on one block of
  spectra at a time, and the template step on the summed block statistics;
* an *engine* (:class:`EngineProtocol`): where the data live, and the pass
  that hands every block of spectra to a solver;
* *penalties* (:class:`PenaltyProtocol`): terms added to chi^2, seen by the
  solvers only through this interface.

The driver :func:`specnmf.solvers._loop.run` and the estimator use only what
is written here; a type checker (``python -m mypy -p specnmf``, run by
``specnmf/tests/test_typecheck.py``) holds the classes of the package to it.
The solver and penalty base classes subclass their protocol explicitly, so
they inherit its default hooks and are checked where they are defined.

Arrays are those of any supported namespace ``xp`` (numpy, CuPy, torch,
``array_api_strict``): :class:`Array` names only what the contracts
themselves use of them; their arithmetic is the array API standard's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from types import EllipsisType, ModuleType
from typing import TYPE_CHECKING, NamedTuple, Protocol, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    # for annotations only: the engine package itself builds on these protocols
    from .engine.base import DataSummary

__all__ = [
    "Array",
    "Rows",
    "Stat",
    "Block",
    "BlockFn",
    "SolverProtocol",
    "SolverFactory",
    "EngineProtocol",
    "PenaltyProtocol",
]

#: The spectra of one block: a slice of rows, or (in-memory blocks sorted by
#: coverage) an integer index array.
Rows = Union[slice, npt.NDArray[np.intp]]

#: An index into an array: rows, or a tuple of rows, slices and ``...``.
Index = Union[Rows, tuple[Union[Rows, EllipsisType], ...]]


class Array(Protocol):
    """An array of any supported namespace: its shape, dtype and indexing."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> object: ...

    def __getitem__(self, key: Index, /) -> Array: ...

    def __float__(self) -> float: ...


#: One summand of a pass's statistics: a float (chi^2) or an array whose size
#: does not depend on the number of spectra.
Stat = Union[float, Array]


class Block(NamedTuple):
    """One block of spectra as a solver prepared it (``SolverProtocol.prepare_block``).

    Attributes
    ----------
    X, ivar : Array
        Flux (possibly shifted or clipped by the solver) and inverse variance.
    aux : tuple of Array
        Solver-specific constants of the block (e.g. ``ivar * X``).
    cols : slice
        The pixels the block's arrays cover: an engine may crop a block to the
        span of pixels its spectra observe (outside it every ivar is 0).
    """

    X: Array
    ivar: Array
    aux: tuple[Array, ...]
    cols: slice = slice(None)


#: What an engine applies to every block: ``fn(rows, block, C_rows) -> (part, stats)``,
#: ``part`` the block's new coefficient rows (or None), ``stats`` its summands.
BlockFn = Callable[[Rows, Block, Array], tuple[Union[Array, None], Sequence[Stat]]]

# What a pass returns (EngineProtocol.run_pass): ``[(rows, part), ...]`` in block order,
# and the elementwise sum of every block's ``stats``.  Not in __all__: autodoc cannot
# document a subscripted tuple.
PassResult = tuple[list[tuple[Rows, Union[Array, None]]], list[Stat]]


class PenaltyProtocol(Protocol):
    """A term added to chi^2 (see :mod:`specnmf.penalties` for the exact contract).

    ``C_rows`` are the coefficients of one block of spectra, ``rows`` says
    which, ``C_all`` holds every spectrum's coefficients before the update
    (read by penalties that couple spectra).
    """

    #: key of the penalty in ``history_``
    name: str
    acts_on_templates: bool
    acts_on_coefficients: bool
    #: the coefficient methods read neighbouring spectra from ``C_all``, so a
    #: fit keeps all spectra in one block and the loop passes ``C_all``
    needs_all_coefficients: bool

    def value(self, C: Array, T: Array, xp: ModuleType) -> float: ...

    def templates_grad(self, C: Array, T: Array, xp: ModuleType) -> Array: ...

    def coefficients_grad(self, C_rows: Array, T: Array, xp: ModuleType, *, rows: Rows = ...,
                          C_all: Array | None = ...) -> Array: ...

    def templates_grad_split(self, C: Array, T: Array, xp: ModuleType) -> tuple[Array, Array]: ...

    def coefficients_grad_split(self, C_rows: Array, T: Array, xp: ModuleType, *,
                                rows: Rows = ..., C_all: Array | None = ...
                                ) -> tuple[Array, Array]: ...

    def templates_quadratic(self, C: Array, T: Array, xp: ModuleType) -> tuple[Array, Array]: ...

    def coefficients_quadratic(self, C_rows: Array, T: Array, xp: ModuleType, *,
                               rows: Rows = ..., C_all: Array | None = ...
                               ) -> tuple[Array, Array]: ...

    def templates_curvature(self, C: Array, T: Array, xp: ModuleType) -> Array: ...

    def coefficients_curvature(self, C_rows: Array, T: Array, xp: ModuleType, *,
                               rows: Rows = ..., C_all: Array | None = ...) -> Array: ...

    def templates_colors(self, n_pixels: int) -> list[npt.NDArray[np.intp]]: ...

    def coefficients_colors(self, n_spectra: int) -> list[npt.NDArray[np.intp]]: ...

    def check(self, solver: str, n_spectra: int, n_pixels: int, *,
              in_memory: bool = ...) -> None: ...


class SolverProtocol(Protocol):
    """Pure update rules, one block of spectra at a time (built by ``solvers.SOLVERS``).

    One iteration is one pass of :meth:`block_step` over the blocks, then one
    :meth:`templates_step` on the summed statistics.
    """

    #: the array namespace of the update rules
    xp: ModuleType
    #: the updates only rescale entries, so exact zeros in a start stay zero
    multiplicative: bool = False
    #: the data are fitted as ``X + shift`` by ``C T + shift`` (Shift-NMF)
    shift: float = 0.0
    #: an in-memory engine may sort the spectra by coverage and crop blocks
    #: to the pixels they observe (no penalty reads neighbouring spectra)
    crops_blocks: bool
    #: ``prepare_block`` also takes ``spans=(lo, hi)``: each spectrum's observed
    #: span when the engine already knows it (a packed file), so as not to find it again
    takes_spans: bool = False

    def reads_packed(self, n_components: int) -> bool:
        """Whether ``prepare_block`` (for ``n_components``) also takes 1-D ``X`` and
        ``ivar`` holding the spans one after another, with ``spans=(lo, hi, starts)``:
        spectrum ``i``'s pixel ``j`` at ``starts[i] + j``.  A packed file's blocks are
        then read where they lie, without being made dense (default: no)."""
        return False

    def prepare_key(self) -> Hashable:
        """Equal keys: blocks prepared by one solver serve the other (engines cache them)."""
        ...

    def prepare_block(self, X: Array, ivar: Array) -> Block:
        """Per-block constants of validated ``(X_b, ivar_b)``."""
        ...

    def preferred_block_rows(self, n_pixels: int, n_components: int) -> int:
        """Spectra per in-memory block for the fastest pass."""
        ...

    def block_step(self, block: Block, C: Array, T: Array, *, rows: Rows = ...,
                   C_all: Array | None = ...) -> tuple[Array, tuple[Stat, ...]]:
        """New coefficient rows of one block and ``(chi2 at (C, T), *template_stats)``."""
        ...

    def block_chi2(self, block: Block, C: Array, T: Array) -> float:
        """chi^2 of one block at ``(C, T)`` (evaluation only)."""
        ...

    def block_gradient(self, block: Block, C: Array, T: Array
                       ) -> tuple[Array, Array, Array, Array] | None:
        """chi^2's gradient and Hessian diagonal at ``(C, T)`` on one block, for the
        fit's stationarity check: ``(gC, hC)`` of shape (n_b, q) and ``(gT, hT)`` of
        shape (q, block's pixels), float64; or None (default), and the check computes
        them from the block's residual."""
        return None

    def templates_step(self, T: Array, stats: Sequence[Stat], C: Array | None = ...) -> Array:
        """New templates from the summed template statistics."""
        ...

    def state(self) -> dict[str, object]:
        """Iteration state beyond ``(C, T)``, for exact checkpoint and resume."""
        ...

    def load_state(self, state: Mapping[str, object]) -> None:
        """Continue from a :meth:`state`."""
        ...

    def row_inputs(self, C: Array) -> Array:
        """What a pass hands each block instead of its coefficient rows.

        Per-spectrum state travels with the rows (APG's previous iterate), so
        distributed engines stay pure.  Default: the coefficients themselves.
        """
        return C

    def row_outputs(self, P_new: Array, C_old: Array) -> Array:
        """The new coefficients from the rows a pass returned. Default: those rows."""
        return P_new


class SolverFactory(Protocol):
    """``solvers.SOLVERS[name]``: builds the solver of one fit."""

    def __call__(self, xp: ModuleType, *, shift: float, penalties: Sequence[PenaltyProtocol],
                 n_components: int | None) -> SolverProtocol: ...


class EngineProtocol(Protocol):
    """Where the data live, and the pass over blocks of whole spectra (rows)."""

    n_spectra: int
    n_pixels: int
    #: working precision of the blocks
    dtype: np.dtype[np.generic]
    #: all spectra can be read at once (:meth:`read_all`)
    in_memory: bool
    #: spectra per block (a setter may re-chunk the data)
    block_rows: int

    def row_slices(self) -> list[slice]:
        """The blocks of a pass, in order."""
        ...

    def blocks(self) -> Iterator[tuple[slice, Array, Array]]:
        """Validated ``(rows, X_b, ivar_b)`` of every block, in the working namespace."""
        ...

    def scan(self) -> DataSummary:
        """Validate every block once and summarise the data (cached)."""
        ...

    def run_pass(self, solver: SolverProtocol, fn: BlockFn, C: Array) -> PassResult:
        """``fn(rows, solver.prepare_block(X_b, ivar_b), C[rows])`` for every block.

        Returns ``[(rows, part), ...]`` in block order and the elementwise sum
        of every block's ``stats``.
        """
        ...

    def plan(self, solver: SolverProtocol | None, n_components: int, *,
             coupled: bool = ...) -> None:
        """Choose ``block_rows`` for the passes of ``solver`` with ``n_components``.

        ``solver=None``: the caller solves all spectra of a block at once and
        blocks its own work (``transform``); ``coupled``: a penalty reads
        neighbouring spectra, so all spectra form one block.
        """
        ...

    def read_all(self) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
        """All spectra as validated numpy ``(X, ivar)``; ValueError if not in memory."""
        ...
