"""Which engine a given input gets."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import numpy.typing as npt

from .. import _validation as V
from ..backends import asarray, is_numpy_namespace
from .base import Engine, is_lazy
from .dask import DaskEngine
from .memory import InMemory
from .packed import Packed
from .streamed import Streamed

__all__ = ["make_engine"]


def _is_dask(a: object) -> bool:
    return type(a).__module__.split(".")[0] == "dask"


def _is_packed(a: object) -> bool:
    # by module name: specnmf._packed (h5py) is imported only by whoever opened such a file
    return type(a).__module__ == "specnmf._packed"


def make_engine(X, ivar=None, *, block_size: int | None = None, dtype: npt.DTypeLike,
                xp: ModuleType = np, device: object = None) -> Engine:
    """Choose the engine for the given data.

    Dask arrays go to :class:`~specnmf.engine.DaskEngine`; a span-packed file
    (:func:`specnmf.io.open_packed`, ``ivar=None``: it holds its own) to
    :class:`~specnmf.engine.Packed`; memmaps, h5py and zarr datasets to
    :class:`~specnmf.engine.Streamed`; everything else is
    validated into memory (:class:`~specnmf.engine.InMemory`).  ``block_size``
    is the number of spectra per block (default: chosen from the number of
    pixels, and by :meth:`~specnmf.engine.InMemory.plan` for in-memory fits).
    """
    V.reject_sparse(X, "X")
    V.reject_sparse(ivar, "ivar")
    if _is_packed(X):
        if ivar is not None:
            raise ValueError("a packed spectra file holds its own ivar: pass ivar=None")
        return Packed(X, dtype=dtype, xp=xp, block_rows=block_size, device=device)
    if _is_dask(X) or _is_dask(ivar):
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
