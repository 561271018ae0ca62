"""IFU cubes: cube <-> matrix reshaping, masks, maps, reconstructions, FITS with WCS."""

import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specnmf import SpectralNMF
from specnmf.datasets import make_ifu_cube
from specnmf.ifu import (
    coefficient_maps,
    cube_to_matrix,
    fit_cube,
    matrix_to_cube,
    reconstruct_cube,
)

HAS_SPATIAL_SHAPE = "spatial_shape" in inspect.signature(SpectralNMF.fit).parameters
needs_spatial_shape = pytest.mark.skipif(
    not HAS_SPATIAL_SHAPE, reason="SpectralNMF.fit does not take spatial_shape= yet")

shapes = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 6))


@given(shapes, st.integers(0, 2**32 - 1))
def test_cube_matrix_round_trip_both_axis_orders(shape, seed):
    ny, nx, n_wave = shape
    cube = np.random.default_rng(seed).normal(size=shape)
    X, ivar, spatial_shape = cube_to_matrix(cube)
    assert X.shape == (ny * nx, n_wave) and spatial_shape == (ny, nx)
    assert np.array_equal(matrix_to_cube(X, spatial_shape), cube)

    fits_order = np.moveaxis(cube, -1, 0)
    X0, _, shape0 = cube_to_matrix(fits_order, wave_axis=0)
    assert np.array_equal(X0, X) and shape0 == (ny, nx)
    assert np.array_equal(matrix_to_cube(X0, shape0, wave_axis=0), fits_order)


def test_rows_are_spaxels_in_c_order():
    cube = np.random.default_rng(1).normal(size=(3, 4, 5))
    X, _, _ = cube_to_matrix(cube)
    for y in range(3):
        for x in range(4):
            assert np.array_equal(X[y * 4 + x], cube[y, x])


def test_negative_flux_kept_and_caller_arrays_untouched():
    cube = np.random.default_rng(2).normal(size=(2, 3, 4))
    cube[0, 0, 0] = np.nan
    ivar = np.full(cube.shape, 2.0)
    mask = np.zeros(cube.shape, dtype=bool)
    mask[1, 2, 3] = True
    before = cube.copy(), ivar.copy(), mask.copy()
    X, w, _ = cube_to_matrix(cube, ivar=ivar, mask=mask)
    assert np.array_equal(cube, before[0], equal_nan=True)
    assert np.array_equal(ivar, before[1]) and np.array_equal(mask, before[2])
    assert X.min() < 0
    assert not np.shares_memory(X, cube) and not np.shares_memory(w, ivar)


def test_nan_flux_and_mask_give_zero_ivar():
    rng = np.random.default_rng(3)
    cube = rng.normal(size=(3, 3, 6))
    ivar = rng.uniform(1, 2, size=cube.shape)
    cube[1, 1, 2] = np.nan
    cube[0, 2, 5] = np.inf
    mask = np.zeros(cube.shape, dtype=np.int16)
    mask[2, 0, 0] = 4   # any non-zero bit is bad, even where ivar > 0
    X, w, _ = cube_to_matrix(cube, ivar=ivar, mask=mask)
    assert np.all(np.isfinite(X))
    assert w[1 * 3 + 1, 2] == 0 and X[1 * 3 + 1, 2] == 0
    assert w[0 * 3 + 2, 5] == 0
    assert w[2 * 3 + 0, 0] == 0 and X[2 * 3 + 0, 0] == cube[2, 0, 0]   # masked flux kept
    assert np.count_nonzero(w == 0) == 3
    good = np.ones(cube.shape, dtype=bool)
    good[1, 1, 2] = good[0, 2, 5] = good[2, 0, 0] = False
    assert np.array_equal(w.reshape(cube.shape)[good], ivar[good])


def test_mask_in_fits_order_masks_the_same_pixel():
    cube = np.ones((5, 2, 3))   # (n_wave, ny, nx)
    mask = np.zeros(cube.shape, dtype=bool)
    mask[4, 1, 0] = True        # wavelength 4 of spaxel y=1, x=0
    _, w, shape = cube_to_matrix(cube, mask=mask, wave_axis=0)
    assert shape == (2, 3)
    assert w[1 * 3 + 0, 4] == 0 and w.sum() == w.size - 1


