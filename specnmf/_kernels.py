"""Compiled kernels for the CPU (numba, optional: ``pip install specnmf[fast]``).

The BLAS formulation of the multiplicative updates (:mod:`specnmf.solvers.gram`)
reads the weights and the flux in several separate matrix products per
iteration.  :func:`mu_pass` does one iteration's work for a block of spectra
in a single sweep over each spectrum's *observed span* (first to last pixel
with weight): the coefficient update, the chi^2 of the incoming iterate from
the residual, and that spectrum's contribution to the template statistics,
while the spectrum is still in cache.  Survey spectra in a common rest frame
observe one window each (~60 % of the paper's quasar matrix is missing that
way), so the spans also skip most of the missing data.  :func:`spectrum_grams`
does the same for ``transform``: it checks each spectrum's weights and flux,
forms its Gram matrix and (optionally) solves its small NNLS problem in one
read of it.

Loops over the components are unrolled in generated source (one compiled
function per number of components, made on first use), so the pixel loops
vectorise with the per-spectrum sums held in registers.  Everything here is
an implementation detail of :mod:`specnmf.solvers`; the numpy/BLAS path
computes the same quantities and is used when numba is missing or the data
live in another array namespace.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

_UNSET = object()
#: the numba module (optional accelerator), None where it cannot be imported;
#: imported by :func:`_numba` on first need, not with specnmf (~0.25 s)
numba = _UNSET

logger = logging.getLogger("specnmf")

__all__ = ["available", "worthwhile", "MIN_WORK", "MAX_Q", "spans", "mu_pass", "spectrum_grams", "num_threads"]

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
    call would cost milliseconds)."""
    global _POOL, _POOL_SIZE
    items = list(items)
    threads = min(len(items), threads)

    def run(group):
        for item in group:
            fn(item)

    if threads <= 1:
        run(items)
        return
    if _POOL_SIZE < threads - 1:
        _POOL_SIZE = max(threads - 1, (os.cpu_count() or 1) - 1)
        _POOL = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="specnmf-kernel")
    futures = [_POOL.submit(run, items[t::threads]) for t in range(1, threads)]
    run(items[0::threads])
    for future in futures:
        future.result()


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


def _mu_source(q):
    """Source of the kernel for q components (see :func:`mu_pass` for the arguments)."""
    ks = range(q)
    out = []
    w = out.append
    w(f"def mu_q{q}(v, x, lo, hi, jlo, jhi, C, T, y, nearly, pnum, pden, zd, zero, Cn, Ab, Db, A, D):")
    w("    n = v.shape[0]")
    w("    chi = 0.0")
    w("    for k in range(Ab.shape[0]):")
    w("        for j in range(jlo, jhi):")
    w("            Ab[k, j] = zero")
    w("            Db[k, j] = zero")
    w("    for i in range(n):")
    w("        j0 = lo[i]")
    w("        j1 = hi[i]")
    w("        vi = v[i]")
    w("        xi = x[i]")
    for k in ks:
        w(f"        c{k} = C[i, {k}]")
        w(f"        a{k} = zero")
        w(f"        e{k} = zero")
    # a spectrum's chi^2 terms are summed in the data's dtype (in many
    # partial sums: ~1e-7 relative in float32, as objective.block_chi2), the
    # spectra in float64: a float64 sum would halve the float32 vector width
    w("        s = zero")
    # coefficient step: a = T (v*x), e = T (v*(m + y)), chi2 from the residual
    w("        for j in range(j0, j1):")
    for k in ks:
        w(f"            t{k} = T[{k}, j]")
    w("            m = " + " + ".join(f"c{k} * t{k}" for k in ks))
    w("            vj = vi[j]")
    w("            xj = xi[j]")
    w("            r = xj - y - m")
    w("            s += vj * r * r")
    w("            vx = vj * xj")
    w("            u = vj * (m + y)")
    for k in ks:
        w(f"            a{k} += vx * t{k}")
        w(f"            e{k} += u * t{k}")
    w("        chi += s")
    for k in ks:
        w("        if nearly:")
        w(f"            nu = max(a{k}, zero) + pnum[i, {k}]")
        w(f"            de = e{k} + max(-a{k}, zero) + pden[i, {k}]")
        w("        else:")
        w(f"            nu = a{k} + pnum[i, {k}]")
        w(f"            de = e{k} + pden[i, {k}]")
        w(f"        c{k} = zd if de == 0 else c{k} * nu / de")
        w(f"        Cn[i, {k}] = c{k}")
    # template statistics with the new coefficients, while the row is in cache;
    # one loop per statistic: with both in one loop LLVM gives up vectorising
    # it for q >= 6 ("too many memory checks needed"), ~2x slower
    w("        for j in range(j0, j1):")
    w("            vx = vi[j] * xi[j]")
    for k in ks:
        w(f"            Ab[{k}, j] += vx * c{k}")
    w("        for j in range(j0, j1):")
    w("            u = vi[j] * (" + " + ".join(f"c{k} * T[{k}, j]" for k in ks) + " + y)")
    for k in ks:
        w(f"            Db[{k}, j] += u * c{k}")
    w("    for k in range(Ab.shape[0]):")
    w("        for j in range(jlo, jhi):")
    w("            A[k, j] = Ab[k, j]")
    w("            D[k, j] = Db[k, j]")
    w("    return chi")
    return "\n".join(out)


