"""Start-up hygiene: what ``import specnmf`` loads, and numba's on-disk cache.

The compiled kernels, and their source expanded from the template, are cached
on disk so that a new process does not rewrite or recompile them (seconds); where no cache location is writable they must still
work, compiled in the process, with one log line (not one per kernel).
These tests do not depend on a warm cache: they run in fresh processes with
cache locations of their own.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import specnmf
from specnmf import _kernels

ROOT = Path(specnmf.__file__).resolve().parents[1]
MESSAGE = "numba cannot cache specnmf's kernels"


def _run(code, env=None, cwd=None):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def test_import_loads_neither_numba_nor_scipy_optimize():
    # numba (~0.25 s) is imported on the first kernel call, scipy.optimize
    # (~0.3 s) on the first fallback NNLS problem
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = _run("""
        import sys
        import specnmf
        print(sorted(m for m in ("numba", "scipy.optimize", "astropy", "matplotlib", "sklearn",
                                 "dask", "h5py") if m in sys.modules))
        print(specnmf.__file__)
    """, env=env, cwd=ROOT)
    loaded, path = out.stdout.split("\n")[:2]
    assert Path(path).resolve().parents[1] == ROOT
    assert loaded == "[]"


@pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")
def test_small_work_runs_on_numpy_without_loading_numba():
    # loading numba and the kernels (~1 s once per process) only pays for large work
    # (specnmf._kernels.MIN_WORK): a new process fits and transforms 500 x 400 spectra
    # without importing numba, and uses the kernels when the threshold is lowered
    env = {k: v for k, v in os.environ.items() if k != "SPECNMF_NUMBA_MIN_WORK"}
    env["PYTHONPATH"] = str(ROOT)
    code = """
        import sys
        import numpy as np
        from specnmf import SpectralNMF
        rng = np.random.default_rng(0)
        T = rng.uniform(size=(5, 400))
        X = rng.uniform(size=(500, 5)) @ T + rng.normal(size=(500, 400))
        m = SpectralNMF(5, max_iter=5, tol=0, random_state=0).fit(X, ivar=np.ones_like(X))
        c = m.transform(X, ivar=np.ones_like(X))
        print("numba" in sys.modules, float(c.sum()))
    """
    plain, total = _run(code, env=env, cwd=ROOT).stdout.split()
    assert plain == "False"
    compiled, total_compiled = _run(code, env={**env, "SPECNMF_NUMBA_MIN_WORK": "1"},
                                    cwd=ROOT).stdout.split()
    assert compiled == "True"
    assert float(total) == pytest.approx(float(total_compiled), rel=1e-9)


def test_uncacheable_function_compiles_with_one_log_line(monkeypatch, caplog):
    pytest.importorskip("numba")
    # a function without a source file: numba has no location to cache it in
    namespace = {}
    exec("def one(x):\n    return x + 1\n\ndef two(x):\n    return 2 * x\n", namespace)
    monkeypatch.setattr(_kernels, "_CACHE_WARNED", False)
    with caplog.at_level(logging.INFO, logger="specnmf"):
        one = _kernels._njit(namespace["one"])
        two = _kernels._njit(namespace["two"])
    assert (one(1), two(3)) == (2, 6)
    records = [r for r in caplog.records if MESSAGE in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING


def _read_only_install(tmp_path):
    """A copy of the package where numba can write no cache: its environment.

    The copy is made read-only (``chmod -R a-w``), and ``NUMBA_CACHE_DIR``,
    ``HOME`` and ``XDG_CACHE_HOME`` point below a regular file, where no
    directory can be made.  Root ignores permissions (CI runs as root), so
    there the copy's ``__pycache__`` is a regular file instead: numba's
    in-tree locator cannot make its directory either.
    """
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "specnmf", site / "specnmf",
                    ignore=shutil.ignore_patterns("__pycache__", "tests", "*.nbi", "*.nbc"))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    if os.geteuid() == 0:
        for package in [site / "specnmf", *(p for p in (site / "specnmf").rglob("*") if p.is_dir())]:
            (package / "__pycache__").write_text("")
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPECNMF_DISABLE_NUMBA", "PYTHONPATH", "PYTHONPYCACHEPREFIX")}
    env.update(PYTHONPATH=str(site), NUMBA_CACHE_DIR=str(blocker / "numba"),
               HOME=str(blocker / "home"), XDG_CACHE_HOME=str(blocker / "cache"),
               SPECNMF_CACHE_DIR=str(blocker / "specnmf"), PYTHONDONTWRITEBYTECODE="1")
    return site, env


def _restore_writable(site):
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


_CHILD = """
    import logging, sys
    import numpy as np
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import specnmf
    from specnmf import _kernels
    assert specnmf.__file__.startswith(sys.argv[1]), specnmf.__file__
    X, ivar = (np.load(sys.argv[2])[k] for k in ("X", "ivar"))
    model = specnmf.SpectralNMF(1, max_iter=3, tol=0.0, random_state=0).fit(X, ivar=ivar)
    # every other kernel a transform needs, decorated (compiled only when called)
    _kernels._gram_kernel(1)
    _kernels._compile_helpers()
    np.save(sys.argv[3], model.templates_)
    if sys.argv[4] == "transform":
        np.save(sys.argv[5], model.transform(X, ivar=ivar))
