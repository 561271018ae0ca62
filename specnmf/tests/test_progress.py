"""SpectralNMF(progress=True): tqdm bar, text bar, or log lines; nothing when off."""

import io
import logging
import sys

import numpy as np
import pytest

from specnmf import SpectralNMF
from specnmf import progress as P


@pytest.fixture(autouse=True)
def _numpy_kernels(monkeypatch):
    monkeypatch.setenv("SPECNMF_DISABLE_NUMBA", "1")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(20, 2)) @ rng.uniform(size=(2, 15)) + rng.normal(scale=0.01,
                                                                           size=(20, 15))
    return X, np.full(X.shape, 1e4)


def _fit(X, ivar, **kw):
    params = dict(solver="anls", random_state=0, max_iter=7, tol=0)
    params.update(kw)
    return SpectralNMF(2, **params).fit(X, ivar=ivar)


@pytest.fixture
def no_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


def test_tqdm_bar_shows_iteration_objective(data, capsys):
    pytest.importorskip("tqdm")
    m = _fit(*data, progress=True)
    err = capsys.readouterr().err
    assert "7/7" in err and "objective=" in err
    assert f"{m.objective_[-1]:.6g}" in err


def test_log_fallback_without_tqdm(data, no_tqdm, caplog, monkeypatch):
    monkeypatch.setattr(P, "LOG_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="specnmf.progress"):
        m = _fit(*data, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "specnmf.progress"]
    assert len(lines) == 7
    assert "iteration 7/7" in lines[-1] and f"objective {m.objective_[-1]:.6g}" in lines[-1]
    assert "ETA" in lines[0]


def test_log_fallback_is_throttled_but_logs_the_end(data, no_tqdm, caplog, monkeypatch):
    monkeypatch.setattr(P, "LOG_INTERVAL", 1e9)
    with caplog.at_level(logging.INFO, logger="specnmf.progress"):
        _fit(*data, progress=True, max_iter=50)
    lines = [r.getMessage() for r in caplog.records if r.name == "specnmf.progress"]
    assert len(lines) == 2
    assert "iteration 1/50" in lines[0] and "iteration 50/50" in lines[1]


def test_log_fallback_prints_when_logging_is_not_set_up(data, no_tqdm, capsys):
    log = logging.getLogger("specnmf.progress")
    before = (log.level, log.propagate, list(log.handlers))
    _fit(*data, progress=True)
    assert "iteration 7/7" in capsys.readouterr().err
    assert (log.level, log.propagate, list(log.handlers)) == before  # restored


def test_text_bar_on_a_terminal_without_tqdm(data, no_tqdm, monkeypatch):
    stream = io.StringIO()
    stream.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", stream)
    _fit(*data, progress=True)
    text = stream.getvalue()
    assert "iter 1/7" in text  # the first draw; later ones are throttled to 10 per second
    assert text.endswith("\r\x1b[K")  # the bar is cleared at the end


def test_no_output_when_off(data, capsys, caplog):
    with caplog.at_level(logging.DEBUG, logger="specnmf"):
        _fit(*data)
    assert capsys.readouterr().err == ""
    assert not [r for r in caplog.records if r.name == "specnmf.progress"]


def test_callback_still_runs_and_stops_the_fit(data, no_tqdm, caplog):
    seen = []

    def stop_at_3(it, C, T, terms):
        seen.append(it)
        return it == 3

    with caplog.at_level(logging.INFO, logger="specnmf.progress"):
        m = SpectralNMF(2, solver="anls", random_state=0, max_iter=20, tol=0,
                        progress=True).fit(*data[:1], ivar=data[1], callback=stop_at_3)
    assert seen == [1, 2, 3] and m.n_iter_ == 3
    assert "iteration 3/20" in caplog.records[-1].getMessage()


def test_progress_is_checked():
    with pytest.raises(TypeError, match="progress"):
        SpectralNMF(2, progress="yes").fit(np.ones((3, 4)))
    assert SpectralNMF(2, progress=True).get_params()["progress"] is True
