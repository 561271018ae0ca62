"""Compiled kernels for the CPU (numba, optional: ``pip install specnmf[fast]``).

The BLAS formulation of the multiplicative updates (:mod:`specnmf.solvers.gram`)
reads the weights and the flux in several separate matrix products per
iteration.  :func:`mu_pass` does one iteration's work for a block of spectra
in a single sweep over each spectrum's *observed span* (first to last pixel
with weight): the coefficient update, the chi^2 of the incoming iterate from
the residual, and that spectrum's contribution to the template statistics,
while the spectrum is still in cache.  Survey spectra in a common rest frame
observe one window each (~60 % of the paper's quasar matrix is missing that
way), so the spans also skip most of the missing data.  :func:`checked_row_grams`
does the same for ``transform``: it checks each spectrum's weights and flux,
forms its Gram matrix and (optionally) solves its small NNLS problem in one
read of it.

Loops over the components are unrolled, so that the pixel loops vectorise
with the per-spectrum sums held in registers: the kernels are written once, in
the template ``_kernel_template.py.in``, and expanded for a number of
components on its first use (:func:`kernel_source`), into a file in specnmf's
cache directory that numba can cache the compiled code of.  Everything here is
an implementation detail of :mod:`specnmf.solvers`; the numpy/BLAS path
computes the same quantities and is used when numba is missing or the data
live in another array namespace.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from ._packing import pairs, products

_UNSET = object()
#: the numba module (optional accelerator), None where it cannot be imported;
#: imported by :func:`_numba` on first need, not with specnmf (~0.25 s)
numba = _UNSET

logger = logging.getLogger("specnmf")

__all__ = ["available", "worthwhile", "MIN_WORK", "MAX_Q", "spans", "mu_pass", "gradient_pass",
           "checked_row_grams", "fit_row_grams", "num_threads"]

#: largest number of components with an unrolled kernel (register pressure beyond)
MAX_Q = 10
#: spectra per chunk: the unit of threading and of float64 accumulation
CHUNK = 256

_FASTMATH = {"reassoc", "contract"}   # lets the pixel sums vectorise; no NaN/inf assumptions


def available() -> bool:
    """Whether the compiled kernels can be used (numba importable and not disabled).

    Setting the environment variable ``SPECNMF_DISABLE_NUMBA=1`` forces the
    numpy/BLAS path (used by the tests to compare the two).  Imports numba.
    """
    return os.environ.get("SPECNMF_DISABLE_NUMBA", "") in ("", "0") and _numba() is not None


#: work (data elements x passes over them) from which the compiled kernels are used.
#: Loading numba and the cached kernels costs ~0.7-1 s of CPU once per process
#: (numba's import and the registries it sets up on first use), and the kernels
#: save about half of the numpy/BLAS time: ~6 ns per element and pass (measured:
#: transform of 500 x 4000 spectra 0.02-0.03 s with numpy; of 20 000 x 4000,
#: 0.72 s with numpy, 0.35 s compiled).  Below ~1e8 that saving cannot repay the
#: load, so smaller work runs on numpy (a new process then transforms 500 x 4000
#: spectra in ~0.03 s instead of ~1 s).  The rule depends on the work only, never on
#: what the process ran before, so a call gives the same bits in any process.
#: ``SPECNMF_NUMBA_MIN_WORK`` overrides it (0: always compiled, as the tests do).
MIN_WORK = 1e8


def worthwhile(work) -> bool:
    """Whether work of ``work`` elements x passes should use the compiled kernels.

    False when they are not :func:`available` or the work is below
    ``MIN_WORK`` (or ``SPECNMF_NUMBA_MIN_WORK``); numba is imported only when
    the answer depends on it.
    """
    if os.environ.get("SPECNMF_DISABLE_NUMBA", "") not in ("", "0"):
        return False
    try:
        threshold = float(os.environ.get("SPECNMF_NUMBA_MIN_WORK", MIN_WORK))
    except ValueError:
        threshold = MIN_WORK
    return work >= threshold and available()


def _numba():
    """The numba module, imported on first call; None if it cannot be imported."""
    global numba
    if numba is _UNSET:
        try:
            import numba as module
        except ImportError:  # pragma: no cover - exercised where numba is absent
            module = None
        numba = module
    return numba


def num_threads() -> int:
    """Threads for the kernels: numba's setting (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``)."""
    return max(1, int(_numba().get_num_threads())) if _numba() is not None else 1


_POOL = None
_POOL_SIZE = 0


def _map(fn, items, threads):
    """``fn`` over ``items`` on up to ``threads`` threads: the caller's and those of
    one persistent pool (the kernels release the GIL; starting threads on every
    call would cost milliseconds).

    Each thread takes the next item when it is done with one, rather than a
    fixed share: on a machine shared with other work a thread that gets less
    of its core then does fewer items instead of holding up the call.  Every
    item writes its own outputs, so which thread runs it does not matter.
    """
    global _POOL, _POOL_SIZE
    items = list(items)
    threads = min(len(items), threads)
    pending = iter(items)
    lock = threading.Lock()

    def run():
        while True:
            with lock:
                item = next(pending, pending)
            if item is pending:
                return
            fn(item)

    if threads <= 1:
        run()
        return
    if _POOL_SIZE < threads - 1:
        _POOL_SIZE = max(threads - 1, (os.cpu_count() or 1) - 1)
        _POOL = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="specnmf-kernel")
    futures = [_POOL.submit(run) for _ in range(1, threads)]
    run()
    for future in futures:
        future.result()