def test_float32_is_kept_other_types_become_float64():
    assert cube_to_matrix(np.ones((2, 2, 3), np.float32))[0].dtype == np.float32
    assert cube_to_matrix(np.ones((2, 2, 3), np.int64))[0].dtype == np.float64


def test_maps_and_reconstruction_components_sum_to_full_model():
    rng = np.random.default_rng(4)
    ny, nx, k, n_wave = 3, 4, 3, 7
    C = rng.uniform(size=(ny * nx, k))
    T = rng.uniform(size=(k, n_wave))
    maps = coefficient_maps(C, (ny, nx))
    assert maps.shape == (ny, nx, k)
    assert maps[2, 1, 0] == C[2 * nx + 1, 0]

    full = reconstruct_cube(C, T, (ny, nx))
    assert full.shape == (ny, nx, n_wave)
    assert np.allclose(full[1, 3], C[1 * nx + 3] @ T)
    parts = [reconstruct_cube(C, T, (ny, nx), component=j) for j in range(k)]
    assert np.allclose(sum(parts), full)
    assert np.allclose(parts[1][0, 0], C[0, 1] * T[1])
    assert reconstruct_cube(C, T, (ny, nx), wave_axis=0).shape == (n_wave, ny, nx)


def test_maps_accept_a_fitted_model():
    class Fitted:
        coefficients_ = np.arange(12.0).reshape(6, 2)

    assert np.array_equal(coefficient_maps(Fitted(), (2, 3))[..., 1],
                          [[1.0, 3.0, 5.0], [7.0, 9.0, 11.0]])


