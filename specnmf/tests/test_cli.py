"""The ``specnmf`` command, run in-process through ``main([...])``."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import specnmf
from specnmf import cli
from specnmf import io as sio

from .conftest import make_toy

pytest.importorskip("astropy")

SUBCOMMANDS = ["fit", "transform", "plot", "info", "cv", "demo", "pack"]


@pytest.fixture
def spectra_file(tmp_path):
    X, ivar, _ = make_toy(n=24, d=18, k=2, seed=11)
    path = tmp_path / "spectra.fits"
    sio.write_spectra(path, X, ivar=ivar, wavelength=np.linspace(4000.0, 5000.0, 18),
                      meta={"OBJECT": "toy field"})
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, expected_code=2, match=None):
    assert code == expected_code
    lines = [line for line in err.splitlines() if line.startswith("specnmf: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    if match is not None:
        assert match in lines[0], lines[0]


def test_python_m_specnmf_help_runs_as_a_program():
    proc = subprocess.run([sys.executable, "-m", "specnmf", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert name in proc.stdout
    assert "example" in proc.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "example:" in out and f"specnmf {command}" in out


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and specnmf.__version__ in out


def test_fit_transform_info_plot_pipeline(tmp_path, spectra_file, capsys):
    model_path = tmp_path / "model.fits"
    code, out, err = run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 300,
                         "--random-state", 0, "-o", model_path)
    assert code == 0, err
    assert "iterations:" in out and "chi2 start / end:" in out and "reduced chi2:" in out
    assert "Traceback" not in err
    model = specnmf.io.load_model(model_path)
    assert model.templates_.shape == (2, 18)
    assert model.max_iter == 300 and model.random_state == 0
    assert np.array_equal(model.wavelength_, np.linspace(4000.0, 5000.0, 18))
    assert model.meta_["OBJECT"] == "toy field"  # the input header travels with the model

    coeffs = tmp_path / "coeffs.fits"
    code, out, err = run(capsys, "transform", model_path, spectra_file, "-o", coeffs)
    assert code == 0, err
    from astropy.io import fits

    s = sio.read_spectra(spectra_file)
    with fits.open(coeffs) as hdul:
        assert np.allclose(hdul["COEFFICIENTS"].data, model.transform(s.flux, ivar=s.ivar))
        assert np.allclose(hdul["CHI2"].data,
                           specnmf.chi2_per_spectrum(s.flux, hdul["COEFFICIENTS"].data,
                                                     model.templates_, ivar=s.ivar))

    code, out, err = run(capsys, "info", model_path)
    assert code == 0, err
    assert "2 x 18 pixels" in out and f"iterations:       {model.n_iter_}" in out
    assert f"{model.chi2_[-1]:.6g}" in out and "max_iter = 300" in out

    pytest.importorskip("matplotlib")
    png = tmp_path / "templates.png"
    code, out, err = run(capsys, "plot", model_path, "-o", png)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_to_npz_and_transform_to_csv(tmp_path, spectra_file, capsys):
    model_path = tmp_path / "model.npz"
    assert run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 50, "--tol", 0,
               "-o", model_path)[0] == 0
    assert specnmf.io.load_model(model_path).n_iter_ == 50
    csv = tmp_path / "coeffs.csv"
    code, _, err = run(capsys, "transform", model_path, spectra_file, "-o", csv)
    assert code == 0, err
    table = np.loadtxt(csv, delimiter=",", skiprows=1)
    assert table.shape == (24, 3)  # c0, c1, chi2
    assert open(csv).readline().strip() == "c0,c1,chi2"


@pytest.mark.parametrize("name", ["s.fits", "s.h5"])
def test_fit_streamed_from_disk_matches_the_in_memory_fit(tmp_path, capsys, name):
    if name.endswith("h5"):
        pytest.importorskip("h5py")
    X, ivar, _ = make_toy(n=40, d=16, k=2, seed=12)
    sio.write_spectra(tmp_path / name, X, ivar=ivar)
    common = ["-k", 2, "--max-iter", 30, "--tol", 0, "--random-state", 1, "--block-size", 8, "-q"]
    assert run(capsys, "fit", tmp_path / name, "--memmap", "-o", tmp_path / "a.npz", *common)[0] == 0
    assert run(capsys, "fit", tmp_path / name, "-o", tmp_path / "b.npz", *common)[0] == 0
    a, b = (specnmf.io.load_model(tmp_path / f) for f in ("a.npz", "b.npz"))
    assert np.allclose(a.templates_, b.templates_, rtol=1e-10, atol=1e-12)


def test_transform_with_uncertainty(tmp_path, spectra_file, capsys):
    import inspect

    from specnmf import SpectralNMF

    if "return_uncertainty" not in inspect.signature(SpectralNMF.transform).parameters:
        pytest.skip("SpectralNMF.transform has no return_uncertainty yet")
    model_path = tmp_path / "model.fits"
    assert run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 50, "-o", model_path)[0] == 0
    out = tmp_path / "c.npz"
    code, _, err = run(capsys, "transform", model_path, spectra_file, "-o", out, "--uncertainty")
    assert code == 0, err
    with np.load(out, allow_pickle=False) as data:
        assert data["sigma"].shape == data["coefficients"].shape == (24, 2)
        assert np.all(data["sigma"] > 0)


def test_outputs_are_never_overwritten_without_the_flag(tmp_path, spectra_file, capsys):
    model_path = tmp_path / "model.fits"
    model_path.write_bytes(b"precious")
    code, _, err = run(capsys, "fit", spectra_file, "-k", 2, "-o", model_path)
    assert_one_line_error(code, err, match="--overwrite")
    assert model_path.read_bytes() == b"precious"
    code, _, err = run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 20, "-o", model_path,
                       "--overwrite")
    assert code == 0, err
    png = tmp_path / "t.png"
    png.write_bytes(b"keep")
    code, _, err = run(capsys, "plot", model_path, "-o", png)
    assert_one_line_error(code, err, match="exists")
    assert png.read_bytes() == b"keep"
    coeffs = tmp_path / "c.fits"
    coeffs.write_bytes(b"keep")
    code, _, err = run(capsys, "transform", model_path, spectra_file, "-o", coeffs)
    assert_one_line_error(code, err, match="exists")


@pytest.mark.parametrize("argv,match", [
    (["fit", "{missing}", "-k", "2", "-o", "{out}"], "no such file"),
    (["fit", "{spectra}", "-o", "{out}"], "-k/--n-components"),
    (["fit", "{spectra}", "-k", "two", "-o", "{out}"], "invalid int value"),
    (["fit", "{spectra}", "-k", "0", "-o", "{out}"], "n_components"),
    (["fit", "{spectra}", "-k", "99", "-o", "{out}"], "n_components"),
    (["fit", "{spectra}", "-k", "2", "--solver", "magic", "-o", "{out}"], "solver"),
    (["fit", "{spectra}", "-k", "2", "--tol", "-1", "-o", "{out}"], "tol"),
    (["fit", "{spectra}", "-k", "2", "--dtype", "float16", "-o", "{out}"], "dtype"),
    (["fit", "{bad_shape}", "-k", "2", "-o", "{out}"], "IVAR has shape"),
    (["fit", "{spectra}", "-k", "2", "-o", "{nodir}"], "does not exist"),
    (["fit", "{spectra}", "-k", "2", "-o", "{out}", "--hdu", "NOPE"], "NOPE"),
    (["info", "{spectra}"], "not a specnmf model"),
    (["info", "{missing}"], "no such file"),
    (["transform", "{spectra}", "{spectra}", "-o", "{out}"], "not a specnmf model"),
    (["cv", "{spectra}", "--candidates", "3-1"], "candidates"),
    (["cv", "{spectra}", "--candidates", "1-99"], "candidates"),
    (["cv", "{spectra}", "--holdout", "2"], "holdout"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, spectra_file, capsys, argv, match):
    bad = tmp_path / "bad.npz"
    np.savez(bad, flux=np.ones((4, 5)), ivar=np.ones((4, 6)))
    names = {"missing": tmp_path / "missing.fits", "spectra": spectra_file, "out": tmp_path / "o.fits",
             "bad_shape": bad, "nodir": tmp_path / "no" / "such" / "dir" / "m.fits"}
    code, out, err = run(capsys, *(a.format(**names) for a in argv))
    assert_one_line_error(code, err, match=match)
    assert not (tmp_path / "o.fits").exists()


def test_option_unknown_to_the_installed_estimator_is_an_error_not_ignored(
        tmp_path, spectra_file, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_accepted_params", lambda: {"n_components", "max_iter"})
    code, _, err = run(capsys, "fit", spectra_file, "-k", 2, "--smoothness", 1.0,
                       "-o", tmp_path / "m.fits")
    assert_one_line_error(code, err, match="--smoothness")


def test_runtime_failure_gives_exit_code_1_without_traceback(tmp_path, spectra_file, capsys,
                                                           monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("solver diverged")

    monkeypatch.setattr(cli, "_fit", explode)
    code, _, err = run(capsys, "fit", spectra_file, "-k", 2, "-o", tmp_path / "m.fits")
    assert_one_line_error(code, err, expected_code=1, match="solver diverged")


def test_quiet_silences_diagnostics_and_verbose_adds_them(tmp_path, spectra_file, capsys):
    code, out, err = run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 20, "--tol", 0,
                         "-o", tmp_path / "a.fits", "--quiet")
    assert code == 0 and err == ""
    assert "iterations:" in out  # the result still goes to stdout
    code, out, err = run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 20, "--tol", 0,
                         "-o", tmp_path / "b.fits", "-v")
    assert code == 0
    assert "iteration 10" in err and "iteration 10" not in out


def test_convergence_warning_is_one_log_line(tmp_path, spectra_file, capsys):
    code, _, err = run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 2,
                       "-o", tmp_path / "m.fits")
    assert code == 0
    warning_lines = [line for line in err.splitlines() if "stopped at max_iter" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("specnmf: warning:")


def test_cv_prints_a_table_and_the_best_candidate(tmp_path, spectra_file, capsys):
    code, out, err = run(capsys, "cv", spectra_file, "--candidates", "1-3", "--max-iter", 200,
                         "--random-state", 0, "-q")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert "best n_components =" in out
    assert sum(line.endswith("*") for line in out.splitlines()) == 1


def test_candidates_parser():
    assert cli._parse_candidates("1-4") == [1, 2, 3, 4]
    assert cli._parse_candidates("2,5, 3") == [2, 3, 5]
    assert cli._parse_candidates("1-2,6") == [1, 2, 6]


def test_progress_bar_draws_iteration_chi2_and_eta():
    stream = io.StringIO()
    bar = cli._ProgressBar(100, stream)
    bar.update(0, 10.0, force=True)
    bar.update(50, 1.5, force=True)
    text = stream.getvalue()
    assert "iter 50/100" in text and "chi2 1.5" in text and "ETA" in text
    assert "#" * 12 in text
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, spectra_file, capsys):
    code, _, err = run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 30, "--tol", 0,
                       "-o", tmp_path / "m.fits")
    assert code == 0 and "\r" not in err and "ETA" not in err


def test_progress_bar_follows_the_fit(tmp_path, spectra_file, capsys, monkeypatch):
    # pretend stderr is a terminal: the bar is drawn there, never on stdout
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 40, "--tol", 0,
                         "-o", tmp_path / "m.fits")
    assert code == 0
    assert "iter " in err and "/40" in err and "ETA" in err
    assert "ETA" not in out


def test_logging_state_is_restored_after_main(tmp_path, spectra_file, capsys):
    import logging

    logger = logging.getLogger("specnmf")
    before = (list(logger.handlers), logger.level, logger.propagate)
    run(capsys, "info", tmp_path / "missing.fits")
    run(capsys, "fit", spectra_file, "-k", 2, "--max-iter", 5, "-o", tmp_path / "m.fits")
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_demo_writes_model_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "-o", out_dir)
    assert code == 0, err
    assert "iterations:" in out and "chi2 start / end:" in out and "reduced chi2:" in out
    assert "template offsets" in out
    model = specnmf.io.load_model(out_dir / "doublet_model.fits")
    assert model.templates_.shape == (2, 510) and model.solver == "nearly"
    assert model.chi2_[-1] < model.chi2_[0]
    assert (out_dir / "doublet_templates.png").read_bytes()[:4] == b"\x89PNG"
    # the paper's result: Nearly-NMF templates have no offset where the truth is 0,
    # the clipping baseline has a positive one
    line = next(line for line in out.splitlines() if line.strip().startswith("Nearly-NMF:"))
    nearly = [float(v) for v in line.split(":", 1)[1].split(",")]
    line = next(line for line in out.splitlines() if line.strip().startswith("clipped NMF:"))
    clipped = [float(v) for v in line.split(":", 1)[1].split("(")[0].split(",")]
    assert max(abs(v) for v in nearly) < 0.005 < max(clipped)
    assert sorted(os.listdir(out_dir)) == ["doublet_model.fits", "doublet_templates.png"]
    # a second run does not overwrite the files (and stops before fitting)
    before = (out_dir / "doublet_model.fits").stat().st_mtime_ns
    code, _, err = run(capsys, "demo", "-o", out_dir)
    assert_one_line_error(code, err, match="--overwrite")
    assert (out_dir / "doublet_model.fits").stat().st_mtime_ns == before


# -- IFU cubes -----------------------------------------------------------------
def test_fit_a_cube_writes_model_and_maps_with_the_celestial_wcs(tmp_path, capsys):
    from astropy.wcs import WCS

    from specnmf.datasets import load_muse_crop, muse_crop_path
    from specnmf.ifu import read_maps

    crop = muse_crop_path()  # a real MUSE cube, ESO DATA/STAT/DQ layout
    model_path = tmp_path / "m.fits"
    code, out, err = run(capsys, "fit", crop, "-k", "3", "-o", model_path, "--solver", "anls",
                         "--max-iter", "20", "--random-state", "0")
    assert code == 0, err
    maps_path = tmp_path / "m_maps.fits"
    assert "cube of 12 x 12 spaxels x 512 wavelengths" in out and str(maps_path) in out
    maps, header = read_maps(maps_path)
    assert maps.shape == (12, 12, 3) and header["COMP0"] == "component 0"
    cube = load_muse_crop()
    ra_dec = WCS(header).celestial.pixel_to_world_values([0, 11], [0, 5])
    np.testing.assert_allclose(ra_dec, WCS(cube.header).celestial.pixel_to_world_values([0, 11], [0, 5]))
    model = specnmf.load(model_path)
    assert tuple(model.spatial_shape_) == (12, 12)
    np.testing.assert_allclose(model.wavelength_, cube.wavelength)
    from specnmf.ifu import coefficient_maps

    np.testing.assert_allclose(coefficient_maps(model), maps)

    # transform of a cube: maps with the WCS, and a chi^2 map
    out_path = tmp_path / "t.fits"
    code, out, err = run(capsys, "transform", model_path, crop, "-o", out_path)
    assert code == 0, err
    from astropy.io import fits

    with fits.open(out_path) as h:
        assert h[0].data.shape == (3, 12, 12) and h["CHI2"].data.shape == (12, 12)
        assert WCS(h["CHI2"].header).has_celestial
        # exact NNLS for the final templates vs the fit's last coefficient update
        np.testing.assert_allclose(np.moveaxis(h[0].data, 0, -1), maps, rtol=1e-2)

    # an explicit --maps path; --maps with spectra is an error
    code, _, err = run(capsys, "fit", crop, "-k", "2", "-o", tmp_path / "n.npz", "--maps",
                       tmp_path / "custom.fits", "--solver", "anls", "--max-iter", "3")
    assert code == 0, err and (tmp_path / "custom.fits").exists()
    code, _, err = run(capsys, "fit", crop, "-k", "2", "-o", tmp_path / "n2.npz", "--maps",
                       tmp_path / "custom.png")
    assert_one_line_error(code, err, match="written as FITS")


def test_maps_option_needs_a_cube(tmp_path, spectra_file, capsys):
    code, _, err = run(capsys, "fit", spectra_file, "-k", "2", "-o", tmp_path / "m.fits",
                       "--maps", tmp_path / "maps.fits")
    assert_one_line_error(code, err, match="--maps needs an IFU cube")


def test_fit_a_survey_file(tmp_path, capsys):
    # SDSS layout, written in the test: the CLI reads it through the named loader
    from .test_readers import write_sdss

    path = tmp_path / "spec-0001-51000-0001.fits"
    write_sdss(path)
    code, out, err = run(capsys, "fit", path, "-k", "1", "-o", tmp_path / "m.fits",
                         "--max-iter", "5")
    assert code == 0, err
    assert "1 spectra x 50 pixels" in out