def _map_rows(fn, n, threads=None):
    """``fn(rows)`` over slices of ``range(n)`` (at least CHUNK rows; about four per
    thread) on up to ``threads`` threads (default :func:`num_threads`), by :func:`_map`."""
    threads = threads or num_threads()
    step = max(CHUNK, -(-n // (4 * threads)))
    _map(fn, [slice(s, min(n, s + step)) for s in range(0, n, step)], threads)


def spans(ivar):
    """First and one-past-last observed pixel (``ivar > 0``) of every row; (0, 0) if none."""
    observed = ivar > 0
    seen = observed.any(axis=1)
    d = ivar.shape[1]
    # unsigned, so that numba knows the indices are not negative (no
    # wrap-around code in the pixel loops, which then vectorise)
    lo = np.where(seen, observed.argmax(axis=1), 0).astype(np.uint64)
    hi = np.where(seen, d - observed[:, ::-1].argmax(axis=1), 0).astype(np.uint64)
    return lo, hi


_CACHE_WARNED = False


def _warn_uncached(where):
    """Log, once per process, that kernels are compiled in every process, and why.

    A warning: the cost, seconds per process, would otherwise go unexplained,
    and setting a cache directory fixes it.
    """
    global _CACHE_WARNED
    if not _CACHE_WARNED:
        _CACHE_WARNED = True
        logger.warning("numba cannot cache specnmf's kernels (%s): they are compiled in every "
                       "process, which takes seconds; set NUMBA_CACHE_DIR and SPECNMF_CACHE_DIR "
                       "to a writable directory to cache them", where)


def _njit(fn, **options):
    """``numba.njit(nogil=True, boundscheck=False, cache=True, **options)(fn)``.

    The machine code is cached on disk (in ``NUMBA_CACHE_DIR`` if set, else
    ``__pycache__`` beside the source, else numba's user-wide cache directory,
    ``~/.cache/numba``), so that a new process loads it in a fraction of a
    second instead of compiling it for seconds.  Where none is writable (a
    read-only install and no usable home), or ``fn`` has no source file,
    numba refuses ``cache=True`` when decorating: then the function is
    compiled in every process, which :func:`_warn_uncached` logs.
    """
    options = {"nogil": True, "boundscheck": False, **options}
    try:
        return _numba().njit(cache=True, **options)(fn)
    except RuntimeError as exc:   # raised when decorating, not when compiling
        if "cannot cache" not in str(exc):
            raise
        _warn_uncached(f"no writable __pycache__ in {os.path.dirname(fn.__code__.co_filename)}, "
                       "user cache directory or NUMBA_CACHE_DIR")
    return _numba().njit(**options)(fn)


# ---------------------------------------------------------------------------
# The unrolled kernels: one template, expanded per number of components
# ---------------------------------------------------------------------------

_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_kernel_template.py.in")
_UNROLLED = re.compile(r"( *)for (.+) in unrolled\((.+)\):")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=None)
def _template():
    with open(_TEMPLATE, encoding="utf-8") as f:
        return f.read()


def kernel_source(q):
    """Source of the kernels for ``q`` components: the template expanded.

    The template, ``specnmf/_kernel_template.py.in``, is the kernels' Python
    source written for any q; three forms in it are expanded:

    * a loop ``for k in unrolled(range(q)):`` (or ``for k, l in unrolled(pairs):``,
      ``for p, (k, l) in unrolled(enumerate(pairs)):``, over the pairs of the
      packed Grams, :func:`specnmf._packing.pairs`) becomes one copy of
      its body per item, with ``{k}``, ``{l}``, ``{p}`` replaced by the item's
      values;
    * the iterable of an unrolled loop may use the items of the loops around it
      (``for uk, group in unrolled(sum_groups[1:]):`` then ``for k in unrolled(uk):``);
      ``sum_groups`` is :func:`sum_groups`;
    * ``sum_k(expr)`` becomes ``expr`` for k = 0, ..., q - 1 joined by ``+``;
    * ``{q}`` and ``{NAME}``, for the constants of this module the kernels use
      (``SUM_BLOCK``, ``SCAN_BLOCK``, ``BAD_WEIGHTS``, ``BAD_FLUX``), become
      their values; ``{MU_PAIRED}`` becomes whether ``q`` is not in
      ``MU_UNPAIRED``.

    The same template and constants always give the same text.
    """
    ku, lu, _ = pairs(q)
    names = {"q": q, "pairs": list(zip(ku.tolist(), lu.tolist())), "sum_groups": sum_groups(q),
             "pix_groups": pix_groups(q)}
    values = {"q": q, "SUM_BLOCK": SUM_BLOCK, "SCAN_BLOCK": SCAN_BLOCK,
              "PIX_BLOCK": PIX_BLOCK, "PIX_ROWS": PIX_ROWS,
              "MU_PAIRED": q not in MU_UNPAIRED,
              "BAD_WEIGHTS": BAD_WEIGHTS, "BAD_FLUX": BAD_FLUX}
    return "\n".join(_expand(_template().split("\n"), names, values))


def _expand(lines, names, values):
    """``lines`` of the template with their unrolled loops, sums and placeholders expanded
    (``names``: what the loops' iterables may use; ``values``: the placeholders')."""
    out = []
    i = 0
    while i < len(lines):
        loop = _UNROLLED.fullmatch(lines[i])
        i += 1
        if not loop:
            out.append(_fill(lines[i - 1], values))
            continue
        indent, target, items = loop.groups()
        body = []
        while i < len(lines) and lines[i].startswith(indent + " "):
            body.append(lines[i])
            i += 1
        step = len(body[0]) - len(body[0].lstrip(" ")) - len(indent)
        body = [indent + line[len(indent) + step:] for line in body]
        bound = re.findall(r"[A-Za-z_]\w*", target)
        # the loop's own header, run by Python, binds the placeholders of each copy
        items = eval(f"[({', '.join(bound)},) for {target} in {items}]",
                     {"__builtins__": {"range": range, "enumerate": enumerate}}, {**names, **values})
        for item in items:
            out += _expand(body, names, {**values, **dict(zip(bound, item))})
    return out


#: the template's sums: ``name(expr)`` is ``expr`` for each index up to the value of ``bound``
_SUMS = {"sum_k": ("k", "q"), "sum_r": ("r", "PIX_ROWS")}


def _fill(line, values):
    """``line`` with its sums (``sum_k(...)``, ``sum_r(...)``) and ``{name}`` placeholders expanded."""
    for name, (index, bound) in _SUMS.items():
        start = line.find(name + "(")
        while start >= 0:
            depth = 0
            for end in range(start + len(name), len(line)):
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                if depth == 0:
                    break
            term = line[start + len(name) + 1:end]
            terms = " + ".join(_fill(term, {**values, index: i}) for i in range(values[bound]))
            line = line[:start] + terms + line[end + 1:]
            start = line.find(name + "(")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), line)


def _cache_dirs():
    """Directories for the expanded kernels, in order of preference, and whether
    each must be private to this user.

    ``SPECNMF_CACHE_DIR`` if set (only it); else the user's cache directory
    (``$XDG_CACHE_HOME/specnmf`` or ``~/.cache/specnmf``), then a directory of
    this user's in the temporary directory.  That one is shared with other
    users, who could plant a file there for specnmf to import: it is used only
    if this user owns it and no one else may write to it.
    """
    # imported on first kernel use, as the others here: import specnmf does not need them
    import tempfile

    if os.environ.get("SPECNMF_CACHE_DIR"):
        return [(os.environ["SPECNMF_CACHE_DIR"], False)]
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    shared = hasattr(os, "getuid")   # else (Windows) the temporary directory is the user's own
    own = f"specnmf-{os.getuid()}" if shared else "specnmf"
    return [(os.path.join(user, "specnmf"), False),
            (os.path.join(tempfile.gettempdir(), own), shared)]


