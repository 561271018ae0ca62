"""The documentation runs: every Python code block of README.md and docs/, and the Sphinx build.

Code blocks
    Every fenced block whose info string is exactly ``python`` in ``README.md``
    and ``docs/**/*.md`` is executed.  The blocks of one file run in order in
    one namespace (a later block may use the names of an earlier one), in a
    fresh temporary working directory (files a block writes land there), with
    matplotlib's non-interactive ``Agg`` backend.  There is no hidden set-up:
    each page builds its own data, from ``specnmf.datasets``, as a reader
    pasting the blocks into a session would.

    A block is *not* executed when the line just before its opening fence is
    the HTML comment ``<!-- skip-test: REASON -->`` (invisible on the rendered
    page).  Only two kinds of blocks carry it: the code of *other* packages on
    the migration pages (``docs/migrating/``), shown for reading beside the
    specnmf equivalent, and blocks that need hardware or services a test run
    does not have (a GPU).  Every skipped block must give a reason.
    Other fences (``text``, ``bash``, ``r``, MyST directives) are never run.
    A page whose blocks need an optional package that is not installed
    (h5py, dask, astropy, matplotlib: all in the ``test`` extra) is skipped.

Sphinx
    ``sphinx-build -W --keep-going -b html docs <tmp>`` must finish without a
    warning (skipped when Sphinx, MyST or numpydoc is not installed; they are
    in the ``test`` and ``docs`` extras).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from specnmf import ConvergenceWarning

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
_SKIP = re.compile(r"^\s*<!--\s*skip-test:\s*(?P<reason>\S.*?)\s*-->\s*$")


def extract_blocks(text):
    """Fenced code blocks of a markdown text.

    Returns
    -------
    list of (int, str, str, str or None)
        ``(line number of the opening fence, info string, code, skip reason)``.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                       and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        prev = lines[start - 1] if start > 0 else ""
        skip = _SKIP.match(prev)
        blocks.append((start + 1, info, "\n".join(body) + "\n", skip["reason"] if skip else None))
    return blocks


def _doc_files():
    if not (ROOT / "README.md").is_file() or not DOCS.is_dir():
        return []
    files = [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return [p for p in files if any(info == "python" for _, info, _, _ in
                                    extract_blocks(p.read_text(encoding="utf-8")))]


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def test_extract_blocks_rules():
    text = ("x\n```python\na = 1\n```\n<!-- skip-test: peer code -->\n```python\nimport nmf\n```\n"
            "````text\n```python\nnot a block\n```\n````\n")
    blocks = extract_blocks(text)
    assert [(b[1], b[3]) for b in blocks] == [("python", None), ("python", "peer code"),
                                              ("text", None)]
    assert blocks[0][2] == "a = 1\n"


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(path, tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [b for b in extract_blocks(path.read_text(encoding="utf-8")) if b[1] == "python"]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    try:
        # One BLAS thread: the pages' problems are small, and spinning BLAS
        # threads make them many times slower on a loaded machine.
        with _one_blas_thread(), warnings.catch_warnings():
            # The pages keep their fits short (few iterations): a convergence
            # warning is expected there and is not a failure of the page.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for line, _, code, reason in blocks:
                if reason is not None:
                    continue
                try:
                    exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
                except ModuleNotFoundError as exc:
                    if exc.name and exc.name.split(".")[0] != "specnmf":
                        pytest.skip(f"{path.name}:{line} needs {exc.name}, not installed "
                                    "(it is in the test extra)")
                    raise
                except Exception as exc:
                    raise AssertionError(
                        f"the python block at {path.relative_to(ROOT)}:{line} failed: "
                        f"{type(exc).__name__}: {exc}") from exc
    finally:
        plt.close("all")


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("numpydoc")
    if not (DOCS / "conf.py").is_file():
        pytest.skip("docs/conf.py is not there (not a source checkout)")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "api" / "specnmf.html").is_file()
