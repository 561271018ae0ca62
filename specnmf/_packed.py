"""Span-packed spectra on disk: each spectrum's observed span only, validated once.

Spectra in a common rest frame observe one contiguous window each; the paper's
quasar matrix is 61 % missing that way.  A dense file stores (and a streamed
pass reads) every one of those missing pixels.  The packed layout stores, per
spectrum, only its observed span ``[lo, hi)`` -- from its first to its last
pixel with ``ivar > 0``; the pixels with ``ivar == 0`` inside the span are
kept -- concatenated row after row, so a block of consecutive spectra is one
contiguous range of the file.

Layout (HDF5, written by :func:`pack_spectra`)
----------------------------------------------
Datasets, all contiguous and uncompressed:

``flux``, ``ivar`` : 1-D, the working dtype (float32 or float64)
    The spans, concatenated.  Flux where ``ivar == 0`` is stored as 0: it is
    not data (every term of the objective weights it by ``ivar``), and a NaN
    there would be one more thing to check on every read.
``offsets`` : int64, (n_spectra + 1,)
    Spectrum ``i`` is ``flux[offsets[i]:offsets[i + 1]]``.
``lo`` : int64, (n_spectra,)
    Its first pixel; ``hi = lo + offsets[i + 1] - offsets[i]``.
``summary/<field>`` : (n_spectra,)
    The per-spectrum sums of :func:`specnmf.engine.base.row_summaries`, and
    ``summary/observed_pixels`` (bool, (n_pixels,)), so that a fit's data
    summary (``Engine.scan``) needs no pass over the file, and is exactly what
    a pass would compute for any block size.
other 1-D datasets
    Copied from the source (``wavelength`` and the like).

Root attributes: ``format`` (``"specnmf-packed"``), ``format_version``,
``n_spectra``, ``n_pixels``, ``dtype``, ``validated`` (True: every block
passed :func:`specnmf._validation.check_spectra` when packed), the totals of
the summary, ``specnmf_version``, and ``checksum_<dataset>``: a BLAKE2b
digest of every dataset's bytes.

Why HDF5, contiguous and uncompressed
-------------------------------------
HDF5 is already how large spectra sets travel, is self-describing (h5py,
``h5ls``, any language can read the four arrays) and holds the metadata next
to the data.  Contiguous uncompressed storage puts each array at one byte
offset in the file (``Dataset.id.get_offset()``), so the reader maps it
read-only there (``mmap``): a block of spectra is one contiguous range of
the map, with no HDF5 call, no chunk cache and exactly the observed spans
read.  The multiplicative solvers' compiled kernel reads that range where it
lies (:meth:`PackedSpectra.mapped_spans`: nothing copied); for the others it
is copied straight into the engine's dense buffers (one copy: a ``read``
into a staging buffer costs a second one).  Each range is unmapped again
once used (``madvise(MADV_DONTNEED)``; the page cache keeps it), so a pass
does not count the whole file in the process's resident memory.
Compression would shrink the file further but costs more to decode than a
read from the page cache.

Validation and checksums
------------------------
:func:`pack_spectra` validates every block once, with the rules of
:func:`specnmf._validation.check_spectra`, and records the fact; a fit of the
packed file (:class:`specnmf.engine.Packed`) then reads it without checking
it again on every pass.  Opening a file checks its structure (format,
version, shapes, offsets: O(n_spectra)); whether its data are still the
bytes that were validated is checked only when asked,
``open_packed(path, verify=True)``, :meth:`PackedSpectra.verify` or
``specnmf pack --verify FILE``, which read the whole file once.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _validation as V
from ._readers import _require_h5py
from ._version import __version__
from .engine.base import ROW_FIELDS, DataSummary, row_summaries, summary_from_rows

__all__ = ["FORMAT", "FORMAT_VERSION", "PackedSpectra", "is_packed_file", "open_packed",
           "pack_spectra"]

#: the ``format`` attribute of a packed file
FORMAT = "specnmf-packed"
#: version of the layout; files with a larger number are refused
FORMAT_VERSION = 1
# every dataset a checksum covers, in this order
_CHECKED = ("flux", "ivar", "offsets", "lo") + tuple(f"summary/{f}" for f in ROW_FIELDS) + (
    "summary/observed_pixels",)
# bytes hashed or copied at a time when the whole file is read
_CHUNK_BYTES = 64 << 20
# spectra per block when packing: about 64 MB of float32 per array
_PACK_ELEMENTS = 1 << 24


def _blocks(n: int, rows: int) -> Iterator[slice]:
    for s in range(0, n, rows):
        yield slice(s, min(n, s + rows))


def _observed_spans(ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` int64 of every row: first and one-past-last pixel with ivar > 0; (0, 0) if none."""
    from ._kernels import spans

    lo, hi = spans(ivar)
    return lo.astype(np.int64), hi.astype(np.int64)


