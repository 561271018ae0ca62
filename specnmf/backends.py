"""Array namespaces and devices.

Every numerical routine in specnmf takes the array namespace ``xp`` as an
argument instead of importing numpy, so the same update rules run on numpy,
on ``array_api_strict`` (which the tests use to catch numpy-only code), and on
GPU libraries (CuPy, PyTorch) through ``array_api_compat``.  The namespace is
found once, at the public entry point, and passed down.

Nothing outside this module imports cupy or torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["get_namespace", "to_numpy", "is_numpy_namespace", "asarray"]


def get_namespace(*arrays):
    """Return the array namespace shared by ``arrays``.

    Arrays that implement ``__array_namespace__`` (numpy >= 2, array_api_strict,
    CuPy >= 13) give their own namespace; other types (PyTorch) go through
    ``array_api_compat`` when it is installed.  Python scalars and ``None``
    are ignored; with no array at all the result is numpy.

    Raises
    ------
    TypeError
        If the arrays come from different namespaces.
    """
    spaces = []
    for a in arrays:
        if a is None or isinstance(a, (int, float, bool)):
            continue
        if isinstance(a, np.ndarray):
            ns = np
        elif hasattr(a, "__array_namespace__"):
            ns = a.__array_namespace__()
        else:
            try:
                import array_api_compat
            except ImportError as exc:  # pragma: no cover - depends on install
                raise TypeError(
                    f"arrays of type {type(a).__name__} need the optional "
                    "dependency array-api-compat (pip install array-api-compat)"
                ) from exc
            ns = array_api_compat.array_namespace(a)
        if all(ns is not s for s in spaces):
            spaces.append(ns)
    if not spaces:
        return np
    if len(spaces) > 1:
        names = ", ".join(getattr(s, "__name__", str(s)) for s in spaces)
        raise TypeError(f"arrays come from different namespaces: {names}")
    return spaces[0]


def is_numpy_namespace(xp) -> bool:
    """True when ``xp`` is numpy itself (or array_api_compat's numpy wrapper)."""
    return getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")


def to_numpy(a) -> np.ndarray:
    """Copy an array of any supported namespace to a numpy array on the host."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def asarray(a, xp, *, dtype=None, device=None):
    """Move host data ``a`` into namespace ``xp`` (and onto ``device``)."""
    if xp is np:
        return np.asarray(a, dtype=dtype)
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(xp, np.dtype(dtype).name)
    if device is not None:
        kwargs["device"] = device
    return xp.asarray(a, **kwargs)