_CACHE_WARNED = False


def _njit(fn, **options):
    """``numba.njit(nogil=True, boundscheck=False, cache=True, **options)(fn)``.

    The machine code is cached on disk (in ``NUMBA_CACHE_DIR`` if set, else
    ``__pycache__`` beside the source, else numba's user-wide cache directory,
    ``~/.cache/numba``), so that a new process loads it in a fraction of a
    second instead of compiling it for seconds.  Where none is writable (a
    read-only install and no usable home), numba refuses ``cache=True`` when
    decorating: then the function is compiled in every process, which is
    logged once per process (a warning: the cost, seconds per process, would
    otherwise go unexplained, and setting ``NUMBA_CACHE_DIR`` fixes it).
    """
    global _CACHE_WARNED
    options = {"nogil": True, "boundscheck": False, **options}
    try:
        return _numba().njit(cache=True, **options)(fn)
    except RuntimeError as exc:   # raised when decorating, not when compiling
        if "cannot cache" not in str(exc):
            raise
        if not _CACHE_WARNED:
            _CACHE_WARNED = True
            logger.warning("numba cannot cache specnmf's kernels (no writable __pycache__ in %s, "
                           "user cache directory or NUMBA_CACHE_DIR): they are compiled in every "
                           "process, which takes seconds; set NUMBA_CACHE_DIR to a writable "
                           "directory to cache them", os.path.dirname(fn.__code__.co_filename))
    return _numba().njit(**options)(fn)


def _jit_kernel(name):
    """The compiled kernel ``name`` of :mod:`specnmf._kernels_generated`.

    The generated sources live in a real module (written by
    :func:`write_generated`, checked by the tests to match the generators)
    so that numba can cache the machine code on disk: compiling costs ~1 s
    per kernel, once per machine instead of once per process.
    """
    from . import _kernels_generated

    return _njit(getattr(_kernels_generated, name), fastmath=_FASTMATH)


@lru_cache(maxsize=None)
def _mu_kernel(q):
    return _jit_kernel(f"mu_q{q}")


def mu_pass(v, x, lo, hi, C, T, *, shift=0.0, nearly, pen_num=None, pen_den=None,
            zero_division=1e-6, threads=None):
    """One multiplicative iteration's pass over a block of spectra.

    Parameters
    ----------
    v, x : ndarray of shape (n, d)
        Inverse variance and the solver's data (shifted by ``shift`` for
        Shift-NMF), C-contiguous, of the dtype of ``C`` and ``T``.
    lo, hi : uint64 arrays of shape (n,)
        Observed span of each spectrum (:func:`spans`); pixels outside it
        must have ``v == 0``.
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
    n, d = v.shape
    q = T.shape[0]
    kernel = _mu_kernel(q)
    dt = T.dtype
    zero = dt.type(0)
    if pen_num is None:
        pen_num = np.zeros((n, q), dtype=dt)
    if pen_den is None:
        pen_den = np.zeros((n, q), dtype=dt)
    chunks = [(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
    Cn = np.empty_like(C)
    A = np.zeros((len(chunks), q, d))
    D = np.zeros((len(chunks), q, d))
    chi = np.zeros(len(chunks))
    y = dt.type(shift)
    zd = dt.type(zero_division)

    def work(c):
        s, e = chunks[c]
        seen = hi[s:e] > lo[s:e]
        # the pixels any spectrum of the chunk observes (none: the kernel only
        # applies the penalties' terms to the coefficients)
        jlo = lo[s:e][seen].min() if seen.any() else np.uint64(0)
        jhi = hi[s:e][seen].max() if seen.any() else np.uint64(0)
        # the chunk's statistics in the data's dtype, then widened into A[c], D[c]
        Ab = np.empty((q, d), dtype=dt)
        Db = np.empty((q, d), dtype=dt)
        chi[c] = kernel(v[s:e], x[s:e], lo[s:e], hi[s:e], jlo, jhi, C[s:e], T, y, nearly,
                        pen_num[s:e], pen_den[s:e], zd, zero, Cn[s:e], Ab, Db, A[c], D[c])

    _map(work, range(len(chunks)), threads or num_threads())
    # chunk sums in a fixed order: the result does not depend on the thread count
    return Cn, float(chi.sum()), A.sum(axis=0), D.sum(axis=0)


#: rows of weights checked, then summed while still in L2, by the Gram kernel (8: measured)
GRAM_ROWS = 8
#: pixels per run of the Gram kernel's sweep over the weights
SCAN_BLOCK = 128


def generated_source():
    """Source of :mod:`specnmf._kernels_generated`: every kernel for q = 1..MAX_Q."""
    head = ['"""Kernels generated by ``specnmf._kernels.write_generated()``: do not edit.', '',
            'One function per number of components, with the component loops unrolled;',
            'specnmf._kernels compiles them with numba on first use.', '"""', '',
            'import numpy as np', '', f'ROWS = {GRAM_ROWS}']
    parts = ["\n".join(head)]
    for q in range(1, MAX_Q + 1):
        parts += [_mu_source(q), _gram_source(q)]
    return "\n\n\n".join(parts) + "\n"


