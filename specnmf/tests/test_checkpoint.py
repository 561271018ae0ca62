"""Checkpoints: atomic writes that survive SIGKILL, clear errors for damaged
files, fingerprints of data and settings, and resuming an interrupted fit."""

import inspect
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specnmf import SpectralNMF
from specnmf.checkpoint import CheckpointError, fingerprint, load_checkpoint, save_checkpoint

from .conftest import make_toy

HAS_CHECKPOINT = "checkpoint" in SpectralNMF(1).get_params()
needs_checkpoint = pytest.mark.skipif(
    not HAS_CHECKPOINT, reason="SpectralNMF has no checkpoint parameter yet")


# -- save / load ------------------------------------------------------------------
@given(
    n=st.integers(0, 30),
    dtype=st.sampled_from(["float64", "float32", "int64", "bool"]),
    it=st.integers(0, 10**6),
    value=st.floats(allow_nan=False, allow_infinity=False),
)
def test_round_trip_is_exact(tmp_path_factory, n, dtype, it, value):
    path = tmp_path_factory.mktemp("ck") / "fit.npz"
    rng = np.random.default_rng(n)
    arrays = {"templates": (rng.normal(size=(2, n)) * 1e3).astype(dtype), "n": np.array(n)}
    meta = {"iteration": it, "value": value, "names": ["a", "b"], "nested": {"x": None}}
    save_checkpoint(path, arrays, meta)
    got, got_meta = load_checkpoint(path)
    assert got_meta == meta
    assert set(got) == set(arrays)
    for key in arrays:
        assert got[key].dtype == arrays[key].dtype
        np.testing.assert_array_equal(got[key], arrays[key])
    assert sorted(os.listdir(path.parent)) == ["fit.npz"], "temporary file left behind"


def test_overwrite_replaces_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "fit.npz"
    for i in range(3):
        save_checkpoint(path, {"x": np.full(5, float(i))}, {"i": i})
    arrays, meta = load_checkpoint(path)
    assert meta == {"i": 2} and np.all(arrays["x"] == 2)
    assert os.listdir(tmp_path) == ["fit.npz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_checkpoint_gets_ordinary_file_permissions(tmp_path):
    # like any file the user writes (0666 less the umask), not a private temporary's 0600
    umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "fit.npz", {"x": np.ones(2)}, {})
    finally:
        os.umask(umask)
    assert (tmp_path / "fit.npz").stat().st_mode & 0o777 == 0o644


def test_saving_never_pickles(tmp_path):
    with pytest.raises(TypeError, match="'bad'.*object"):
        save_checkpoint(tmp_path / "c.npz", {"bad": np.array([{"a": 1}], dtype=object)}, {})
    with pytest.raises(TypeError, match="meta must be JSON"):
        save_checkpoint(tmp_path / "c.npz", {"x": np.ones(2)}, {"when": object()})
    with pytest.raises(ValueError, match="invalid checkpoint array name"):
        save_checkpoint(tmp_path / "c.npz", {"__specnmf_meta__": np.ones(2)}, {})
    with pytest.raises(TypeError, match="arrays must be a dict"):
        save_checkpoint(tmp_path / "c.npz", [np.ones(2)], {})
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "fit.npz"
    save_checkpoint(path, {"x": np.zeros(3)}, {"i": 1})

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": np.ones(3)}, {"i": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"i": 1}
    assert os.listdir(tmp_path) == ["fit.npz"]


# -- damaged files ----------------------------------------------------------------
@pytest.fixture
def good_checkpoint(tmp_path):
    path = tmp_path / "good.npz"
    save_checkpoint(path, {"templates": np.arange(4000.0).reshape(4, 1000)}, {"iteration": 7})
    return path


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_a_clear_error(good_checkpoint, keep):
    data = good_checkpoint.read_bytes()
    good_checkpoint.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="corrupted or not a specnmf checkpoint"):
        load_checkpoint(good_checkpoint)