"""


@pytest.mark.parametrize("calls", ["fit", pytest.param("transform", marks=pytest.mark.slow)])
def test_read_only_install_works_and_logs_once(tmp_path, calls):
    """No writable cache location: the kernels compile in the process, give the
    same bits as cached ones, and one warning says so (not one per kernel)."""
    pytest.importorskip("numba")
    if not _kernels.available():
        pytest.skip("numba disabled (SPECNMF_DISABLE_NUMBA)")
    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 1.0, (20, 1)) * rng.uniform(0.5, 1.5, (1, 30))
    X += rng.normal(0, 0.2, X.shape)
    ivar = np.full(X.shape, 25.0)
    ivar[::3, :5] = 0.0
    np.savez(tmp_path / "data.npz", X=X, ivar=ivar)
    site, env = _read_only_install(tmp_path)
    try:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), str(site), str(tmp_path / "data.npz"),
                              str(tmp_path / "T.npy"), calls, str(tmp_path / "C.npy")],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        written = [p for p in site.rglob("*") if p.suffix in (".nbi", ".nbc")]
        written += list(tmp_path.rglob("kernels_q*"))
    finally:
        _restore_writable(site)
    lines = [line for line in out.stderr.splitlines() if MESSAGE in line]
    assert len(lines) == 1 and lines[0].startswith("WARNING specnmf:"), out.stderr
    assert not written
    # the same bits as this process's (cached or not) kernels
    model = specnmf.SpectralNMF(1, max_iter=3, tol=0.0, random_state=0).fit(X, ivar=ivar)
    np.testing.assert_array_equal(np.load(tmp_path / "T.npy"), model.templates_)
    if calls == "transform":
        np.testing.assert_array_equal(np.load(tmp_path / "C.npy"), model.transform(X, ivar=ivar))


def test_kernel_source_file_is_written_once_per_template(tmp_path, monkeypatch):
    """The expanded kernels go to SPECNMF_CACHE_DIR, named by a hash of their source:
    written once (a second use finds the file untouched), a new file for a changed
    template (the old one is never loaded for it), none where nothing is writable."""
    pytest.importorskip("numba")
    monkeypatch.setenv("SPECNMF_CACHE_DIR", str(tmp_path / "cache"))
    source = _kernels.kernel_source(1)
    path = Path(_kernels._source_file(source, 1))
    assert path.parent == tmp_path / "cache" and path.read_text() == source
    stamp = path.stat().st_mtime_ns
    assert Path(_kernels._source_file(source, 1)) == path and path.stat().st_mtime_ns == stamp
    template = _kernels._template()
    monkeypatch.setattr(_kernels, "_template", lambda: template.replace("chi = 0.0", "chi = 0.0 * 1"))
    changed = _kernels.kernel_source(1)
    other = Path(_kernels._source_file(changed, 1))
    assert other != path and other.read_text() == changed
    assert path.read_text() == source and path.stat().st_mtime_ns == stamp
    assert sorted((tmp_path / "cache").iterdir()) == sorted([path, other])   # no partial files
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("SPECNMF_CACHE_DIR", str(blocker / "cache"))
    assert _kernels._source_file(source, 1) is None


_CACHED_CHILD = """
    import json
    import numpy as np
    from specnmf import _kernels
    rng = np.random.default_rng(0)
    X, ivar, T = rng.normal(size=(20, 30)), rng.uniform(size=(20, 30)), rng.uniform(size=(1, 30))
    lo, hi = _kernels.spans(ivar)
    _kernels.mu_pass(ivar, X, lo, hi, rng.uniform(size=(20, 1)), T, nearly=True)
    _kernels.checked_row_grams(X, ivar, T)
    kernels = _kernels._mu_kernel(1), _kernels._gram_kernel(1)
    print(json.dumps({"hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
                      "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels),
                      "files": [k.py_func.__code__.co_filename for k in kernels]}))
"""


@pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")
def test_kernels_are_written_and_compiled_once(tmp_path):
    # a second process finds the expanded source and numba's index and code as the
    # first left them: it neither rewrites the file nor recompiles the kernels
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(ROOT), SPECNMF_CACHE_DIR=str(tmp_path / "specnmf"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    first = json.loads(_run(_CACHED_CHILD, env=env, cwd=ROOT).stdout)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    second = json.loads(_run(_CACHED_CHILD, env=env, cwd=ROOT).stdout)
    assert (first["misses"], first["hits"]) == (2, 0)
    assert (second["misses"], second["hits"]) == (0, 2)
    source = Path(first["files"][0])
    assert first["files"] == second["files"] == [str(source)] * 2
    assert source.parent == tmp_path / "specnmf" and source.name.startswith("kernels_q1_")
    assert len([p for p in stamps if p.suffix == ".nbi" and p.name.startswith(source.stem)]) == 2
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