def _source_file(source, q):
    """A file holding ``source``, written to the first usable :func:`_cache_dirs`
    if not there yet; None if none is writable.

    The name holds a hash of the source, numba's version and specnmf's: a
    changed template (or constant) gives a new file and never loads a stale
    one.  An existing file is used as it is (rewriting it would invalidate
    numba's cache of it, keyed on its time stamp); a new one is written to a
    temporary file and renamed, so that no process sees it half-written.
    """
    import hashlib

    from ._version import __version__

    key = f"{source}\0{_numba().__version__}\0{__version__}"
    name = f"kernels_q{q}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.py"
    for directory, private in _cache_dirs():
        path = os.path.join(directory, name)
        try:
            os.makedirs(directory, mode=0o700 if private else 0o777, exist_ok=True)
            if private:
                status = os.stat(directory)
                if status.st_uid != os.getuid() or status.st_mode & 0o022:
                    continue
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() == source:
                        return path
            except FileNotFoundError:
                pass
            partial = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
            try:
                with open(partial, "w", encoding="utf-8") as f:
                    f.write(source)
                os.replace(partial, path)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
            return path
        except OSError:
            continue
    return None


@lru_cache(maxsize=None)
def _kernel_functions(q):
    """The Python functions of the kernels for ``q`` components, by name.

    numba caches machine code only for functions with a source file, so the
    source (:func:`kernel_source`) is written to a file (:func:`_source_file`)
    and imported from it: compiling costs ~1 s per kernel, once per machine
    instead of once per process.  Where no file can be written the source is
    run in memory, and the kernels compiled in every process.
    """
    import importlib.util

    source = kernel_source(q)
    path = _source_file(source, q)
    if path is None:
        _warn_uncached("no writable SPECNMF_CACHE_DIR, user cache directory or temporary "
                       "directory for their source")
        namespace = {"__name__": f"specnmf_kernels_q{q}"}
        exec(compile(source, f"<specnmf kernels q={q}>", "exec"), namespace)
        return namespace
    name = "specnmf_" + os.path.basename(path)[:-len(".py")]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # registered: numba's cached code finds its globals by the module's name
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return vars(module)


def _jit_kernel(q, name):
    """The compiled kernel ``name`` (``mu``, ``grad``, ``gram``, ``rows``) for ``q`` components."""
    return _njit(_kernel_functions(q)[f"{name}_q{q}"], fastmath=_FASTMATH)


