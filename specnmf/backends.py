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

__all__ = ["get_namespace", "to_numpy", "is_numpy_namespace", "asarray", "index_like",
           "resolve_backend", "BACKENDS"]


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


def index_like(idx, like, xp):
    """Integer index array ``idx`` (numpy) in namespace ``xp``, on the device of ``like``."""
    if xp is np or isinstance(like, np.ndarray):
        return idx
    device = getattr(like, "device", None)
    try:
        return xp.asarray(idx, device=device)
    except TypeError:  # namespaces whose asarray takes no device (CuPy: current device)
        return xp.asarray(idx)


#: names accepted by ``SpectralNMF(backend=...)``
BACKENDS = ("numpy", "array_api_strict", "cupy", "torch")


def resolve_backend(name):
    """Namespace and device for a ``backend=`` name.

    ``"numpy"`` (default), ``"array_api_strict"`` (the standard's reference
    namespace: slow, used to prove the solvers use nothing else),
    ``"cupy"`` (NVIDIA GPU) and ``"torch"`` (CUDA if available, else CPU).

    Raises
    ------
    ImportError
        If the library behind the backend is not installed, with the pip
        command that installs it.
    """
    if name == "numpy":
        return np, None
    if name == "array_api_strict":
        import array_api_strict

        return array_api_strict, None
    if name == "cupy":
        try:
            import cupy
        except ImportError as exc:
            raise ImportError("backend='cupy' needs CuPy: pip install 'specnmf[gpu]'") from exc
        return cupy, None
    if name == "torch":
        try:
            import torch
            from array_api_compat import torch as xp_torch
        except ImportError as exc:
            raise ImportError("backend='torch' needs PyTorch and array-api-compat: "
                              "pip install 'specnmf[torch]'") from exc
        return xp_torch, ("cuda" if torch.cuda.is_available() else "cpu")
    raise ValueError(f"backend must be one of {list(BACKENDS)}; got {name!r}")
