"""The streaming engine: spectra read, validated and prepared one block at a time."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import numpy.typing as npt

from .. import _validation as V
from ..protocols import Array
from .base import Engine

__all__ = ["Streamed"]

# Elements per block when streaming from disk (about 64 MB of float64 per array).
_STREAM_ELEMENTS = 1 << 23


class Streamed(Engine):
    """Spectra read block by block from an array-like that slices into numpy arrays.

    Nothing of size (n_spectra, n_pixels) is ever held: each pass reads,
    validates and prepares one block of ``block_rows`` spectra at a time.
    """

    in_memory = False

    def __init__(self, X: Array, ivar: Array | None, *, dtype: npt.DTypeLike,
                 xp: ModuleType = np, block_rows: int | None = None,
                 device: object = None) -> None:
        n, d = X.shape
        if ivar is not None and tuple(ivar.shape) != (n, d):
            raise ValueError(f"ivar must have the shape of X {tuple(X.shape)}; got {tuple(ivar.shape)}")
        if block_rows is None:
            block_rows = max(1, _STREAM_ELEMENTS // max(1, d))
        super().__init__(n, d, dtype, xp, block_rows, device)
        self.X, self.ivar = X, ivar

    def _read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        Xb = np.asarray(self.X[rows])
        ib = None if self.ivar is None else np.asarray(self.ivar[rows])
        try:
            return V.check_spectra(Xb, ib, dtype=self.dtype)
        except ValueError as exc:
            raise ValueError(f"spectra {rows.start}..{rows.stop - 1}: {exc}") from None
