"""Crash-safe checkpoints of a fit in progress.

A checkpoint is one ``.npz`` file: the arrays of the iterate (coefficients,
templates, histories, ...) plus a JSON record (``meta``) stored as a 0-d
unicode array under the reserved key ``__specnmf_meta__``.  No pickle is
involved in either direction (``np.load(..., allow_pickle=False)``).

Writing is atomic: the file is written to a temporary file in the same
directory, flushed and ``fsync``-ed, then renamed over the old checkpoint with
:func:`os.replace`.  A process killed at any moment (even by SIGKILL) leaves
either the previous checkpoint or the new one on disk, never a mixture; at
worst a stray ``.<name>.*.tmp`` file is left beside it.

:func:`fingerprint` summarises the data shape and the settings of a fit, so a
resumed fit can refuse a checkpoint written for other data or settings.
:func:`checkpointer` and :func:`resume_state` are the two ends a fit uses:
the callback that writes the iterate every few iterations, and the reader that
hands it back to continue exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import zipfile
from numbers import Integral, Real
from pathlib import Path

import numpy as np

logger = logging.getLogger("specnmf")

__all__ = ["save_checkpoint", "load_checkpoint", "fingerprint", "checkpointer", "resume_state",
           "CheckpointError"]

_META_KEY = "__specnmf_meta__"
_FORMAT = "specnmf-checkpoint"
_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, corrupted, foreign)."""


def _host_array(a, name):
    from .backends import to_numpy

    arr = np.asarray(to_numpy(a))
    if arr.dtype.kind not in "biufcUS":
        # object arrays could only be stored with pickle
        raise TypeError(f"checkpoint array {name!r} must be numeric or string; got dtype {arr.dtype}")
    return arr


def _create_temporary(directory, name):
    """A new file beside the checkpoint, opened for writing: ``(fd, path)``.

    Unlike :func:`tempfile.mkstemp` (mode 0600) it gets the permissions of any
    file the user writes (0666 less the umask), which the final file keeps.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = Path(directory) / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` and ``meta`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (conventionally ending in ``.npz``; the name is used
        as given).  Its directory must exist.
    arrays : dict of str to array
        Arrays to store (numpy, or any backend array; copied to the host).
        Keys must be valid file names inside a zip archive and must not be
        ``"__specnmf_meta__"``.
    meta : dict
        JSON-serialisable record (iteration number, fingerprint, settings...).

    Raises
    ------
    TypeError
        If ``arrays`` is not a dict, an array has object dtype, or ``meta``
        is not JSON-serialisable.
    ValueError
        If a key is reserved or empty.
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of name -> array; got {type(arrays).__name__}")
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict; got {type(meta).__name__}")
    host = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key or key == _META_KEY or "/" in key:
            raise ValueError(f"invalid checkpoint array name {key!r}")
        host[key] = _host_array(value, key)
    try:
        record = json.dumps({"format": _FORMAT, "version": _VERSION, "meta": meta},
                            allow_nan=True, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta must be JSON-serialisable: {exc}") from exc
    host[_META_KEY] = np.array(record)

    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = _create_temporary(directory, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **host)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # also on KeyboardInterrupt: never leave a half-written temporary behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    # makes the rename itself durable across a power loss; not possible everywhere
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    arrays : dict of str to ndarray
        All arrays, read into memory.
    meta : dict
        The JSON record given to :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        (a ``ValueError``) if the file is truncated, corrupted, contains
        pickled objects, or is not a specnmf checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("an .npy array, not an .npz archive")
        with data:
            # npz members are read lazily: read them all here so that a
            # damaged member fails now, with the message below
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or not a specnmf checkpoint "
            f"({type(exc).__name__}: {exc}); delete it or start without resume"
        ) from exc
    record = arrays.pop(_META_KEY, None)
    if record is None or record.shape != () or record.dtype.kind != "U":
        raise CheckpointError(f"{str(path)!r} is an .npz file but not a specnmf checkpoint "
                              f"(no {_META_KEY} record)")
    try:
        wrapped = json.loads(str(record))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has a corrupted metadata record: {exc}") from exc
    if not isinstance(wrapped, dict) or wrapped.get("format") != _FORMAT or "meta" not in wrapped:
        raise CheckpointError(f"{str(path)!r} is not a specnmf checkpoint (unknown metadata format)")
    if wrapped.get("version") != _VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {wrapped.get('version')!r}; this "
            f"specnmf reads version {_VERSION}")
    return arrays, wrapped["meta"]


def _canonical(value, where):
    """A JSON-able, deterministic stand-in for a parameter value."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        # repr round-trips exactly, so 0.1 and 0.1 + 1e-17 differ
        return {"float": repr(float(value))}
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        if arr.dtype.kind == "O":
            return [_canonical(v, where) for v in arr.tolist()]
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        return {"ndarray": [str(arr.dtype), list(arr.shape), digest]}
    if isinstance(value, dict):
        return {str(k): _canonical(v, f"{where}[{k!r}]") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, where) for v in value]
    if isinstance(value, np.random.Generator):
        # a Generator only seeds the start, which a checkpoint replaces; its
        # state changes as it is used, so it cannot be part of the fingerprint
        return {"object": "numpy.random.Generator"}
    cls = type(value)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if hasattr(value, "get_params"):
        return {"object": name, "params": _canonical(value.get_params(), where)}
    if hasattr(value, "__dict__") and not callable(value):
        # e.g. penalty objects: a plain record of public attributes
        public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        return {"object": name, "attrs": _canonical(public, where)}
    raise TypeError(f"cannot fingerprint parameter {where} of type {name}")