def write_generated():
    """Rewrite ``specnmf/_kernels_generated.py`` from the generators (after changing them)."""
    path = os.path.join(os.path.dirname(__file__), "_kernels_generated.py")
    with open(path, "w") as f:
        f.write(generated_source())
    return path


def _gram_source(q):
    """Source of the per-spectrum Gram kernel for q components (see :func:`spectrum_grams`)."""
    pairs = [(k, l) for k in range(q) for l in range(k, q)]
    out = []
    w = out.append
    w(f"def gram_q{q}(X, V, T, G, b, flags, lo, hi, touched):")
    w("    n, d = V.shape")
    w("    flat = V.reshape(-1)")
    w("    for r0 in range(0, n, ROWS):")
    w("        r1 = min(n, r0 + ROWS)")
    # a sweep over each whole weight row: sign, finiteness and observed span.
    # The span is tracked per run of SCAN_BLOCK pixels (a nonzero sum: some
    # weight > 0, the sign being checked anyway), then narrowed to the exact
    # first and last pixel: half the work of tracking it pixel by pixel
    w("        for i in range(r0, r1):")
    w("            vi = V[i]")
    w("            negative = 0")
    w("            total = 0.0")
    w("            first = d")
    w("            last = 0")
    w(f"            for c in range(0, d - d % {SCAN_BLOCK}, {SCAN_BLOCK}):")
    w("                s = 0.0")
    w(f"                for t in range({SCAN_BLOCK}):")
    w("                    vj = vi[c + t]")
    w("                    s += vj")
    w("                    negative += vj < 0")
    w("                total += s")
    w("                if s != 0.0:")
    w("                    first = min(first, c)")
    w(f"                    last = c + {SCAN_BLOCK}")
    w(f"            for j in range(d - d % {SCAN_BLOCK}, d):")
    w("                vj = vi[j]")
    w("                total += vj")
    w("                negative += vj < 0")
    w("                if vj != 0.0:")
    w("                    first = min(first, j)")
    w("                    last = j + 1")
    w("            if negative or not total < np.inf:")
    w("                flags[i] = 1")
    w("                continue")
    w("            if last > 0:")
    w("                while vi[first] == 0:")
    w("                    first += 1")
    w("                while vi[last - 1] == 0:")
    w("                    last -= 1")
    w("                lo[i] = first")
    w("                hi[i] = last")
    # then the sums over the spans of those rows, still in cache; the bounds
    # are read back from (unsigned) arrays, which keeps the loop vectorisable
    w("        for i in range(r0, r1):")
    w("            vi = V[i]")
    w("            xi = X[i]")
    for k, l in pairs:
        w(f"            g{k}_{l} = 0.0")
    for k in range(q):
        w(f"            b{k} = 0.0")
    # The sums are arithmetic-bound and the sweep above memory-bound, and one
    # core does not overlap them by itself: so the sums also load three runs
    # of the weights of the next rows (about one row's worth), which the next
    # sweep then finds in cache.  The loads must be used: their sum is stored.
    w("            span = np.int64(hi[i]) - np.int64(lo[i])")
    w("            stride = min(span, (n * d - span) // 2)")
    w("            ahead = max(0, min((i + ROWS) * d, n * d - span - 2 * stride)) - np.int64(lo[i])")
    w("            ahead0 = flat[max(0, ahead):]")
    w("            ahead1 = flat[max(0, ahead + stride):]")
    w("            ahead2 = flat[max(0, ahead + 2 * stride):]")
    w("            ahead_sum = 0.0")
    w("            for j in range(lo[i], hi[i]):")
    w("                vj = np.float64(vi[j])")
    w("                ahead_sum += np.float64(ahead0[j]) + np.float64(ahead1[j]) + np.float64(ahead2[j])")
    w("                vx = vj * xi[j] if vj > 0 else 0.0")   # NaN flux where ivar == 0 is allowed
    for k in range(q):
        w(f"                t{k} = T[{k}, j]")
        w(f"                u{k} = vj * t{k}")
        w(f"                b{k} += vx * t{k}")
    for k, l in pairs:
        w(f"                g{k}_{l} += u{k} * t{l}")
    for idx, (k, l) in enumerate(pairs):
        w(f"            G[i, {idx}] = g{k}_{l}")
    for k in range(q):
        w(f"            b[i, {k}] = b{k}")
    total = " + ".join(f"b{k}" for k in range(q))
    w(f"            if not ({total} < np.inf and {total} > -np.inf):")
    w("                flags[i] = 2")
    w("            touched[i] = ahead_sum")
    return "\n".join(out)