def _span_layout(v, x, starts, n, d):
    """What the span kernels (``mu_q``, ``grad_q``) read: ``(v, x, starts, chunks)``.

    ``v`` and ``x`` 1-D, spectrum ``i``'s pixel ``j`` at ``starts[i] + j`` (the
    rows of (n, d) arrays, unless ``starts`` is given), and the chunks of
    ``CHUNK`` spectra, ``(start, stop)``, that the threads share and whose sums
    are added in a fixed order.
    """
    if starts is None:
        starts = np.arange(n, dtype=np.uint64) * np.uint64(d)
        v, x = v.reshape(-1), x.reshape(-1)
    return v, x, starts, [(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]


def _aligned_rows(rows, d, dtype, align=64):
    """An empty C-contiguous (rows, >= d) array whose rows start on ``align``-byte boundaries."""
    dtype = np.dtype(dtype)
    per = align // dtype.itemsize
    width = -(-d // per) * per
    buf = np.empty(rows * width + per, dtype=dtype)
    first = (-buf.ctypes.data % align) // dtype.itemsize
    return buf[first:first + rows * width].reshape(rows, width)


@lru_cache(maxsize=None)
def _mu_kernel(q):
    return _jit_kernel(q, "mu")


def mu_pass(v, x, lo, hi, C, T, *, shift=0.0, nearly, pen_num=None, pen_den=None,
            zero_division=1e-6, threads=None, starts=None):
    """One multiplicative iteration's pass over a block of spectra.

    Parameters
    ----------
    v, x : ndarray of shape (n, d), or 1-D with ``starts``
        Inverse variance and the solver's data (shifted by ``shift`` for
        Shift-NMF), C-contiguous, of the dtype of ``C`` and ``T``.
    lo, hi : uint64 arrays of shape (n,)
        Observed span of each spectrum (:func:`spans`); pixels outside it
        must have ``v == 0``.
    starts : uint64 array of shape (n,), optional
        With 1-D ``v`` and ``x``: spectrum ``i``'s pixel ``j`` is
        ``v[starts[i] + j]``, for ``j`` in its span (what lies outside the
        spans is never read), so spans packed one after another
        (:class:`specnmf.engine.Packed`) are read where they lie.
    C : ndarray of shape (n, q)
        Current coefficients.
    T : ndarray of shape (q, d)
        Current templates.
    shift : float
        The model is ``C T + shift``; chi^2 is of the unshifted data.
    nearly : bool
        Nearly-NMF's split of the signed numerator (eq. 18) rather than Shift-NMF's ratio.
    pen_num, pen_den : ndarray of shape (n, q), optional
        Penalty terms added to the numerator and denominator.
    zero_division : float
        Value of an entry whose denominator is 0.
    threads : int, optional
        Default :func:`num_threads`.  The result does not depend on it.

    Returns
    -------
    C_new : ndarray of shape (n, q)
    chi2 : float
        chi^2 of (C, T) on the block, summed in float64.
    A, D : float64 ndarrays of shape (q, d)
        ``C_new^T (v*x)`` and ``C_new^T (v*(C_new T + shift))``.
    """
    n = lo.shape[0]
    q, d = T.shape
    v, x, starts, chunks = _span_layout(v, x, starts, n, d)
    kernel = _mu_kernel(q)
    dt = T.dtype
    zero = dt.type(0)
    if pen_num is None:
        pen_num = np.zeros((n, q), dtype=dt)
    if pen_den is None:
        pen_den = np.zeros((n, q), dtype=dt)
    Cn = np.empty_like(C)
    A = np.zeros((len(chunks), q, d))
    D = np.zeros((len(chunks), q, d))
    chi = np.zeros(len(chunks))
    y = dt.type(shift)
    zd = dt.type(zero_division)
    # the templates and the statistics in rows on 64-byte boundaries (the kernel
    # aligns its sweeps of them: no vector access splits a cache line)
    Ta = _aligned_rows(q, d, dt)
    Ta[:, :d] = T
    lanes = np.uint64(32 // dt.itemsize)

    def work(c):
        s, e = chunks[c]
        seen = hi[s:e] > lo[s:e]
        # the pixels any spectrum of the chunk observes (none: the kernel only
        # applies the penalties' terms to the coefficients)
        jlo = lo[s:e][seen].min() if seen.any() else np.uint64(0)
        jhi = hi[s:e][seen].max() if seen.any() else np.uint64(0)
        # the chunk's statistics in the data's dtype, then widened into A[c], D[c]
        Ab = _aligned_rows(q, d, dt)
        Db = _aligned_rows(q, d, dt)
        # the chunk's spectra by the start of their spans (a fixed order: the
        # result does not depend on it being found again): neighbours then share
        # pixels, so more are summed in pairs and the (q, d) statistics they
        # update stay in cache; 1.1-1.2x faster on narrow spans (measured)
        order = np.argsort(lo[s:e], kind="stable")
        chi[c] = kernel(v, x, starts[s:e], lo[s:e], hi[s:e], jlo, jhi, lanes, C[s:e], Ta, Ta,
                        y, nearly, pen_num[s:e], pen_den[s:e], zd, zero, Cn[s:e], Ab, Db, A[c],
                        D[c], order)

    _map(work, range(len(chunks)), threads or num_threads())
    # chunk sums in a fixed order: the result does not depend on the thread count
    return Cn, float(chi.sum()), A.sum(axis=0), D.sum(axis=0)


@lru_cache(maxsize=None)
def _grad_kernel(q):
    return _jit_kernel(q, "grad")


def gradient_pass(v, x, lo, hi, C, T, *, shift=0.0, threads=None, starts=None):
    """chi^2's gradient and Hessian diagonal at ``(C, T)`` on a block, in float64.

    The compiled form of the fit's stationarity check
    (:func:`specnmf.solvers._health.stationarity`) for the blocks of
    :func:`mu_pass` (same ``v``, ``x``, ``lo``, ``hi``, ``starts``, ``shift``):
    one read of each spectrum's span, none of a dense block.

    Returns
    -------
    gC, hC : ndarrays of shape (n, q)
        ``-2 sum_j v r t_k`` and ``2 sum_j v t_k^2``, with ``r = x - shift - C T``.
    gT, hT : ndarrays of shape (q, d)
        ``-2 C^T (v r)`` and ``2 (C * C)^T v``.
    """
    n = lo.shape[0]
    q, d = T.shape
    v, x, starts, chunks = _span_layout(v, x, starts, n, d)
    kernel = _grad_kernel(q)
    C, T = np.ascontiguousarray(C), np.ascontiguousarray(T)
    gC = np.empty((n, q))
    hC = np.empty((n, q))
    GT = np.zeros((len(chunks), q, d))
    HT = np.zeros((len(chunks), q, d))

    def work(c):
        s, e = chunks[c]
        kernel(v, x, starts[s:e], lo[s:e], hi[s:e], C[s:e], T, float(shift), gC[s:e], hC[s:e],
               GT[c], HT[c])

    _map(work, range(len(chunks)), threads or num_threads())
    # chunk sums in a fixed order: the result does not depend on the thread count
    return -2 * gC, 2 * hC, -2 * GT.sum(axis=0), 2 * HT.sum(axis=0)


#: component counts for which the multiplicative kernel sums template statistics one
#: spectrum at a time, not in pairs: for q = 9 LLVM does not vectorise the pairs' model
#: loop, and pairs measured 20-30 % slower (faster for every other q of 2-10)
MU_UNPAIRED = frozenset({9})
#: most sums per group of the Gram kernels' pixel loops (:func:`sum_groups`)
SUM_REGS = 12
#: pixels per run over which the groups of sums loop in turn (the run stays in L1)
SUM_BLOCK = 256
#: zero weights skipped at a time by the Gram kernel's search for a spectrum's span
SCAN_BLOCK = 32
#: pixels per block of pixels_q, spectra summed at once, and most sums per pixel loop
PIX_BLOCK = 1024
PIX_ROWS = 6
PIX_SUMS = 8


def pix_groups(q):
    """The packed pairs' indices, in groups of about equal size of at most ``PIX_SUMS``:
    the Gram sums that one pixel loop of ``pixels_q`` makes."""
    p = q * (q + 1) // 2
    n_groups = -(-p // PIX_SUMS)
    ends = [round((g + 1) * p / n_groups) for g in range(n_groups)]
    return [list(range(a, b)) for a, b in zip([0] + ends[:-1], ends)]


def sum_groups(q):
    """How the Gram kernels split their sums into groups of at most ``SUM_REGS``.

    Spectrum i's Gram over its pixels, ``g_kl = sum_j v_j t_kj t_lj`` (the
    q(q+1)/2 pairs k <= l), and ``b_k = sum_j v_j x_j t_kj``: q + q(q+1)/2 running
    sums, 20 for q = 5, where AVX2 has 16 registers; summed in one loop, some live
    in memory and each multiply-add loads and stores one.  In groups that fit, each
    group its own loop over a run of pixels, they stay in registers: the Gram
    kernels measured 1.1-1.6x faster for q = 5 (1 and 2 threads).

    Returns
    -------
    list of (uk, group)
        Groups of about equal size, in the order of the pairs; the first also
        makes the b's.  ``group`` lists its pairs (k, l); ``uk`` the k's of its
        pairs, for which it forms ``u_k = v_j t_kj``.
    """
    all_pairs = list(zip(*(a.tolist() for a in pairs(q)[:2])))
    n_groups = -(-(q + len(all_pairs)) // SUM_REGS)
    # group g ends after ends[g] of the q + p sums (the b's first, then the pairs)
    ends = [round((g + 1) * (q + len(all_pairs)) / n_groups) for g in range(n_groups)]
    groups, start = [], 0
    for end in ends:
        group = all_pairs[max(0, start - q):max(0, end - q)]
        groups.append((sorted({k for k, _ in group}), group))
        start = end
    return groups


@lru_cache(maxsize=None)
def _gram_kernel(q):
    return _jit_kernel(q, "gram")


def checked_row_grams(X, ivar, T, *, threads=None, solve=False, pivots=(1e-9, 1e-3),
                   kkt=(1e-11, 1e3)):
    """Packed per-spectrum Grams and projections, checking the weights and flux as it goes.

    Parameters
    ----------
    X, ivar : C-contiguous float32 or float64 ndarrays of shape (n, d), of one dtype
        Flux (anything where ``ivar == 0``, NaN included) and inverse variance.
    T : float64 ndarray of shape (q, d)
    threads : int, optional
        Default :func:`num_threads`.
    solve : bool, default False
        Also solve each spectrum's NNLS problem, while its Gram is in cache.
    pivots : (fragile, hard)
        With ``solve``: problems whose unit-diagonal Gram has a pivot below
        ``hard`` are left to the caller (status HARD; below ``fragile``,
        FRAGILE), as are those that fail the KKT test with tolerances ``kkt``
        (see :mod:`specnmf.solvers.nnls`).

    Returns
    -------
    G : float64 ndarray of shape (n, q(q+1)/2)
        ``T diag(ivar_i) T^T``, upper triangle packed row by row (the order of
        ``numpy.triu_indices(q)``).
    b : float64 ndarray of shape (n, q)
        ``T (ivar_i * X_i)``.
    ok : bool
        False if some ``ivar`` is negative or not finite, or some flux where
        ``ivar > 0`` is not finite (or a sum overflowed): the caller should
        validate the input properly (``G`` and ``b`` are then meaningless).
    x, status : ndarrays of shape (n, q) and (n,)
        Only with ``solve``: the solutions of the problems with status SOLVED.
    """
    n, d = ivar.shape
    q = T.shape[0]
    kernel = _gram_kernel(q)
    G = np.empty((n, q * (q + 1) // 2))
    b = np.empty((n, q))
    flags = np.zeros(n, dtype=np.int8)
    lo = np.zeros(n, dtype=np.uint64)
    hi = np.zeros(n, dtype=np.uint64)
    x = np.zeros((n, q)) if solve else None
    T = np.ascontiguousarray(T, dtype=np.float64)
    if solve:
        _compile_helpers()

    def work(sl):
        kernel(X[sl], ivar[sl], T, T, G[sl], b[sl], flags[sl], lo[sl], hi[sl])
        if solve:
            _nnls_rows(G[sl], b[sl], x[sl], flags[sl], *pivots, *kkt)

    _map_rows(work, n, threads)
    ok = not np.any((flags == BAD_WEIGHTS) | (flags == BAD_FLUX))
    return (G, b, ok, x, flags) if solve else (G, b, ok)


@lru_cache(maxsize=None)
def _rows_kernel(q):
    return _jit_kernel(q, "rows")


def fit_row_grams(V, W, T, lo, hi, *, threads=None):
    """Packed per-spectrum Grams and projections of validated fit data, in one read.

    The compiled form of ``gram.row_grams(V, T, np, X=X)`` for the alternating
    solvers: no checks (fit data are validated once), ``W = V * X`` made once
    per block, each spectrum summed over its observed span only.

    Parameters
    ----------
    V, W : C-contiguous float32 or float64 ndarrays of shape (n, d), of one dtype
        Inverse variance and ``V * X``; summed in float64.
    T : ndarray of shape (q, d)
    lo, hi : uint64 ndarrays of shape (n,)
        Observed spans (:func:`spans`); outside them ``V`` and ``W`` must be 0.
    threads : int, optional
        Default :func:`num_threads`.  The result does not depend on it.

    Returns
    -------
    G : float64 ndarray of shape (n, q(q+1)/2)
        ``T diag(V_i) T^T``, packed as :func:`checked_row_grams`.
    b : float64 ndarray of shape (n, q)
        ``T W_i``.
    """
    n = V.shape[0]
    q = T.shape[0]
    kernel = _rows_kernel(q)
    G = np.empty((n, q * (q + 1) // 2))
    b = np.empty((n, q))
    T = np.ascontiguousarray(T, dtype=np.float64)

    def work(sl):
        kernel(V[sl], W[sl], T, lo[sl], hi[sl], G[sl], b[sl])

    _map_rows(work, n, threads)
    return G, b


@lru_cache(maxsize=None)
def _pixels_kernel(q):
    return _jit_kernel(q, "pixels")


def fit_pixel_stats(V, W, C, lo, hi, *, threads=None):
    """The template half-step's statistics of validated fit data, in one read.

    The compiled form of ``C.T @ W`` and of ``gram.pixel_grams(V, C, np)`` for the
    alternating solvers: per pixel, over the spectra that observe it.

    Parameters
    ----------
    V, W : C-contiguous float32 or float64 ndarrays of shape (n, d), of one dtype
        Inverse variance and ``V * X``, 0 outside the spectra's spans; summed in float64.
    C : ndarray of shape (n, q)
        Coefficients.
    lo, hi : uint64 ndarrays of shape (n,)
        Observed spans (:func:`spans`).
    threads : int, optional
        Default :func:`num_threads`.  The threads share the pixels, each summing
        its own: the result does not depend on their number.

    Returns
    -------
    A : float64 ndarray of shape (q, d)
        ``C^T W``.
    G : float64 ndarray of shape (q(q+1)/2, d)
        ``sum_i V_ij c_ik c_il``, packed as the row Grams.
    """
    n, d = V.shape
    q = C.shape[1]
    kernel = _pixels_kernel(q)
    C = np.ascontiguousarray(C, dtype=np.float64)
    P = np.ascontiguousarray(products(C, np, axis=1))
    # by the start of their spans: a group of spectra summed together then shares
    # most of its pixels (the kernel sums a group over the union of its spans)
    order = np.argsort(lo, kind="stable")
    A = np.empty((q, d))
    G = np.empty((P.shape[1], d))
    threads = threads or num_threads()
    # two shares of the pixels per thread, multiples of 8 pixels (the kernel
    # splits a share into blocks of at most PIX_BLOCK)
    step = max(8, -(-d // (16 * threads)) * 8)

    def work(j0):
        kernel(V, W, C, P, lo, hi, order, j0, min(d, j0 + step), A, G)

    _map(work, range(0, d, step), threads)
    return A, G


# ---------------------------------------------------------------------------
# Small NNLS problems, one per spectrum, solved where their Grams are made
# ---------------------------------------------------------------------------

#: status codes of :func:`checked_row_grams` with ``solve=True``
SOLVED, BAD_WEIGHTS, BAD_FLUX, HARD, FRAGILE = 0, 1, 2, 3, 4
#: internal: left by :func:`_free_rows` for the active-set loop
_RETRY = 5
#: problems per batch of :func:`_free_rows` (its work arrays stay in L1/L2)
_TILE = 64


_HELPERS: list[str] = []


def _jit(fn):
    """Marks ``fn`` to be compiled by :func:`_compile_helpers` (so that importing
    this module does not import numba)."""
    _HELPERS.append(fn.__name__)
    return fn


@lru_cache(maxsize=None)
def _compile_helpers():
    """Replace the functions marked by :func:`_jit` with their :func:`_njit`
    dispatchers, in this module's namespace, where the kernels that call them
    find them when they are compiled."""
    namespace = globals()
    for name in _HELPERS:
        if not hasattr(namespace[name], "py_func"):   # not yet a dispatcher
            namespace[name] = _njit(namespace[name])


@_jit
def _cholesky_solve(M, free, rhs, z, A, index):
    """Solve ``M_FF z_F = rhs_F`` (zeros off F) by Cholesky; returns the smallest
    pivot of ``M_FF`` (1 for an empty F), or -1 if it is not positive definite."""
    q = M.shape[0]
    m = 0
    for k in range(q):
        z[k] = 0.0
        if free[k]:
            index[m] = k
            m += 1
    if m == 0:
        return 1.0
    min_pivot = np.inf
    for a in range(m):
        for c in range(a + 1):
            s = M[index[a], index[c]]
            for e in range(c):
                s -= A[a, e] * A[c, e]
            if a == c:
                if not s > 0.0:
                    return -1.0
                min_pivot = min(min_pivot, s)
                A[a, a] = np.sqrt(s)
            else:
                A[a, c] = s / A[c, c]
    for a in range(m):            # L y = rhs
        s = rhs[index[a]]
        for e in range(a):
            s -= A[a, e] * z[index[e]]
        z[index[a]] = s / A[a, a]
    for a in range(m - 1, -1, -1):  # L^T z = y
        s = z[index[a]]
        for e in range(a + 1, m):
            s -= A[e, a] * z[index[e]]
        z[index[a]] = s / A[a, a]
    return min_pivot


@_jit
def _kkt_tol(bs, x, rtol):
    """The gradient tolerance of the KKT test, ``rtol * (max|b| + q max|x|)``."""
    q = bs.shape[0]
    bmax = 0.0
    xmax = 0.0
    for k in range(q):
        bmax = max(bmax, abs(bs[k]))
        xmax = max(xmax, abs(x[k]))
    return rtol * (bmax + q * xmax)


@_jit
def _kkt_ok(M, bs, x, free, live, rtol, free_factor):
    """The KKT test of :func:`specnmf.solvers.nnls._kkt` for one problem."""
    q = M.shape[0]
    tol = _kkt_tol(bs, x, rtol)
    for k in range(q):
        g = -bs[k]
        for e in range(q):
            g += M[k, e] * x[e]
        if free[k]:
            if x[k] < -tol or abs(g) > free_factor * tol:
                return False
        elif live[k] and g < -tol:
            return False
    return True


def _packed_index(q):
    """``packed[k, e]``: the column of pair (k, e) in the packed Grams, the map of
    :func:`specnmf._packing.pairs` as a (q, q) array."""
    return pairs(q)[2].reshape(q, q)


@_jit
def _free_rows(G, b, x, status, packed, hard_pivot, rtol, free_factor):
    """The common case of :func:`_nnls_rows`, many problems at a time.

    Solves every problem with all coefficients free, by the same arithmetic
    as :func:`_cholesky_solve` and :func:`_kkt_ok` but with the problem index
    innermost, so that the divisions and square roots of many problems are
    vectorised instead of waiting on each other.  A problem is accepted where
    the whole system's pivots are at least ``hard_pivot``, the solution is
    positive and passes the KKT test: exactly the problems the active-set
    loop would accept at its first step, with the same bits.  The others are
    marked ``_RETRY``.
    """
    n, q = b.shape
    P = G.shape[1]
    Gt = np.empty((P, _TILE))
    s = np.empty((q, _TILE))
    bs = np.empty((q, _TILE))
    L = np.empty((q, q, _TILE))
    z = np.empty((q, _TILE))
    ok = np.empty(_TILE, dtype=np.bool_)
    acc = np.empty(_TILE)
    bmax = np.empty(_TILE)
    xmax = np.empty(_TILE)
    tol = np.empty(_TILE)
    g = np.empty(_TILE)
    for t0 in range(0, n, _TILE):
        m = min(_TILE, n - t0)
        for r in range(m):
            for p in range(P):
                Gt[p, r] = G[t0 + r, p]
        for r in range(m):
            ok[r] = status[t0 + r] == SOLVED
        for k in range(q):
            pk = packed[k, k]
            for r in range(m):
                dk = Gt[pk, r]
                ok[r] = ok[r] and dk > 0.0
                s[k, r] = 1.0 / np.sqrt(dk) if dk > 0.0 else 0.0
                bs[k, r] = b[t0 + r, k] * s[k, r]
        # Cholesky of the unit-diagonal S G S, then the two triangular solves;
        # every loop over problems innermost, so that it is the one vectorised
        for a in range(q):
            for c in range(a + 1):
                pac = packed[a, c]
                for r in range(m):
                    acc[r] = 1.0 if a == c else Gt[pac, r] * s[a, r] * s[c, r]
                for e in range(c):
                    for r in range(m):
                        acc[r] -= L[a, e, r] * L[c, e, r]
                if a == c:
                    for r in range(m):
                        ok[r] = ok[r] and acc[r] >= hard_pivot
                        L[a, a, r] = np.sqrt(acc[r]) if acc[r] > 0.0 else 1.0
                else:
                    for r in range(m):
                        L[a, c, r] = acc[r] / L[c, c, r]
        for a in range(q):
            for r in range(m):
                acc[r] = bs[a, r]
            for e in range(a):
                for r in range(m):
                    acc[r] -= L[a, e, r] * z[e, r]
            for r in range(m):
                z[a, r] = acc[r] / L[a, a, r]
        for a in range(q - 1, -1, -1):
            for r in range(m):
                acc[r] = z[a, r]
            for e in range(a + 1, q):
                for r in range(m):
                    acc[r] -= L[e, a, r] * z[e, r]
            for r in range(m):
                z[a, r] = acc[r] / L[a, a, r]
        # positivity and the KKT test of _kkt_ok, also across problems
        for r in range(m):
            bmax[r] = 0.0
            xmax[r] = 0.0
        for k in range(q):
            for r in range(m):
                ok[r] = ok[r] and z[k, r] > 0.0
                ab = abs(bs[k, r])
                az = abs(z[k, r])
                bmax[r] = ab if ab > bmax[r] else bmax[r]
                xmax[r] = az if az > xmax[r] else xmax[r]
        for r in range(m):
            tol[r] = free_factor * (rtol * (bmax[r] + q * xmax[r]))
        for k in range(q):
            for r in range(m):
                g[r] = -bs[k, r]
            for e in range(q):
                if e == k:
                    for r in range(m):
                        g[r] += z[e, r]
                else:
                    pke = packed[k, e]
                    for r in range(m):
                        g[r] += Gt[pke, r] * s[k, r] * s[e, r] * z[e, r]
            for r in range(m):
                ok[r] = ok[r] and not abs(g[r]) > tol[r]
        for r in range(m):
            i = t0 + r
            if status[i] != SOLVED:
                continue
            if ok[r]:
                for k in range(q):
                    x[i, k] = z[k, r] * s[k, r]
            else:
                status[i] = _RETRY


#: Laguerre steps of :func:`largest_eigenvalues` at most, and the relative step that ends them
_LAGUERRE_STEPS = 100
_LAGUERRE_RTOL = 1e-14


def largest_eigenvalues(G, *, threads=None):
    """The largest eigenvalue of each of many small symmetric matrices, from above.

    ``numpy.linalg.eigvalsh(G)[:, -1]`` to ~1e-14 relative, for the APG solver's
    step sizes, without LAPACK's per-matrix cost (2.4x faster than ``eigvalsh`` on
    5700 Grams of 5 x 5, one thread, measured).  Laguerre's method on the
    characteristic polynomial, whose roots are all real, started above the largest
    (Gershgorin's bound) moves down to it monotonically: each iterate is an upper
    bound, cubically convergent at a simple eigenvalue, exact at once for a multiple
    one that is the only eigenvalue.  A step needs ``trace((mu I - G)^-1)`` and its
    Frobenius norm squared, from the Cholesky factor of ``mu I - G``; where that is
    no longer positive definite, mu equals the eigenvalue to rounding and is returned.

    Parameters
    ----------
    G : float64 ndarray of shape (m, q, q)
        Symmetric matrices.
    threads : int, optional
        Default :func:`num_threads`; the result does not depend on it.

    Returns
    -------
    float64 ndarray of shape (m,)
    """
    G = np.ascontiguousarray(G, dtype=np.float64)
    m = G.shape[0]
    out = np.empty(m)
    _compile_helpers()
    _map_rows(lambda sl: _laguerre_rows(G[sl], out[sl], _LAGUERRE_STEPS, _LAGUERRE_RTOL),
              m, threads)
    return out


@_jit
def _laguerre_rows(G, out, max_steps, rtol):
    L = np.zeros((G.shape[1], G.shape[1]))
    R = np.zeros_like(L)
    for i in range(G.shape[0]):
        out[i] = _laguerre(G[i], L, R, max_steps, rtol)


@_jit
def _laguerre(G, L, R, max_steps, rtol):
    """The largest eigenvalue of one symmetric G (q, q), see :func:`largest_eigenvalues`
    (L, R: (q, q) work arrays)."""
    q = G.shape[0]
    mu = -np.inf
    for k in range(q):
        r = G[k, k]
        for e in range(q):
            if e != k:
                r += abs(G[k, e])
        mu = max(mu, r)
    for _ in range(max_steps):
        if not mu > 0.0:
            break
        # Cholesky factor L of mu I - G
        for a in range(q):
            for c in range(a + 1):
                t = (mu if a == c else 0.0) - G[a, c]
                for e in range(c):
                    t -= L[a, e] * L[c, e]
                if a != c:
                    L[a, c] = t / L[c, c]
                elif t > 0.0:
                    L[a, a] = np.sqrt(t)
                else:
                    return mu
        # R = L^-1 (lower); (mu I - G)^-1 = R^T R
        for c in range(q):
            for a in range(c, q):
                t = 1.0 if a == c else 0.0
                for e in range(c, a):
                    t -= L[a, e] * R[e, c]
                R[a, c] = t / L[a, a]
        s1 = 0.0
        for a in range(q):
            for c in range(a + 1):
                s1 += R[a, c] * R[a, c]
        s2 = 0.0
        for a in range(q):
            for c in range(q):
                t = 0.0
                for e in range(max(a, c), q):
                    t += R[e, a] * R[e, c]
                s2 += t * t
        delta = q / (s1 + np.sqrt(max(0.0, (q - 1) * (q * s2 - s1 * s1))))
        mu -= delta
        if delta <= rtol * abs(mu):
            break
    return mu


def apg_steps(G, b, F, F_prev, L_prev, omega, delta, *, threads=None):
    """One extrapolated projected-gradient step on each of many small quadratics.

    The compiled form of :meth:`specnmf.solvers.apg.APG._solve` (see there): for
    ``f(x) = x^T G x - 2 b . x`` with ``L = 2 lambda_max(G)``
    (:func:`largest_eigenvalues`), the weight ``w = min(omega, delta sqrt(L_prev / L))``,
    ``x_new = max(0, x_hat - grad f(x_hat) / L)`` from ``x_hat = x + w (x - x_prev)``,
    or from ``x`` where that step would increase ``f``; ``x`` where ``L = 0``.

    Parameters
    ----------
    G : float64 ndarray of shape (m, q, q)
    b, F, F_prev : float64 ndarrays of shape (m, q)
    L_prev : float64 ndarray of shape (m,)
    omega, delta : float

    Returns
    -------
    F_new : float64 ndarray of shape (m, q)
    L : float64 ndarray of shape (m,)
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (G, b, F, F_prev, L_prev)]
    m, q = arrays[1].shape
    F_new = np.empty((m, q))
    L = np.empty(m)
    _compile_helpers()

    def work(sl):
        _apg_rows(*(a[sl] for a in arrays), float(omega), float(delta), F_new[sl], L[sl],
                  _LAGUERRE_STEPS, _LAGUERRE_RTOL)

    _map_rows(work, m, threads)
    return F_new, L


@_jit
def _apg_rows(G, b, F, F_prev, L_prev, omega, delta, F_new, L_out, max_steps, rtol):
    m, q = b.shape
    W1 = np.zeros((q, q))
    W2 = np.zeros((q, q))
    x_hat = np.zeros(q)
    x_try = np.zeros(q)
    x_plain = np.zeros(q)
    for i in range(m):
        Gi = G[i]
        L = 2.0 * _laguerre(Gi, W1, W2, max_steps, rtol)
        L_out[i] = L
        if not L > 0.0:
            # no curvature (no data, no penalty): nothing to fit
            for k in range(q):
                F_new[i, k] = F[i, k]
            continue
        w = min(delta * np.sqrt(max(L_prev[i], 0.0) / L), omega)
        for k in range(q):
            x_hat[k] = F[i, k] + w * (F[i, k] - F_prev[i, k])
        for k in range(q):
            g_hat = -b[i, k]
            g = -b[i, k]
            for e in range(q):
                g_hat += Gi[k, e] * x_hat[e]
                g += Gi[k, e] * F[i, e]
            x_try[k] = max(x_hat[k] - 2.0 * g_hat / L, 0.0)
            x_plain[k] = max(F[i, k] - 2.0 * g / L, 0.0)
        # f(x_try) > f(x): the extrapolated step would increase f
        f_try = 0.0
        f_now = 0.0
        for k in range(q):
            gt = 0.0
            gn = 0.0
            for e in range(q):
                gt += Gi[k, e] * x_try[e]
                gn += Gi[k, e] * F[i, e]
            f_try += x_try[k] * gt - 2.0 * b[i, k] * x_try[k]
            f_now += F[i, k] * gn - 2.0 * b[i, k] * F[i, k]
        worse = f_try > f_now
        for k in range(q):
            F_new[i, k] = x_plain[k] if worse else x_try[k]


def nnls_rows(G, b, x, status, fragile_pivot, hard_pivot, rtol, free_factor, *, threads=None):
    """:func:`_nnls_rows` on up to ``threads`` threads (default :func:`num_threads`), a
    chunk of problems each; each problem is solved alone, so the result does not
    depend on the threads."""
    _compile_helpers()
    _map_rows(lambda sl: _nnls_rows(G[sl], b[sl], x[sl], status[sl], fragile_pivot, hard_pivot,
                                    rtol, free_factor), b.shape[0], threads)


def _nnls_rows(G, b, x, status, fragile_pivot, hard_pivot, rtol, free_factor):
    """Exact NNLS of every well-conditioned problem (packed Grams G, projections b).

    Each problem is scaled to a unit diagonal, then solved by Lawson & Hanson's
    active-set method with Cholesky solves.  Problems whose whole system has a
    pivot below ``hard_pivot`` (or that fail the KKT test) are marked HARD,
    below ``fragile_pivot`` FRAGILE, for the caller's careful solvers.
    Most problems are solved by :func:`_free_rows` first.
    """
    _solve_rows(G, b, x, status, _packed_index(b.shape[1]), fragile_pivot, hard_pivot, rtol,
                free_factor)


@_jit
def _solve_rows(G, b, x, status, packed, fragile_pivot, hard_pivot, rtol, free_factor):
    """:func:`_nnls_rows` with the packed-Gram index map ``packed`` (:func:`_packed_index`)."""
    n, q = b.shape
    M = np.zeros((q, q))
    A = np.zeros((q, q))
    s = np.zeros(q)
    bs = np.zeros(q)
    z = np.zeros(q)
    xx = np.zeros(q)
    w = np.zeros(q)
    live = np.zeros(q, dtype=np.bool_)
    free = np.zeros(q, dtype=np.bool_)
    index = np.zeros(q, dtype=np.int64)
    _free_rows(G, b, x, status, packed, hard_pivot, rtol, free_factor)
    for i in range(n):
        if status[i] != _RETRY:
            continue
        status[i] = SOLVED
        for k in range(q):
            dk = G[i, packed[k, k]]
            live[k] = dk > 0.0
            s[k] = 1.0 / np.sqrt(dk) if live[k] else 0.0
            bs[k] = b[i, k] * s[k]
        for k in range(q):
            for e in range(q):
                M[k, e] = G[i, packed[k, e]] * s[k] * s[e]
            M[k, k] = 1.0
        # conditioning of the whole system (its pivots bound every subsystem's)
        pivot = _cholesky_solve(M, live, bs, z, A, index)
        if pivot < fragile_pivot:
            status[i] = FRAGILE
            continue
        if pivot < hard_pivot:
            status[i] = HARD
            continue
        done = True
        for k in range(q):
            free[k] = live[k]
            xx[k] = z[k]
            if live[k] and not z[k] > 0.0:
                done = False
        if not done:
            # the support of the free solution is usually the answer's: one
            # solve on it, accepted only if it passes the KKT test (the same
            # solve Lawson & Hanson would end with, so the same bits)
            for k in range(q):
                free[k] = live[k] and z[k] > 0.0
            _cholesky_solve(M, free, bs, xx, A, index)
            done = True
            for k in range(q):
                if free[k] and not xx[k] > 0.0:
                    done = False
            done = done and _kkt_ok(M, bs, xx, free, live, rtol, free_factor)
        if not done:
            # Lawson & Hanson from x = 0
            for k in range(q):
                free[k] = False
                xx[k] = 0.0
            for _ in range(3 * q + 3):
                tol = _kkt_tol(bs, xx, rtol)
                best = -1
                for k in range(q):
                    w[k] = bs[k]
                    for e in range(q):
                        w[k] -= M[k, e] * xx[e]
                    if live[k] and not free[k] and w[k] > tol and (best < 0 or w[k] > w[best]):
                        best = k
                if best < 0:
                    break
                free[best] = True
                for _inner in range(3 * q + 3):
                    _cholesky_solve(M, free, bs, z, A, index)
                    alpha = 2.0
                    for k in range(q):
                        if free[k] and z[k] <= 0.0:
                            alpha = min(alpha, xx[k] / (xx[k] - z[k]))
                    if alpha > 1.0:
                        for k in range(q):
                            xx[k] = z[k]
                        break
                    for k in range(q):
                        if free[k]:
                            xx[k] += alpha * (z[k] - xx[k])
                            if xx[k] <= 0.0:
                                xx[k] = 0.0
                                free[k] = False
        if not _kkt_ok(M, bs, xx, free, live, rtol, free_factor):
            status[i] = HARD
            continue
        for k in range(q):
            x[i, k] = xx[k] * s[k] if free[k] else 0.0