@pytest.mark.parametrize("call, name", [
    (lambda: cube_to_matrix(np.ones((3, 4))), "cube"),
    (lambda: cube_to_matrix(np.ones((2, 3, 4, 5))), "cube"),
    (lambda: cube_to_matrix(np.ones((2, 3, 4)), ivar=np.ones((2, 3, 5))), "ivar"),
    (lambda: cube_to_matrix(np.ones((2, 3, 4)), mask=np.zeros((3, 2, 4))), "mask"),
    (lambda: cube_to_matrix(np.ones((2, 3, 4)), ivar=-np.ones((2, 3, 4))), "ivar"),
    (lambda: cube_to_matrix(np.ones((2, 3, 4)), ivar=np.full((2, 3, 4), np.nan)), "ivar"),
    (lambda: cube_to_matrix(np.ones((2, 3, 4)), wave_axis=1), "wave_axis"),
    (lambda: matrix_to_cube(np.ones((5, 4)), (2, 3)), "M"),
    (lambda: matrix_to_cube(np.ones((6, 4)), (2, -3)), "spatial_shape"),
    (lambda: coefficient_maps(np.ones((7, 2)), (2, 3)), "coefficients"),
    (lambda: reconstruct_cube(np.ones((6, 2)), np.ones((3, 4)), (2, 3)), "templates"),
    (lambda: reconstruct_cube(np.ones((6, 2)), np.ones((2, 4)), (2, 3), component=2),
     "component"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_non_numeric_cube_is_a_type_error():
    with pytest.raises(TypeError, match="cube"):
        cube_to_matrix(np.full((2, 2, 2), "a"))


def test_fit_cube_passes_spatial_shape_and_wavelength():
    class Recorder:
        def fit(self, X, ivar=None, **kwargs):
            self.args = (X, ivar, kwargs)
            return self

    cube = np.random.default_rng(5).normal(size=(4, 2, 3))   # FITS order
    wave = np.array([1.0, 2.0, 3.0, 4.0])
    model = fit_cube(Recorder(), cube, wavelength=wave, wave_axis=0)
    X, ivar, kwargs = model.args
    assert X.shape == (6, 4) and np.all(ivar == 1)
    assert kwargs["spatial_shape"] == (2, 3)
    assert np.array_equal(kwargs["wavelength"], wave)
    with pytest.raises(ValueError, match="wavelength"):
        fit_cube(Recorder(), cube, wavelength=wave[:3], wave_axis=0)


@needs_spatial_shape
@pytest.mark.filterwarnings("ignore::specnmf.ConvergenceWarning")
def test_fit_cube_recovers_the_simulated_maps():
    sim = make_ifu_cube(8, 8, 60, snr=20.0, random_state=0)
    model = SpectralNMF(3, solver="nearly", init="nndsvda", max_iter=300, random_state=0)
    fit_cube(model, sim.cube, ivar=sim.ivar, wavelength=sim.wavelength)
    maps = coefficient_maps(model, (8, 8))
    # each true map is matched by one fitted map (correlation across spaxels)
    true = sim.maps.reshape(-1, 3)
    fitted = maps.reshape(-1, 3)
    corr = np.corrcoef(true.T, fitted.T)[:3, 3:]
    assert np.all(corr.max(axis=1) > 0.9)


def test_simulated_cube_has_known_truth_and_negative_pixels():
    sim = make_ifu_cube(6, 7, 40, snr=3.0, random_state=1)
    assert sim.cube.shape == sim.ivar.shape == sim.truth.shape == (6, 7, 40)
    assert sim.templates.shape == (3, 40) and sim.maps.shape == (6, 7, 3)
    assert np.all(sim.templates >= 0) and np.all(sim.maps >= 0)
    assert np.allclose(sim.truth, sim.maps @ sim.templates)
    assert (sim.cube < 0).any()
    assert np.all(sim.ivar > 0)
    again = make_ifu_cube(6, 7, 40, snr=3.0, random_state=1)
    assert np.array_equal(again.cube, sim.cube)
    with pytest.raises(ValueError, match="snr"):
        make_ifu_cube(snr=0)


# -- FITS --------------------------------------------------------------------
def _cube_header(ny, nx, n_wave):
    fits = pytest.importorskip("astropy.io.fits")
    h = fits.Header()
    for key, value in [("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CTYPE3", "WAVE"),
                       ("CUNIT1", "deg"), ("CUNIT2", "deg"), ("CUNIT3", "Angstrom"),
                       ("CRVAL1", 150.1), ("CRVAL2", 2.2), ("CRVAL3", 4500.0),
                       ("CRPIX1", (nx + 1) / 2), ("CRPIX2", (ny + 1) / 2), ("CRPIX3", 1.0),
                       ("CDELT1", -1e-4), ("CDELT2", 1e-4), ("CDELT3", 2.5),
                       ("BUNIT", "1e-17 erg/s/cm2/Angstrom"), ("OBJECT", "toy galaxy")]:
        h[key] = value
    return h


def test_fits_cube_round_trip_carries_wcs_ivar_and_mask(tmp_path):
    pytest.importorskip("astropy")
    from astropy.io import fits
    from astropy.wcs import WCS

    from specnmf.ifu import read_cube, write_cube

    rng = np.random.default_rng(6)
    ny, nx, n_wave = 4, 5, 12
    cube = rng.normal(size=(ny, nx, n_wave))
    ivar = rng.uniform(1, 2, size=cube.shape)
    mask = np.zeros(cube.shape, dtype=np.int32)
    mask[0, 1, 2] = 1
    header = _cube_header(ny, nx, n_wave)
    path = tmp_path / "cube.fits"
    write_cube(path, cube, header, ivar=ivar, mask=mask)

    with fits.open(path) as hdul:   # stored in the FITS order
        assert hdul[0].data.shape == (n_wave, ny, nx)
    got = read_cube(path)
    assert np.array_equal(got.cube, cube)
    assert np.array_equal(got.ivar, ivar) and np.array_equal(got.mask, mask)
    assert got.header["OBJECT"] == "toy galaxy"
    assert np.allclose(got.wavelength, 4500.0 + 2.5 * np.arange(n_wave))
    assert WCS(got.header).celestial.wcs.compare(WCS(header).celestial.wcs)


def test_maps_fits_carry_only_the_celestial_wcs(tmp_path):
    pytest.importorskip("astropy")
    from astropy.wcs import WCS

    from specnmf.ifu import read_maps, spectral_header, write_maps

    ny, nx = 4, 5
    header = _cube_header(ny, nx, 12)
    maps = np.random.default_rng(7).uniform(size=(ny, nx, 3))
    path = tmp_path / "maps.fits"
    write_maps(path, maps, header, names=["blue", "red", "gas"])
    got, got_header = read_maps(path)
    assert np.array_equal(got, maps)
    assert got_header["COMP2"] == "gas"
    w = WCS(got_header)
    assert not w.has_spectral
    cel_in, cel_out = WCS(header).celestial, w.celestial
    # the same sky position for every spaxel of the maps as of the cube
    ra_in, dec_in = cel_in.pixel_to_world_values(np.arange(nx), np.arange(nx) % ny)
    ra_out, dec_out = cel_out.pixel_to_world_values(np.arange(nx), np.arange(nx) % ny)
    assert np.allclose(ra_in, ra_out) and np.allclose(dec_in, dec_out)

    spec = WCS(spectral_header(header))
    assert spec.naxis == 1 and spec.has_spectral and not spec.has_celestial


def test_fits_reader_rejects_a_2d_image(tmp_path):
    fits = pytest.importorskip("astropy.io.fits")
    from specnmf.ifu import read_cube

    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.ones((3, 4))).writeto(path)
    with pytest.raises(ValueError, match="3-D"):
        read_cube(path)


@pytest.mark.slow
@needs_spatial_shape
@pytest.mark.filterwarnings("ignore::specnmf.ConvergenceWarning")
def test_ifu_demo_spatial_penalty_improves_noisy_maps(tmp_path):
    pytest.importorskip("matplotlib")
    import json
    import runpy
    from pathlib import Path

    script = Path(__file__).parents[2] / "examples" / "ifu_demo.py"
    if not script.exists():
        pytest.skip("examples/ not shipped with this installation")
    main = runpy.run_path(str(script))["main"]
    summary = main(["--ny", "12", "--nx", "12", "--n-wave", "60", "--snr", "0.3",
                    "--spatial", "0.1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "ifu_demo.json").read_text()) == summary
    assert (tmp_path / "ifu_maps.png").stat().st_size > 0
    assert summary["negative_pixel_fraction"] > 0.1
    plain = summary["fits"]["plain"]
    # even at snr 0.3 per pixel the component spectra are recovered (lines least well)
    assert all(r > 0.8 for r in plain["template_correlation"].values())
    if "spatial" not in summary["fits"]:
        pytest.skip("SpectralNMF has no spatial parameter yet")
    assert summary["fits"]["spatial"]["mean_map_error"] < plain["mean_map_error"]


def test_cube_header_travels_to_the_saved_model(tmp_path):
    # the spectral WCS of the cube ends up on the templates of the saved model
    pytest.importorskip("astropy")
    from astropy.io import fits

    from specnmf import SpectralNMF, load
    from specnmf.datasets import make_ifu_cube
    from specnmf.ifu import fit_cube

    sim = make_ifu_cube(6, 5, 40, random_state=0)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"], header["CTYPE3"] = "RA---TAN", "DEC--TAN", "WAVE"
    header["CRVAL3"], header["CDELT3"], header["CRPIX3"], header["CUNIT3"] = 5000.0, 2.0, 1.0, "Angstrom"
    model = fit_cube(SpectralNMF(2, solver="anls", max_iter=5, tol=0, random_state=0),
                     sim.cube, ivar=sim.ivar, header=header)
    np.testing.assert_allclose(model.wavelength_, 5000.0 + 2.0 * np.arange(40))
    model.save(tmp_path / "m.fits")
    back = load(tmp_path / "m.fits")
    saved = fits.Header(list(dict(back.header_).items()))
    assert saved["CTYPE1"] == "WAVE"              # the spectral axis, now axis 1 of the templates
    from specnmf.ifu import wavelength_from_header

    np.testing.assert_allclose(wavelength_from_header(saved, 40), model.wavelength_)
    np.testing.assert_allclose(back.wavelength_, model.wavelength_)


# -- real layouts: ESO/MUSE DATA/STAT/DQ, MaNGA FLUX/IVAR/MASK ---------------------
def _shared(*parts):
    import os
    from pathlib import Path

    for root in (os.environ.get("SPECNMF_SHARED_DATA"),
                 Path(__file__).resolve().parents[2].parent / "shared" / "data"):
        if root and Path(root, *parts).exists():
            return str(Path(root, *parts))
    pytest.skip(f"shared/data/{'/'.join(parts)} not available")


def _write_eso(path, *, err_class=None, err_name="STAT", qual_class=None, pointers=True,
               variance=True):
    """A cube in the ESO DICD layout, big-endian as FITS stores it."""
    from astropy.io import fits

    rng = np.random.default_rng(8)
    n_wave, ny, nx = 10, 3, 4
    flux = rng.normal(2, 1, (n_wave, ny, nx)).astype(">f4")
    flux[4, 1, 2] = np.nan
    var = rng.uniform(0.5, 2, flux.shape).astype(">f4")
    var[2, 0, 0] = 0           # unknown error: missing
    var[3, 0, 1] = -1
    dq = np.zeros(flux.shape, dtype=np.uint8)
    dq[5, 2, 3] = 4
    header = _cube_header(ny, nx, n_wave)
    header["CTYPE3"] = "AWAV"
    header["HDUCLASS"], header["HDUCLAS2"] = "ESO", "DATA"
    if pointers:
        header["ERRDATA"] = err_name
        header["QUALDATA"] = "DQ"
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(flux, header=header, name="DATA")]
    stored = {"MSE": var, "RMSE": np.sqrt(np.abs(var)) * np.sign(var), None: var}[err_class]
    if variance:
        e = fits.ImageHDU(stored.astype(">f4"), name=err_name)
        if err_class:
            e.header["HDUCLAS2"], e.header["HDUCLAS3"] = "ERROR", err_class
        hdus.append(e)
    q = fits.ImageHDU(dq if qual_class != "MASKZERO" else (dq == 0).astype(np.uint8), name="DQ")
    if qual_class:
        q.header["HDUCLAS2"], q.header["HDUCLAS3"] = "QUALITY", qual_class
    hdus.append(q)
    fits.HDUList(hdus).writeto(path)
    return flux, var, dq


@pytest.mark.parametrize("err_class,err_name,qual_class,pointers", [
    (None, "STAT", None, True),          # MUSE: ERRDATA = 'STAT', STAT holds the variance
    ("MSE", "ERRS", None, True),         # the pointer names an unusual extension
    ("RMSE", "ERRS", "FLAG32BIT", True),  # HDUCLAS3 says standard deviation
    (None, "STAT", "MASKZERO", False),   # no pointers: found by name; 0 = bad quality
])
def test_eso_cube_variance_and_quality_are_honoured(tmp_path, err_class, err_name, qual_class,
                                                    pointers):
    pytest.importorskip("astropy")
    from specnmf.ifu import read_cube

    path = tmp_path / "eso.fits"
    flux, var, _ = _write_eso(path, err_class=err_class, err_name=err_name,
                               qual_class=qual_class, pointers=pointers)
    c = read_cube(path)
    wave_last = lambda a: np.moveaxis(np.asarray(a, dtype=np.float64), 0, -1)  # noqa: E731
    v = wave_last(var)
    expected = np.where((v > 0) & np.isfinite(wave_last(flux)), 1 / np.where(v > 0, v, 1), 0)
    assert c.cube.dtype.isnative and c.ivar.dtype.isnative
    np.testing.assert_allclose(c.ivar, expected, rtol=1e-6)
    assert c.ivar[1, 2, 4] == 0                       # NaN flux
    assert c.mask[2, 3, 5] != 0 and np.count_nonzero(c.mask) == 1
    assert c.format == "eso" and c.medium == "air"
    X, ivar, _ = cube_to_matrix(c.cube, ivar=c.ivar, mask=c.mask)
    assert ivar[2 * 4 + 3, 5] == 0 and np.all(np.isfinite(X))


def test_cube_without_variance_warns(tmp_path):
    pytest.importorskip("astropy")
    from specnmf.ifu import read_cube

    path = tmp_path / "novar.fits"
    _write_eso(path, variance=False, pointers=False)
    with pytest.warns(UserWarning, match="no variance"):
        c = read_cube(path)
    assert c.ivar is None


def test_manga_style_cube_with_wave_extension_and_bad_bits(tmp_path):
    pytest.importorskip("astropy")
    from astropy.io import fits

    from specnmf.ifu import read_cube

    rng = np.random.default_rng(9)
    n_wave, ny, nx = 8, 2, 3
    flux = rng.normal(1, 1, (n_wave, ny, nx)).astype(">f4")
    ivar = rng.uniform(1, 3, flux.shape).astype(">f4")
    mask = np.zeros(flux.shape, dtype=">i4")
    mask[1, 0, 0] = 1 << 10   # DONOTUSE
    mask[2, 0, 1] = 1 << 1    # LOWCOV
    wave = np.geomspace(3600, 3700, n_wave)
    header = fits.Header()
    header["ERRDATA"], header["QUALDATA"] = "IVAR", "MASK"
    h_ivar = fits.ImageHDU(ivar, name="IVAR")
    h_ivar.header["HDUCLAS2"], h_ivar.header["HDUCLAS3"] = "ERROR", "INVMSE"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux, header=header, name="FLUX"), h_ivar,
                  fits.ImageHDU(mask, name="MASK"), fits.ImageHDU(wave, name="WAVE")]) \
        .writeto(tmp_path / "manga.fits")
    c = read_cube(tmp_path / "manga.fits")
    assert c.format == "manga"
    np.testing.assert_allclose(c.wavelength, wave)
    np.testing.assert_allclose(c.ivar, np.moveaxis(ivar.astype(np.float64), 0, -1), rtol=1e-6)
    assert c.mask[0, 0, 1] != 0 and c.mask[0, 1, 2] != 0
    only = read_cube(tmp_path / "manga.fits", bad_bits=1 << 10)
    assert only.mask[0, 0, 1] != 0 and only.mask[0, 1, 2] == 0
    with pytest.raises(ValueError, match="bad_bits"):
        read_cube(tmp_path / "manga.fits", bad_bits=0)