@lru_cache(maxsize=None)
def _gram_kernel(q):
    return _jit_kernel(f"gram_q{q}")


def spectrum_grams(X, ivar, T, *, threads=None, solve=False, pivots=(1e-9, 1e-3),
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
    touched = np.empty(n)
    x = np.zeros((n, q)) if solve else None
    T = np.ascontiguousarray(T, dtype=np.float64)
    step = max(CHUNK, -(-n // (4 * (threads or num_threads()))))
    chunks = [slice(s, min(n, s + step)) for s in range(0, n, step)]

    if solve:
        _compile_helpers()

    def work(sl):
        kernel(X[sl], ivar[sl], T, G[sl], b[sl], flags[sl], lo[sl], hi[sl], touched[sl])
        if solve:
            _nnls_rows(G[sl], b[sl], x[sl], flags[sl], *pivots, *kkt)

    _map(work, chunks, threads or num_threads())
    ok = not np.any((flags == BAD_WEIGHTS) | (flags == BAD_FLUX))
    return (G, b, ok, x, flags) if solve else (G, b, ok)


# ---------------------------------------------------------------------------
# Small NNLS problems, one per spectrum, solved where their Grams are made
# ---------------------------------------------------------------------------

#: status codes of :func:`spectrum_grams` with ``solve=True``
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
def _kkt_ok(M, bs, x, free, live, rtol, free_factor):
    """The KKT test of :func:`specnmf.solvers.nnls._kkt` for one problem."""
    q = M.shape[0]
    bmax = 0.0
    xmax = 0.0
    for k in range(q):
        bmax = max(bmax, abs(bs[k]))
        xmax = max(xmax, abs(x[k]))
    tol = rtol * (bmax + q * xmax)
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


@_jit
def _packed_index(q):
    """``packed[k, e]``: the column of pair (k, e) in the packed Grams (``numpy.triu_indices`` order)."""
    packed = np.empty((q, q), dtype=np.int64)
    p = 0
    for k in range(q):
        for e in range(k, q):
            packed[k, e] = p
            packed[e, k] = p
            p += 1
    return packed


@_jit
def _free_rows(G, b, x, status, hard_pivot, rtol, free_factor):
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
    packed = _packed_index(q)
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


@_jit
def _nnls_rows(G, b, x, status, fragile_pivot, hard_pivot, rtol, free_factor):
    """Exact NNLS of every well-conditioned problem (packed Grams G, projections b).

    Each problem is scaled to a unit diagonal, then solved by Lawson & Hanson's
    active-set method with Cholesky solves.  Problems whose whole system has a
    pivot below ``hard_pivot`` (or that fail the KKT test) are marked HARD,
    below ``fragile_pivot`` FRAGILE, for the caller's careful solvers.
    Most problems are solved by :func:`_free_rows` first.
    """
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
    packed = _packed_index(q)
    _free_rows(G, b, x, status, hard_pivot, rtol, free_factor)
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
                bmax = 0.0
                xmax = 0.0
                for k in range(q):
                    bmax = max(bmax, abs(bs[k]))
                    xmax = max(xmax, abs(xx[k]))
                tol = rtol * (bmax + q * xmax)
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