def fingerprint(n_spectra, n_pixels, params):
    """A short hash of the data shape and the fit settings.

    Two fits get the same fingerprint exactly when they have the same data
    shape and equal settings; store it in a checkpoint's ``meta`` and compare
    on resume.

    Parameters
    ----------
    n_spectra, n_pixels : int
        Shape of the data.
    params : dict
        Settings that change the iterates (e.g. ``get_params()`` less the
        ones that do not, such as ``max_iter`` or ``verbose``).  Values may be
        None, bool, numbers, strings, arrays (hashed by content), lists, dicts
        and objects with ``get_params`` or plain public attributes.  A
        ``numpy.random.Generator`` counts only as "a Generator".

    Returns
    -------
    str
        64 hexadecimal digits (SHA-256).

    Raises
    ------
    TypeError
        If ``params`` is not a dict or holds a value that cannot be fingerprinted.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict; got {type(params).__name__}")
    for name, value in (("n_spectra", n_spectra), ("n_pixels", n_pixels)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise TypeError(f"{name} must be a non-negative integer; got {value!r}")
    record = {"n_spectra": int(n_spectra), "n_pixels": int(n_pixels),
              "params": _canonical(params, "params")}
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def checkpointer(path, every, fingerprint):
    """The ``checkpoint`` callback of :func:`specnmf.solvers.run`, or None.

    Parameters
    ----------
    path : str, os.PathLike or None
        Checkpoint file; None writes nothing (and returns None).
    every : int
        Write after every ``every``-th iteration.
    fingerprint : str
        :func:`fingerprint` of the fit, stored to be compared on resume.

    Returns
    -------
    callable or None
        ``write(iteration, C, T, history, state)``: stores the factors, the
        histories and the solver's state (scalars in ``meta``, arrays as
        ``state_<name>``), atomically, when ``iteration`` is a multiple of
        ``every``.
    """
    if path is None:
        return None

    def write(it, C, T, history, state):
        if it % every:
            return
        arrays = {"C": C, "T": T}
        arrays.update({f"history_{key}": np.asarray(v, dtype=np.float64)
                       for key, v in history.items()})
        scalars = {}
        for key, value in state.items():
            if value is None:
                continue
            if np.isscalar(value):
                scalars[key] = float(value)
            else:
                arrays[f"state_{key}"] = value
        save_checkpoint(path, arrays, {"iteration": it, "fingerprint": fingerprint,
                                       "history_keys": list(history), "scalars": scalars})
    return write


def resume_state(path, fingerprint, describe):
    """What a fit needs to continue from the checkpoint written by :func:`checkpointer`.

    Parameters
    ----------
    path : str, os.PathLike or None
        The checkpoint file (None is an error: there is nothing to resume from).
    fingerprint : str
        :func:`fingerprint` of the fit that resumes; it must equal the stored one.
    describe : str
        The data shape and settings of that fit, for the error message.

    Returns
    -------
    dict or None
        ``{"C", "T", "iteration", "history", "state"}`` (the keyword arguments
        :func:`specnmf.solvers.run` continues from), or None when ``path`` does
        not exist yet (a new fit starts).

    Raises
    ------
    ValueError
        If ``path`` is None or the checkpoint was written for other data or
        settings; :class:`CheckpointError` if it cannot be read.
    """
    if path is None:
        raise ValueError("resume=True needs the checkpoint parameter (a path)")
    if not os.path.exists(path):
        logger.info("no checkpoint at %s; starting a new fit", path)
        return None
    arrays, meta = load_checkpoint(path)
    if meta.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} was written for other data or settings "
            f"(its shape/parameters do not match these: {describe}); delete it or fit "
            f"with resume=False")
    history = {key: list(arrays[f"history_{key}"]) for key in meta["history_keys"]}
    state = dict(meta.get("scalars", {}))
    state.update({key[len("state_"):]: value for key, value in arrays.items()
                  if key.startswith("state_")})
    logger.info("resuming from %s at iteration %d", path, meta["iteration"])
    return {"C": arrays["C"], "T": arrays["T"], "iteration": int(meta["iteration"]),
            "history": history, "state": state}


#: estimator parameters that do not change the iterates, so not part of a fingerprint
_NOT_IN_FINGERPRINT = ("max_iter", "tol", "patience", "verbose", "progress", "checkpoint",
                       "checkpoint_every", "block_size")


def for_fit(params, n_spectra, n_pixels, *, resume):
    """The checkpoint writer and the state to resume from of one fit.

    Parameters
    ----------
    params : dict
        The estimator's ``get_params()``; ``params["checkpoint"]`` is the file.
    n_spectra, n_pixels : int
    resume : bool
        Whether to continue from the file (if it exists).

    Returns
    -------
    write : callable or None
        See :func:`checkpointer`.
    resumed : dict or None
        See :func:`resume_state`; None without ``resume`` or without a file.
    """
    path = params["checkpoint"]
    fp = None if path is None else fingerprint(n_spectra, n_pixels, {
        key: value for key, value in params.items() if key not in _NOT_IN_FINGERPRINT})
    write = checkpointer(path, params["checkpoint_every"], fp)
    resumed = (resume_state(path, fp, f"{n_spectra} spectra x {n_pixels} pixels, {params}")
               if resume else None)
    return write, resumed