def test_bundled_muse_crop_is_the_real_cube_cropped():
    pytest.importorskip("astropy")
    from astropy.wcs import WCS

    from specnmf.datasets import load_muse_crop
    from specnmf.datasets._muse import CROP
    from specnmf.ifu import read_cube

    crop = load_muse_crop()
    assert crop.cube.shape == (12, 12, 512) and crop.medium == "air" and crop.format == "eso"
    assert np.all(crop.ivar > 0) and crop.meta["INSTRUME"] == "MUSE"
    assert crop.wavelength[0] == pytest.approx(6801.140625)
    snr = np.median(crop.cube * np.sqrt(crop.ivar), axis=2)
    assert 1 < np.median(snr) < 10  # low S/N per pixel
    full = read_cube(_shared("muse", "abell478_minicube.fits"))
    (y0, y1), (x0, x1), (z0, z1) = CROP["y"], CROP["x"], CROP["wave"]
    assert np.array_equal(crop.cube, full.cube[y0:y1, x0:x1, z0:z1])
    assert np.array_equal(crop.ivar, full.ivar[y0:y1, x0:x1, z0:z1])
    np.testing.assert_allclose(crop.wavelength, full.wavelength[z0:z1])
    a = WCS(crop.header).celestial.pixel_to_world_values(0, 0)
    b = WCS(full.header).celestial.pixel_to_world_values(x0, y0)
    np.testing.assert_allclose(a, b)