def test_flipped_bytes_are_a_clear_error(good_checkpoint):
    data = bytearray(good_checkpoint.read_bytes())
    # inside the stored array data (zip CRC check fails when the member is read)
    data[len(data) // 3: len(data) // 3 + 64] = bytes(64)
    good_checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(good_checkpoint)


def test_foreign_files_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    plain = tmp_path / "plain.npz"
    np.savez(plain, templates=np.ones(3))
    with pytest.raises(CheckpointError, match="not a specnmf checkpoint"):
        load_checkpoint(plain)
    single = tmp_path / "single.npy"
    np.save(single, np.ones(3))
    with pytest.raises(CheckpointError):
        load_checkpoint(single)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __specnmf_meta__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError):
        load_checkpoint(pickled)
    other_json = tmp_path / "json.npz"
    np.savez(other_json, __specnmf_meta__=np.array(json.dumps({"format": "other"})))
    with pytest.raises(CheckpointError, match="unknown metadata format"):
        load_checkpoint(other_json)
    text = tmp_path / "text.npz"
    text.write_text("not a zip file at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)


def test_corrupted_zip_member_is_reported(tmp_path):
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("templates.npy", b"\x93NUMPY garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# -- crash safety -------------------------------------------------------------------
_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from specnmf.checkpoint import save_checkpoint
    i = 0
    while True:
        i += 1
        # payload, meta and a second array all encode i: a torn write shows up
        save_checkpoint(sys.argv[1], {"x": np.full(300_000, float(i)), "i": np.array(i)}, {"i": i})
""")


@pytest.mark.slow
def test_checkpoint_survives_sigkill_at_random_moments(tmp_path):
    path = tmp_path / "loop.npz"
    rng = random.Random(1234)
    last = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
        try:
            deadline = time.monotonic() + 60
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert path.exists(), "writer produced no checkpoint"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        arrays, meta = load_checkpoint(path)
        i = meta["i"]
        assert int(arrays["i"]) == i
        assert arrays["x"].shape == (300_000,) and np.all(arrays["x"] == i)
        last = max(last, i)
    assert last >= 1
    # only our checkpoint and possibly temporaries of killed writes remain
    leftovers = [n for n in os.listdir(tmp_path) if n != "loop.npz"]
    assert all(n.startswith(".loop.npz.") and n.endswith(".tmp") for n in leftovers)


# -- fingerprints -------------------------------------------------------------------
def test_fingerprint_is_deterministic_and_sensitive():
    params = {"solver": "nearly", "tol": 1e-6, "n_components": 3, "shift": None,
              "templates": np.ones((3, 4)), "random_state": 0}
    fp = fingerprint(100, 40, params)
    assert fp == fingerprint(100, 40, dict(reversed(list(params.items()))))
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp != fingerprint(101, 40, params)
    assert fp != fingerprint(100, 41, params)
    for key, value in [("solver", "apg"), ("tol", 1e-6 * (1 + 1e-15)), ("n_components", 4),
                       ("shift", 0.0), ("random_state", 1),
                       ("templates", np.ones((3, 4)) + np.eye(3, 4) * 1e-12),
                       ("templates", np.ones((4, 3))), ("templates", np.ones((3, 4), np.float32))]:
        assert fp != fingerprint(100, 40, {**params, key: value}), key
    # same value, other Python/numpy scalar types: same settings
    assert fp == fingerprint(np.int64(100), 40, {**params, "n_components": np.int32(3),
                                                 "tol": np.float64(1e-6)})


def test_fingerprint_of_objects_and_bad_input():
    class Penalty:
        def __init__(self, strength):
            self.strength = strength

    assert fingerprint(3, 4, {"p": [Penalty(1.0)]}) != fingerprint(3, 4, {"p": [Penalty(2.0)]})
    g1, g2 = np.random.default_rng(0), np.random.default_rng(1)
    assert fingerprint(3, 4, {"random_state": g1}) == fingerprint(3, 4, {"random_state": g2})
    with pytest.raises(TypeError, match="params must be a dict"):
        fingerprint(3, 4, [("solver", "nearly")])
    with pytest.raises(TypeError, match="n_spectra"):
        fingerprint(3.0, 4, {})
    with pytest.raises(TypeError, match=r"params\['f'\]"):
        fingerprint(3, 4, {"f": len})


# -- resuming a fit (needs the estimator's checkpoint parameters) ---------------------
_FIT_IN_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import specnmf.solvers as S
    from specnmf import SpectralNMF

    data, path, solver = sys.argv[1], sys.argv[2], sys.argv[3]
    factory = S.SOLVERS[solver]

    def slow_factory(*args, **kwargs):
        # same arithmetic, just slow enough that the parent can kill us mid-fit
        s = factory(*args, **kwargs)
        step = s.templates_step
        def templates_step(*a, **k):
            time.sleep(0.02)
            return step(*a, **k)
        s.templates_step = templates_step
        return s

    S.SOLVERS[solver] = slow_factory
    with np.load(data) as f:
        X, ivar = f["X"], f["ivar"]
    SpectralNMF(3, solver=solver, max_iter=40, tol=0, random_state=0, checkpoint=path,
                checkpoint_every=3).fit(X, ivar=ivar)
""")


def _fit_settings(solver, path):
    return dict(solver=solver, max_iter=40, tol=0, random_state=0, checkpoint=str(path),
                checkpoint_every=3)


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    X, ivar, _ = make_toy(n=60, d=50, seed=3)
    path = tmp_path_factory.mktemp("resume") / "data.npz"
    np.savez(path, X=X, ivar=ivar)
    return X, ivar, path


@needs_checkpoint
@pytest.mark.slow
@pytest.mark.parametrize("solver", ["nearly", "apg"])
def test_killed_fit_resumes_to_the_uninterrupted_result(tmp_path, resume_data, solver):
    from specnmf.solvers import SOLVERS

    if solver not in SOLVERS:
        pytest.skip(f"solver {solver!r} not available yet")
    X, ivar, data = resume_data
    ck = tmp_path / "fit.npz"
    proc = subprocess.Popen([sys.executable, "-c", _FIT_IN_CHILD, str(data), str(ck), solver])
    try:
        deadline = time.monotonic() + 60
        while not ck.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished (or failed) before the kill"
    assert ck.exists()
    load_checkpoint(ck)  # a valid checkpoint of an unfinished fit

    resumed = SpectralNMF(3, **_fit_settings(solver, ck)).fit(X, ivar=ivar, resume=True)
    reference = SpectralNMF(3, **_fit_settings(solver, tmp_path / "ref.npz")).fit(X, ivar=ivar)
    assert resumed.n_iter_ == reference.n_iter_ == 40
    np.testing.assert_array_equal(resumed.templates_, reference.templates_)
    np.testing.assert_array_equal(resumed.coefficients_, reference.coefficients_)
    np.testing.assert_array_equal(resumed.chi2_, reference.chi2_)


@needs_checkpoint
def test_resume_refuses_other_data_or_settings(tmp_path, resume_data):
    X, ivar, _ = resume_data
    ck = tmp_path / "fit.npz"
    settings = dict(_fit_settings("nearly", ck), max_iter=6)
    SpectralNMF(3, **settings).fit(X, ivar=ivar)
    assert ck.exists()
    with pytest.raises(ValueError, match="checkpoint"):
        SpectralNMF(3, **settings).fit(X[:-1], ivar=ivar[:-1], resume=True)
    with pytest.raises(ValueError, match="checkpoint"):
        SpectralNMF(3, **settings).fit(X[:, :-1], ivar=ivar[:, :-1], resume=True)
    with pytest.raises(ValueError, match="checkpoint"):
        SpectralNMF(2, **settings).fit(X, ivar=ivar, resume=True)
    with pytest.raises(ValueError, match="checkpoint"):
        SpectralNMF(3, **{**settings, "solver": "shift"}).fit(X, ivar=ivar, resume=True)


def _raise_keyboard_interrupt_at(monkeypatch, solver, iteration):
    """Make the ``iteration``-th template step raise KeyboardInterrupt, as Ctrl-C would."""
    import specnmf.solvers as S

    factory = S.SOLVERS[solver]
    calls = {"n": 0}

    def interrupting_factory(*args, **kwargs):
        s = factory(*args, **kwargs)
        step = s.templates_step

        def templates_step(*a, **k):
            calls["n"] += 1
            if calls["n"] == iteration:
                raise KeyboardInterrupt
            return step(*a, **k)

        s.templates_step = templates_step
        return s

    monkeypatch.setitem(S.SOLVERS, solver, interrupting_factory)


@needs_checkpoint
def test_keyboard_interrupt_returns_a_usable_partial_model(tmp_path, resume_data, monkeypatch,
                                                           caplog):
    X, ivar, _ = resume_data
    fit_params = inspect.signature(SpectralNMF.fit).parameters
    model = SpectralNMF(3, max_iter=50, tol=0, random_state=0)
    with caplog.at_level(logging.WARNING, logger="specnmf"):
        if "callback" in fit_params or "callback" in model.get_params():
            def stop(iteration, *args):
                if iteration == 6:
                    raise KeyboardInterrupt
            if "callback" in fit_params:
                model.fit(X, ivar=ivar, callback=stop)
            else:
                model.set_params(callback=stop).fit(X, ivar=ivar)
        else:
            _raise_keyboard_interrupt_at(monkeypatch, "nearly", 7)
            model.fit(X, ivar=ivar)
    assert model.interrupted_ is True
    assert 1 <= model.n_iter_ < 50
    if "callback" in fit_params:
        assert model.n_iter_ == 6
    assert any(r.levelno == logging.WARNING and "interrupt" in r.getMessage()
               for r in caplog.records)
    assert model.templates_.shape == (3, X.shape[1]) and np.all(model.templates_ >= 0)
    assert np.all(np.isfinite(model.coefficients_))
    assert model.chi2_.shape == (model.n_iter_ + 1,) and model.chi2_[-1] < model.chi2_[0]
    assert model.transform(X, ivar=ivar).shape == (X.shape[0], 3)
    # the partial model is the last complete iterate of the uninterrupted fit
    monkeypatch.undo()
    same = SpectralNMF(3, max_iter=model.n_iter_, tol=0, random_state=0).fit(X, ivar=ivar)
    np.testing.assert_array_equal(model.templates_, same.templates_)
    # (the last chi^2 may come from another, equivalent formula: rounding only)
    np.testing.assert_allclose(model.chi2_, same.chi2_, rtol=1e-12)