def _span_mask(lo: np.ndarray, hi: np.ndarray, d: int) -> np.ndarray:
    j = np.arange(d)
    return (j >= lo[:, None]) & (j < hi[:, None])


def _source_spans(ivar: Any, n: int, d: int, rows: int,
                  dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The spans of every spectrum, from ``ivar`` read block by block (unit weights: whole rows)."""
    if ivar is None:
        return np.zeros(n, np.int64), np.full(n, d, np.int64)
    lo, hi = np.empty(n, np.int64), np.empty(n, np.int64)
    for r in _blocks(n, rows):
        # in the working dtype, as validation casts it (a tiny float64 ivar is a float32 0);
        # NaN > 0 is False: a bad ivar is reported by the validating pass
        lo[r], hi[r] = _observed_spans(np.asarray(ivar[r]).astype(dtype, copy=False))
    return lo, hi


def _check_source(flux: Any, ivar: Any) -> tuple[int, int]:
    shape = tuple(getattr(flux, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"flux must be 2-D (n_spectra, n_pixels); got shape {shape or None}")
    if 0 in shape:
        raise ValueError(f"flux is empty (shape {shape})")
    if ivar is not None and tuple(getattr(ivar, "shape", ())) != shape:
        raise ValueError(f"ivar must have the shape of flux {shape}; got "
                         f"{tuple(getattr(ivar, 'shape', ())) or None}")
    return int(shape[0]), int(shape[1])


def _working_dtype(flux: Any, dtype: npt.DTypeLike | None) -> np.dtype:
    if dtype is not None:
        return V.check_dtype(dtype)
    return np.dtype(np.float32) if np.dtype(getattr(flux, "dtype", np.float64)) == np.float32 \
        else np.dtype(np.float64)


def pack_spectra(flux: Any, ivar: Any, path: str | os.PathLike, *, dtype: npt.DTypeLike | None = None,
                 block_rows: int | None = None, metadata: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write spectra in the span-packed layout (see :mod:`specnmf._packed`), validating them once.

    The source is read block by block (twice: ``ivar`` alone first, to size
    the file's arrays, then both), so it is never held in memory.

    Parameters
    ----------
    flux, ivar : array-likes of shape (n_spectra, n_pixels)
        Anything that slices by rows into numpy arrays: numpy arrays,
        ``np.memmap``, h5py or zarr datasets.  ``ivar=None`` gives unit
        weights (every span is the whole row).  Never modified.
    path : str or path-like
        The HDF5 file to write.
    dtype : {"float32", "float64"}, optional
        Stored (working) precision; default float32 for float32 flux, else
        float64, as :func:`specnmf._validation.check_spectra` chooses.
    block_rows : int, optional
        Spectra read and validated at a time (default: about 16 M pixels).
    metadata : mapping of str to 1-D array, optional
        Stored as datasets of the same names (e.g. ``{"wavelength": w}``).
    overwrite : bool, default=False
        Replace an existing ``path``.

    Returns
    -------
    dict
        ``n_spectra``, ``n_pixels``, ``dtype``, ``packed_values`` (stored
        pixels per array), ``dense_bytes`` (flux + ivar as dense arrays of
        the working dtype) and ``file_bytes``.

    Raises
    ------
    ValueError
        Bad input, naming the spectra of the block: wrong shapes, negative or
        non-finite ivar, non-finite flux where ``ivar > 0``.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    h5py = _require_h5py()
    n, d = _check_source(flux, ivar)
    dt = _working_dtype(flux, dtype)
    rows = max(1, int(block_rows) if block_rows else _PACK_ELEMENTS // d)
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    meta = {str(k): np.asarray(v) for k, v in (metadata or {}).items()}
    for name, value in meta.items():
        if value.ndim != 1 or name in ("flux", "ivar", "offsets", "lo", "summary"):
            raise ValueError(f"metadata {name!r} must be a 1-D array not named like a packed "
                             f"dataset; got shape {value.shape}")

    lo, hi = _source_spans(ivar, n, d, rows, dt)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(hi - lo, out=offsets[1:])
    total = int(offsets[-1])
    hashes = {name: hashlib.blake2b(digest_size=16) for name in _CHECKED}
    observed_pixels = np.zeros(d, bool)
    tmp = f"{path}.partial"
    try:
        with h5py.File(tmp, "w") as f:
            # contiguous: a reader finds each array at one byte offset (see the module doc)
            out = {name: f.create_dataset(name, shape=(total,), dtype=dt)
                   for name in ("flux", "ivar")}
            sums = {name: np.empty(n, np.int64 if name == "n_observed" else dt)
                    for name in ROW_FIELDS}
            for r in _blocks(n, rows):
                Xb = np.asarray(flux[r])
                ib = None if ivar is None else np.asarray(ivar[r])
                try:
                    Xv, iv = V.check_spectra(Xb, ib, dtype=dt)
                except ValueError as exc:
                    raise ValueError(f"spectra {r.start}..{r.stop - 1}: {exc}") from None
                blo, bhi = _observed_spans(iv) if ivar is not None else (lo[r], hi[r])
                if not (np.array_equal(blo, lo[r]) and np.array_equal(bhi, hi[r])):
                    raise ValueError(f"spectra {r.start}..{r.stop - 1}: ivar changed while "
                                     "being packed")
                for name, values in row_summaries(Xv, iv).items():
                    sums[name][r] = values
                observed_pixels |= np.any(iv > 0, axis=0)
                inside = _span_mask(lo[r], hi[r], d)
                seg_i = iv[inside]
                seg_x = np.where(seg_i > 0, Xv[inside], 0).astype(dt, copy=False)
                a, b = int(offsets[r.start]), int(offsets[r.stop])
                out["flux"][a:b] = seg_x
                out["ivar"][a:b] = seg_i
                hashes["flux"].update(seg_x.data)
                hashes["ivar"].update(seg_i.data)
            arrays = {"offsets": offsets, "lo": lo, "summary/observed_pixels": observed_pixels}
            arrays.update({f"summary/{k}": v for k, v in sums.items()})
            for name, value in arrays.items():
                f.create_dataset(name, data=value)
                hashes[name].update(np.ascontiguousarray(value).data)
            for name, value in meta.items():
                f.create_dataset(name, data=value)
            totals = summary_from_rows(sums, ~observed_pixels)
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "n_spectra": n,
                "n_pixels": d, "dtype": dt.name, "validated": True,
                "specnmf_version": __version__, "checksum_algorithm": "blake2b-128",
                "sum_ivar": totals.sum_ivar, "n_observed": totals.n_observed,
                "weighted_sum_X": totals.weighted_sum_X, "sum_abs": totals.sum_abs,
                "min_observed": totals.min_observed,
            })
            for name, h in hashes.items():
                f.attrs[_checksum_key(name)] = h.hexdigest()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"n_spectra": n, "n_pixels": d, "dtype": dt.name, "packed_values": total,
            "dense_bytes": 2 * n * d * dt.itemsize, "file_bytes": os.path.getsize(path)}


def _checksum_key(name: str) -> str:
    return "checksum_" + name.replace("/", "_")


def is_packed_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file in the span-packed layout (reads only its attributes)."""
    try:
        h5py = _require_h5py()
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except (OSError, ImportError):
        return False


def _copy_spans(X: np.ndarray, iv: np.ndarray, seg_x: np.ndarray, seg_i: np.ndarray,
                los: list[int], starts: list[int], ends: list[int],
                filled: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Row ``j`` of ``X``/``iv`` gets ``seg[starts[j]:ends[j]]`` at pixel ``los[j]``.

    ``filled``: the spans the rows held before, of which what lies outside
    the new spans is cleared (None: the rows are zero outside them already).
    """
    if filled is None:
        for j, (lo, a, b) in enumerate(zip(los, starts, ends)):
            X[j, lo:lo + b - a] = seg_x[a:b]
            iv[j, lo:lo + b - a] = seg_i[a:b]
        return
    m = len(los)
    for j, (lo, a, b, plo, phi) in enumerate(zip(los, starts, ends, filled[0][:m].tolist(),
                                                 filled[1][:m].tolist())):
        hi = lo + b - a
        if plo < lo:
            X[j, plo:min(lo, phi)] = 0
            iv[j, plo:min(lo, phi)] = 0
        if phi > hi:
            X[j, max(hi, plo):phi] = 0
            iv[j, max(hi, plo):phi] = 0
        X[j, lo:hi] = seg_x[a:b]
        iv[j, lo:hi] = seg_i[a:b]


class _PackedIvar:
    """``packed.ivar``: the inverse variances, dense row blocks like the flux."""

    def __init__(self, packed: PackedSpectra) -> None:
        self._packed = packed

    @property
    def shape(self) -> tuple[int, int]:
        return self._packed.shape

    @property
    def dtype(self) -> np.dtype:
        return self._packed.dtype

    ndim = 2

    def __len__(self) -> int:
        return self._packed.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._packed._dense(key)[1]


class PackedSpectra:
    """A span-packed spectra file, read as if it were dense (n_spectra, n_pixels) arrays.

    Made by :func:`open_packed`.  ``packed[rows]`` is the flux and
    ``packed.ivar[rows]`` the inverse variance of ``rows`` (an int, a slice or
    an index array), dense, with zeros outside each spectrum's span; so any
    code that slices arrays by rows can read it, and
    ``SpectralNMF().fit(packed)`` streams it through
    :class:`specnmf.engine.Packed` (its ``ivar`` is inside; pass none).

    Attributes
    ----------
    path : str
    shape : tuple (n_spectra, n_pixels)
    dtype : numpy dtype
        The stored (working) precision.
    metadata : dict of str to ndarray
        The 1-D datasets copied from the source (``wavelength``, ...).
    lo, offsets : ndarray of int64
        First pixel of every span; start of every span in the packed arrays.

    Notes
    -----
    Reads go through staging buffers that the next read reuses: one reader
    serves one thread at a time.
    """

    ndim = 2

    def __init__(self, path: str | os.PathLike, *, verify: bool = False) -> None:
        h5py = _require_h5py()
        self.path = os.fspath(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        try:
            self._open()
            if verify:
                self.verify()
        except Exception:
            self.close()
            raise

    def _open(self) -> None:
        f, path = self._file, self.path
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: not a packed spectra file (no format={FORMAT!r} "
                             "attribute); write one with specnmf.io.pack_spectra or 'specnmf pack'")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise ValueError(f"{path}: packed format version {version} is newer than this "
                             f"specnmf reads ({FORMAT_VERSION}); upgrade specnmf")
        if not f.attrs.get("validated", False):
            raise ValueError(f"{path}: the file does not record a validation at pack time")
        n, d = int(f.attrs["n_spectra"]), int(f.attrs["n_pixels"])
        self.shape = (n, d)
        self.dtype = V.check_dtype(str(f.attrs["dtype"]))
        self.offsets = f["offsets"][()]
        self.lo = f["lo"][()]
        self._lengths = np.diff(self.offsets)
        total = self.offsets[-1] if self.offsets.size else -1
        if (self.offsets.shape != (n + 1,) or self.lo.shape != (n,) or self.offsets[0] != 0
                or np.any(self._lengths < 0) or np.any(self.lo < 0)
                or np.any(self.lo + self._lengths > d)
                or any(f[k].shape != (total,) or f[k].dtype != self.dtype
                       for k in ("flux", "ivar"))):
            raise ValueError(f"{path}: inconsistent packed layout (offsets, spans or array "
                             "sizes disagree); the file is damaged: pack the source again")
        self.metadata = {k: v[()] for k, v in f.items()
                         if isinstance(v, _require_h5py().Dataset) and k not in _CHECKED
                         and v.ndim == 1}
        self._raw = open(path, "rb")
        self._maps = {name: self._map(name) for name in ("flux", "ivar")}
        self.ivar = _PackedIvar(self)

    def _map(self, name: str) -> tuple[mmap.mmap, np.ndarray, int] | None:
        """``(map, array, where the array starts in the map)`` of a packed array, mapped
        read-only at its byte offset; None if it has none (empty, or not contiguous)."""
        dset = self._file[name]
        offset = dset.id.get_offset() if dset.chunks is None and dset.compression is None else None
        if offset is None or dset.shape[0] == 0:
            return None
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        size = dset.shape[0] * self.dtype.itemsize
        mm = mmap.mmap(self._raw.fileno(), offset + size - start, access=mmap.ACCESS_READ,
                       offset=start)
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            mm.madvise(mmap.MADV_SEQUENTIAL)  # blocks are read in order: read ahead
        return mm, np.frombuffer(mm, self.dtype, dset.shape[0], offset - start), offset - start

    def _values(self, rows: slice) -> tuple[int, int]:
        """``(a, b)``: the consecutive spectra ``rows`` are values ``a:b`` of the packed arrays."""
        start, stop, _ = rows.indices(self.shape[0])
        return int(self.offsets[start]), int(self.offsets[max(start, stop)])

    def _range(self, name: str, a: int, b: int) -> np.ndarray:
        mapped = self._maps[name]
        return self._file[name][a:b] if mapped is None else mapped[1][a:b]

    def _advise(self, name: str, a: int, b: int, advice: int) -> None:
        """``madvise`` the pages of ``name[a:b]`` (where the platform has it)."""
        mapped = self._maps[name]
        if mapped is None or not hasattr(mapped[0], "madvise"):
            return
        mm, _, delta = mapped
        lo = delta + a * self.dtype.itemsize
        lo -= lo % mmap.PAGESIZE
        hi = delta + b * self.dtype.itemsize
        if hi > lo:
            mm.madvise(advice, lo, hi - lo)

    def will_need(self, rows: slice) -> None:
        """Start reading the spans of ``rows`` from disk in the background (``MADV_WILLNEED``).

        The engine calls it for the next block before computing the current
        one, so that on a cold page cache the disk works while the CPU does;
        on a warm one it costs a lookup of the pages.
        """
        if hasattr(mmap, "MADV_WILLNEED"):
            a, b = self._values(rows)
            for name in ("flux", "ivar"):
                self._advise(name, a, b, mmap.MADV_WILLNEED)

    def release(self, rows: slice) -> None:
        """Unmap the pages of the spans of ``rows`` from this process once they are used
        (they stay in the page cache; see :meth:`mapped_spans`)."""
        a, b = self._values(rows)
        for name in ("flux", "ivar"):
            self._release(name, a, b)

    def mapped_spans(self, rows: slice, before: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored spans of the consecutive spectra ``rows`` where they lie in the
        file's memory map, with the ``before`` values that precede them: read-only
        1-D views ``(flux, ivar)``, nothing copied (reading them reads the file).

        None where that cannot be: the arrays are not mapped (not stored
        contiguous) or not aligned, or fewer than ``before`` values precede the
        spans (the first block).  The engine hands such views to the compiled
        kernel instead of copying each block (:meth:`read_packed_into`), and
        calls :meth:`release` once a block is used.
        """
        a, b = self._values(rows)
        arrays = [m[1] for m in (self._maps["flux"], self._maps["ivar"]) if m is not None]
        if a < before or len(arrays) < 2 or not all(x.flags.aligned for x in arrays):
            return None
        return arrays[0][a - before:b], arrays[1][a - before:b]

    def _release(self, name: str, a: int, b: int) -> None:
        """Unmap the pages of ``name[a:b]`` from this process once they are read.

        They stay in the page cache; without this a pass would count the
        whole file in the process's resident memory.
        """
        if hasattr(mmap, "MADV_DONTNEED"):
            self._advise(name, a, b, mmap.MADV_DONTNEED)

    # -- array-like -------------------------------------------------------------
    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"PackedSpectra({self.path!r}, shape={self.shape}, dtype={self.dtype.name}, "
                f"stored={self.stored_fraction:.1%})")

    @property
    def stored_fraction(self) -> float:
        """Stored pixels as a fraction of n_spectra x n_pixels."""
        return float(self.offsets[-1]) / max(1, self.shape[0] * self.shape[1])

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._dense(key)[0]

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        X = self[:]
        return X if dtype is None else X.astype(dtype, copy=False)

    def _rows(self, key: Any) -> tuple[np.ndarray | slice, bool]:
        n = self.shape[0]
        if isinstance(key, tuple):
            if len(key) == 1 or (len(key) == 2 and key[1] in (slice(None), Ellipsis)):
                key = key[0]
            else:
                raise IndexError("packed spectra are sliced by rows only: packed[rows]")
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if int(key) < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} is out of range for {n} spectra")
            return slice(i, i + 1), True
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return slice(start, max(start, stop)), False
            return np.arange(start, stop, step), False
        if key is Ellipsis:
            return slice(0, n), False
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return np.where(idx < 0, idx + n, idx).astype(np.int64), False

    def _dense(self, key: Any) -> tuple[np.ndarray, np.ndarray]:
        rows, single = self._rows(key)
        if isinstance(rows, slice):
            X, iv = self.read_block(rows)
        else:
            X = np.zeros((rows.size, self.shape[1]), self.dtype)
            iv = np.zeros_like(X)
            for j, i in enumerate(rows):
                self._scatter(slice(int(i), int(i) + 1), X[j:j + 1], iv[j:j + 1])
        return (X[0], iv[0]) if single else (X, iv)

    # -- what the engine reads --------------------------------------------------------
    def spans(self, rows: Any = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)``, int64: the observed span ``[lo, hi)`` of every spectrum of ``rows``."""
        lo = self.lo[rows]
        return lo, lo + self._lengths[rows]

    def read_block(self, rows: slice, dtype: npt.DTypeLike | None = None,
                   out: tuple[np.ndarray, np.ndarray] | None = None,
                   filled: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Dense ``(X, ivar)`` of the consecutive spectra ``rows``: zeros outside every span.

        The block is one contiguous range of each packed array.  ``out``
        (two C-contiguous arrays of at least ``rows`` rows) is filled in
        place and returned cut to ``rows``; ``filled``, the spans its rows
        held before (``(lo, hi)``; all zero for fresh zeroed buffers), lets
        the old values be cleared without writing whole rows.
        """
        start, stop, _ = rows.indices(self.shape[0])
        rows = slice(start, max(start, stop))
        m, d = rows.stop - rows.start, self.shape[1]
        dt = self.dtype if dtype is None else np.dtype(dtype)
        if out is None:
            X, iv = np.zeros((m, d), dt), np.zeros((m, d), dt)
        else:
            X, iv = out[0][:m], out[1][:m]
        self._scatter(rows, X, iv, filled)
        return X, iv

    def read_packed(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """The stored spans of the consecutive spectra ``rows``: ``(flux, ivar)``, 1-D.

        One contiguous range of each packed array: read-only views of the
        file's memory map (reading them reads the file), or arrays read by
        h5py if the file was not written contiguous.
        """
        a, b = self._values(rows)
        return self._range("flux", a, b), self._range("ivar", a, b)

    def read_packed_into(self, rows: slice, flux: np.ndarray, ivar: np.ndarray) -> int:
        """Copy the stored spans of the consecutive spectra ``rows`` to the start of
        ``flux`` and ``ivar`` (1-D, converted to their dtype); returns how many values.

        The engine's read of a block for solvers that read packed spans
        (:meth:`specnmf.protocols.SolverProtocol.reads_packed`): one copy of
        the observed bytes, no dense block.
        """
        a, b = self._values(rows)
        seg_x, seg_i = self.read_packed(rows)
        np.copyto(flux[:b - a], seg_x, casting="same_kind")
        np.copyto(ivar[:b - a], seg_i, casting="same_kind")
        self.release(rows)
        return b - a

    def _scatter(self, rows: slice, X: np.ndarray, iv: np.ndarray,
                 filled: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        off = self.offsets[rows.start:rows.stop + 1]
        base, end = int(off[0]), int(off[-1])
        seg_x, seg_i = self.read_packed(rows)
        _copy_spans(X, iv, seg_x, seg_i, self.lo[rows].tolist(), (off[:-1] - base).tolist(),
                    (off[1:] - base).tolist(), filled)
        for name in ("flux", "ivar"):
            self._release(name, base, end)

    def summary(self, blocks: list[slice] | None = None) -> DataSummary:
        """The data summary recorded at pack time, as a pass over ``blocks`` would compute it.

        Sums are added per block and then across blocks (as
        :meth:`specnmf.engine.Engine.scan` does), so the result is exactly
        that of a validating pass with the same blocks; default: one block.
        """
        f = self._file
        rows = {name: f[f"summary/{name}"][()] for name in ROW_FIELDS}
        empty_pixels = ~f["summary/observed_pixels"][()]
        blocks = blocks or [slice(0, self.shape[0])]
        return DataSummary.combine(
            summary_from_rows({k: v[b] for k, v in rows.items()}, empty_pixels) for b in blocks)

    def verify(self) -> None:
        """Check that every dataset still has the checksum written at pack time.

        Reads the whole file once.

        Raises
        ------
        ValueError
            Naming the datasets whose bytes changed since the file was packed.
        """
        bad = []
        for name in _CHECKED:
            dset = self._file[name]
            h = hashlib.blake2b(digest_size=16)
            step = max(1, _CHUNK_BYTES // max(1, dset.dtype.itemsize))
            for s in range(0, dset.shape[0], step):
                h.update(np.ascontiguousarray(dset[s:s + step]).data)
            if h.hexdigest() != self._file.attrs.get(_checksum_key(name)):
                bad.append(name)
        if bad:
            raise ValueError(f"{self.path}: checksum mismatch in {', '.join(bad)}: the file "
                             "changed since it was packed and validated; pack the source again")

    def close(self) -> None:
        """Close the file (a map still viewed by an array closes when that array goes)."""
        for mapped in getattr(self, "_maps", {}).values():
            if mapped is not None:
                with contextlib.suppress(BufferError):
                    mapped[0].close()
        self._maps = {}
        if hasattr(self, "_raw"):
            self._raw.close()
        self._file.close()

    def __enter__(self) -> PackedSpectra:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_packed(path: str | os.PathLike, *, verify: bool = False) -> PackedSpectra:
    """Open a span-packed spectra file (see :mod:`specnmf._packed`).

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`pack_spectra` or ``specnmf pack``.
    verify : bool, default=False
        Also compare every dataset with its checksum from pack time (reads
        the whole file once).  Off by default: the layout's structure is
        always checked, its values were validated when packed.

    Returns
    -------
    PackedSpectra

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from specnmf.io import pack_spectra, open_packed
    >>> X = np.array([[np.nan, 1.0, 2.0, np.nan], [3.0, 4.0, np.nan, np.nan]])
    >>> ivar = np.where(np.isnan(X), 0.0, 1.0)
    >>> path = os.path.join(tempfile.mkdtemp(), "packed.h5")
    >>> info = pack_spectra(X, ivar, path)
    >>> with open_packed(path, verify=True) as packed:
    ...     print(packed[:].tolist(), [a.tolist() for a in packed.spans(slice(0, 2))])
    [[0.0, 1.0, 2.0, 0.0], [3.0, 4.0, 0.0, 0.0]] [[1, 0], [3, 2]]
    """
    return PackedSpectra(path, verify=verify)