def test_real_muse_cube_uses_stat_and_dq():
    pytest.importorskip("astropy")
    from astropy.io import fits

    from specnmf.ifu import read_cube

    path = _shared("muse", "abell478_minicube.fits")
    c = read_cube(path)
    with fits.open(path) as h:
        stat = np.asarray(h["STAT"].data[:, 14, 23], dtype=np.float64)
    np.testing.assert_allclose(c.ivar[14, 23], np.where(stat > 0, 1 / stat, 0), rtol=1e-6)
    assert c.wavelength[0] == pytest.approx(4749.890625) and c.medium == "air"
    assert np.count_nonzero(c.mask) == 5


def test_coefficient_maps_of_a_model_fitted_with_fit_cube():
    sim = make_ifu_cube(4, 5, 30, random_state=1)
    model = fit_cube(SpectralNMF(2, solver="anls", max_iter=5, tol=0, random_state=0),
                     sim.cube, ivar=sim.ivar)
    maps = coefficient_maps(model)     # the README's form: the model remembers (ny, nx)
    assert maps.shape == (4, 5, 2)
    np.testing.assert_array_equal(maps, coefficient_maps(model.coefficients_, (4, 5)))
    with pytest.raises(ValueError, match="spatial_shape is needed"):
        coefficient_maps(model.coefficients_)
