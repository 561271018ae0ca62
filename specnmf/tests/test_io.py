"""Spectra files and saved models: round trips, layout rules, clear errors, no pickle."""

import json
import logging
import zipfile

import numpy as np
import pytest

import specnmf
from specnmf import SpectralNMF
from specnmf import io as sio

from .conftest import make_toy

pytest.importorskip("astropy")


@pytest.fixture
def arrays():
    rng = np.random.default_rng(3)
    n, d = 6, 9
    flux = rng.normal(size=(n, d))  # signed, as noisy spectra are
    ivar = rng.uniform(0.5, 2.0, size=(n, d))
    ivar[0, 0] = 0.0
    mask = np.zeros((n, d), dtype=np.uint8)
    mask[2, 3] = 1
    mask[4, 5] = 8  # any non-zero bit means bad
    wavelength = np.linspace(3600.0, 9800.0, d)
    return flux, ivar, mask, wavelength


def _expected_ivar(ivar, mask):
    return np.where(mask != 0, 0.0, ivar)


@pytest.mark.parametrize("name,layout", [("s.fits", "image"), ("s.fits", "table"),
                                         ("s.npz", "image"), ("s.h5", "image"),
                                         ("s.hdf5", "image")])
def test_spectra_round_trip_with_mask_winning_over_ivar(tmp_path, arrays, name, layout):
    if name.endswith(("h5", "hdf5")):
        pytest.importorskip("h5py")
    flux, ivar, mask, wavelength = arrays
    path = tmp_path / name
    sio.write_spectra(path, flux, ivar=ivar, wavelength=wavelength, mask=mask, layout=layout)
    s = sio.read_spectra(path)
    assert np.array_equal(s.flux, flux)
    assert np.array_equal(s.ivar, _expected_ivar(ivar, mask))
    assert s.ivar[2, 3] == 0 and s.ivar[4, 5] == 0 and ivar[2, 3] > 0
    assert np.array_equal(s.wavelength, wavelength)
    assert s.shape == flux.shape
    assert s.path == str(path)


def test_npy_holds_flux_only_with_unit_weights(tmp_path, arrays, caplog):
    flux = arrays[0]
    path = tmp_path / "s.npy"
    sio.write_spectra(path, flux)
    with caplog.at_level(logging.WARNING, logger="specnmf"):
        s = sio.read_spectra(path)
    assert np.array_equal(s.flux, flux)
    assert np.array_equal(s.ivar, np.ones_like(flux))
    assert s.wavelength is None
    assert "no IVAR" in caplog.text
    with pytest.raises(ValueError, match="flux only"):
        sio.write_spectra(tmp_path / "t.npy", flux, ivar=arrays[1])


def test_missing_ivar_gives_unit_weights_a_warning_and_zero_weight_for_nan(tmp_path, caplog):
    flux = np.array([[1.0, np.nan, -2.0], [0.5, 0.25, np.inf]])
    sio.write_spectra(tmp_path / "s.fits", flux)
    with caplog.at_level(logging.WARNING, logger="specnmf"):
        s = sio.read_spectra(tmp_path / "s.fits")
    assert np.array_equal(s.ivar, [[1, 0, 1], [1, 1, 0]])
    assert "no IVAR" in caplog.text and "2 non-finite" in caplog.text
    # the result is directly usable: NaN only where ivar == 0
    specnmf.chi2(s.flux, np.ones((2, 1)), np.ones((1, 3)), ivar=s.ivar)


def test_mask_without_ivar_still_masks(tmp_path, arrays):
    flux, _, mask, _ = arrays
    sio.write_spectra(tmp_path / "s.npz", flux, mask=mask)
    s = sio.read_spectra(tmp_path / "s.npz")
    assert np.array_equal(s.ivar, _expected_ivar(np.ones_like(flux), mask))


def test_npz_accepts_X_for_flux_and_reads_without_pickle(tmp_path, arrays):
    flux, ivar = arrays[:2]
    np.savez(tmp_path / "s.npz", X=flux, ivar=ivar)
    s = sio.read_spectra(tmp_path / "s.npz")
    assert np.array_equal(s.flux, flux) and np.array_equal(s.ivar, ivar)
    np.savez(tmp_path / "obj.npz", flux=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        sio.read_spectra(tmp_path / "obj.npz")


def test_fits_header_is_carried_in_meta(tmp_path, arrays):
    flux, ivar = arrays[:2]
    sio.write_spectra(tmp_path / "s.fits", flux, ivar=ivar, meta={"OBJECT": "NGC 1275", "EXPTIME": 900.0})
    meta = sio.read_spectra(tmp_path / "s.fits").meta
    assert meta["OBJECT"] == "NGC 1275" and meta["EXPTIME"] == 900.0
    assert "NAXIS" not in meta and "BITPIX" not in meta


def test_fits_hdu_argument_selects_the_table(tmp_path, arrays):
    from astropy.io import fits

    flux, ivar, _, wavelength = arrays
    d = flux.shape[1]
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="flux", format=f"{d}D", array=flux),
         fits.Column(name="Ivar", format=f"{d}D", array=ivar),
         fits.Column(name="WAVELENGTH", format=f"{d}D", array=np.tile(wavelength, (len(flux), 1)))],
        name="COADD")
    other = fits.BinTableHDU.from_columns([fits.Column(name="ID", format="K", array=np.arange(3))],
                                          name="FIBERMAP")
    fits.HDUList([fits.PrimaryHDU(), other, table]).writeto(tmp_path / "t.fits")
    for hdu in (None, "COADD", 2):
        s = sio.read_spectra(tmp_path / "t.fits", hdu=hdu)
        assert np.array_equal(s.flux, flux) and np.array_equal(s.ivar, ivar)
        assert np.array_equal(s.wavelength, wavelength)
    with pytest.raises(ValueError, match="no HDU 'NOPE'"):
        sio.read_spectra(tmp_path / "t.fits", hdu="NOPE")


def test_table_with_different_wavelength_grids_is_refused(tmp_path, arrays):
    from astropy.io import fits

    flux = arrays[0]
    n, d = flux.shape
    wave = np.tile(np.arange(d, dtype=float), (n, 1))
    wave[1] += 0.5
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="FLUX", format=f"{d}D", array=flux),
                                         fits.Column(name="WAVELENGTH", format=f"{d}D", array=wave)])
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "t.fits")
    with pytest.raises(ValueError, match="common grid"):
        sio.read_spectra(tmp_path / "t.fits")


@pytest.mark.parametrize("name", ["s.fits", "s.npy", "s.h5"])
def test_memmap_gives_lazy_arrays_with_the_same_values(tmp_path, arrays, name):
    if name.endswith("h5"):
        pytest.importorskip("h5py")
    flux, ivar, mask, wavelength = arrays
    if name.endswith("npy"):
        sio.write_spectra(tmp_path / name, flux)
        ivar, mask = np.ones_like(flux), np.zeros_like(mask)
    else:
        sio.write_spectra(tmp_path / name, flux, ivar=ivar, wavelength=wavelength, mask=mask)
    s = sio.read_spectra(tmp_path / name, memmap=True)
    assert not (type(s.flux) is np.ndarray and s.flux.base is None)  # not a loaded copy
    engine = pytest.importorskip("specnmf.engine")
    assert engine.is_lazy(s.flux)  # what makes SpectralNMF.fit stream instead of load
    assert s.ivar.shape == flux.shape
    assert np.array_equal(np.asarray(s.flux[1:4]), flux[1:4])
    assert np.array_equal(np.asarray(s.ivar[1:5]), _expected_ivar(ivar, mask)[1:5])
    assert np.array_equal(np.asarray(s.ivar), _expected_ivar(ivar, mask))


def test_read_errors_are_clear(tmp_path, arrays):
    flux, ivar = arrays[:2]
    with pytest.raises(ValueError, match="unknown file type"):
        sio.read_spectra(tmp_path / "s.csv")
    with pytest.raises(FileNotFoundError, match="missing.fits"):
        sio.read_spectra(tmp_path / "missing.fits")
    np.savez(tmp_path / "noflux.npz", ivar=ivar)
    with pytest.raises(ValueError, match="no FLUX"):
        sio.read_spectra(tmp_path / "noflux.npz")
    np.savez(tmp_path / "shape.npz", flux=flux, ivar=ivar[:, :-1])
    with pytest.raises(ValueError, match="IVAR has shape"):
        sio.read_spectra(tmp_path / "shape.npz")
    np.savez(tmp_path / "wave.npz", flux=flux, wavelength=np.arange(3.0))
    with pytest.raises(ValueError, match="WAVELENGTH must have shape"):
        sio.read_spectra(tmp_path / "wave.npz")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        sio.read_spectra(tmp_path / "cube.npy")
    (tmp_path / "junk.fits").write_bytes(b"this is not FITS")
    with pytest.raises(ValueError, match="junk.fits"):
        sio.read_spectra(tmp_path / "junk.fits")
    from astropy.io import fits

    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux, name="DATA")]).writeto(tmp_path / "x.fits")
    with pytest.raises(ValueError, match="no FLUX"):
        sio.read_spectra(tmp_path / "x.fits")


def test_write_spectra_refuses_to_overwrite(tmp_path, arrays):
    flux = arrays[0]
    sio.write_spectra(tmp_path / "s.fits", flux)
    with pytest.raises(FileExistsError, match="overwrite"):
        sio.write_spectra(tmp_path / "s.fits", 2 * flux)
    assert np.array_equal(sio.read_spectra(tmp_path / "s.fits").flux, flux)
    sio.write_spectra(tmp_path / "s.fits", 2 * flux, overwrite=True)
    assert np.array_equal(sio.read_spectra(tmp_path / "s.fits").flux, 2 * flux)


# -- models -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    X, ivar, _ = make_toy(n=30, d=20, k=2, seed=5)
    model = SpectralNMF(2, random_state=0, max_iter=40, tol=0).fit(X, ivar=ivar)
    model.wavelength_ = np.linspace(5000.0, 6000.0, X.shape[1])
    model.meta_ = {"OBJECT": "toy", "EXPTIME": 1200.0}
    return model, X, ivar


def _check_same_model(loaded, model, X, ivar):
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.templates_, model.templates_)
    assert loaded.templates_.dtype == model.templates_.dtype
    assert np.array_equal(loaded.chi2_, model.chi2_)
    assert np.array_equal(loaded.objective_, model.objective_)
    assert np.array_equal(loaded.wavelength_, model.wavelength_)
    assert loaded.n_iter_ == model.n_iter_ and loaded.converged_ == model.converged_
    assert loaded.n_features_in_ == model.n_features_in_
    # the point of saving: the loaded model gives exactly the same coefficients
    assert np.array_equal(loaded.transform(X, ivar=ivar), model.transform(X, ivar=ivar))


@pytest.mark.parametrize("name", ["model.fits", "model.npz"])
def test_model_round_trip_gives_identical_transform(tmp_path, fitted, name):
    model, X, ivar = fitted
    sio.save_model(model, tmp_path / name)
    loaded = sio.load_model(tmp_path / name)
    _check_same_model(loaded, model, X, ivar)
    assert loaded.meta_ == model.meta_
    for key, value in getattr(model, "history_", {}).items():
        assert np.array_equal(loaded.history_[key], value)


def test_float32_model_round_trip(tmp_path):
    X, ivar, _ = make_toy(n=20, d=15, k=2, seed=1)
    model = SpectralNMF(2, dtype="float32", random_state=1, max_iter=20, tol=0).fit(X, ivar=ivar)
    sio.save_model(model, tmp_path / "m.fits")
    loaded = sio.load_model(tmp_path / "m.fits")
    assert loaded.templates_.dtype == np.float32
    assert np.array_equal(loaded.transform(X, ivar=ivar), model.transform(X, ivar=ivar))


def test_fits_model_is_readable_by_astropy_alone(tmp_path, fitted):
    from astropy.io import fits

    model = fitted[0]
    sio.save_model(model, tmp_path / "m.fits")
    with fits.open(tmp_path / "m.fits") as hdul:
        header = hdul[0].header
        assert header["SNMFFMT"] == sio.FORMAT_VERSION
        assert header["SNMFVER"] == specnmf.__version__
        assert header["NCOMP"] == 2 and header["SOLVER"] == model.solver
        assert header["OBJECT"] == "toy"  # the input's header is carried
        assert np.array_equal(hdul["TEMPLATES"].data, model.templates_)
        assert np.array_equal(hdul["WAVELENGTH"].data, model.wavelength_)
        assert np.array_equal(hdul["CHI2"].data, model.chi2_)
        record = json.loads(hdul["META"].data["JSON"][0])
    assert record["params"]["n_components"] == 2


def test_npz_model_loads_without_pickle(tmp_path, fitted):
    sio.save_model(fitted[0], tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)


def test_unserialisable_parameter_is_skipped_with_a_warning(tmp_path, caplog):
    X, ivar, _ = make_toy(n=12, d=10, k=2, seed=2)
    model = SpectralNMF(2, random_state=np.random.default_rng(0), max_iter=5, tol=0).fit(X, ivar=ivar)
    with caplog.at_level(logging.WARNING, logger="specnmf"):
        sio.save_model(model, tmp_path / "m.npz")
    assert "random_state" in caplog.text
    loaded = sio.load_model(tmp_path / "m.npz")
    assert loaded.random_state is None
    assert np.array_equal(loaded.transform(X, ivar=ivar), model.transform(X, ivar=ivar))


def test_save_refuses_unfitted_models_and_existing_files(tmp_path, fitted):
    with pytest.raises(ValueError, match="not fitted"):
        sio.save_model(SpectralNMF(2), tmp_path / "m.fits")
    sio.save_model(fitted[0], tmp_path / "m.fits")
    with pytest.raises(FileExistsError, match="overwrite"):
        sio.save_model(fitted[0], tmp_path / "m.fits")
    sio.save_model(fitted[0], tmp_path / "m.fits", overwrite=True)
    with pytest.raises(ValueError, match="FITS"):
        sio.save_model(fitted[0], tmp_path / "m.h5")


def test_foreign_files_are_refused_with_the_file_named(tmp_path, arrays):
    flux = arrays[0]
    sio.write_spectra(tmp_path / "spectra.fits", flux)
    with pytest.raises(ValueError, match=r"spectra\.fits.*no TEMPLATES"):
        sio.load_model(tmp_path / "spectra.fits")
    np.savez(tmp_path / "other.npz", templates_=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"other\.npz.*not a specnmf model"):
        sio.load_model(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        sio.load_model(tmp_path / "nothing.fits")


@pytest.mark.parametrize("name", ["m.fits", "m.npz"])
def test_truncated_and_corrupted_models_are_refused(tmp_path, fitted, name):
    sio.save_model(fitted[0], tmp_path / name)
    raw = (tmp_path / name).read_bytes()
    (tmp_path / ("cut_" + name)).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut_"):
        sio.load_model(tmp_path / ("cut_" + name))
    (tmp_path / ("junk_" + name)).write_bytes(b"\0" * 4000)
    with pytest.raises(ValueError, match="junk_"):
        sio.load_model(tmp_path / ("junk_" + name))


def _rewrite_npz_record(src, dst, edit):
    with np.load(src, allow_pickle=False) as data:
        payload = {k: data[k] for k in data.files}
    record = json.loads(str(payload["__specnmf__"][()]))
    edit(record)
    payload["__specnmf__"] = np.array(json.dumps(record))
    np.savez(dst, **payload)


def test_newer_format_and_foreign_class_are_refused(tmp_path, fitted):
    sio.save_model(fitted[0], tmp_path / "m.npz")
    _rewrite_npz_record(tmp_path / "m.npz", tmp_path / "new.npz",
                        lambda r: r.update(format_version=sio.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=r"new\.npz.*newer"):
        sio.load_model(tmp_path / "new.npz")
    # a model file never chooses which code runs
    _rewrite_npz_record(tmp_path / "m.npz", tmp_path / "evil.npz",
                        lambda r: r.update({"class": "os.system"}))
    with pytest.raises(ValueError, match="not a specnmf class"):
        sio.load_model(tmp_path / "evil.npz")


def test_incomplete_model_is_refused(tmp_path, fitted):
    sio.save_model(fitted[0], tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as zin, \
            zipfile.ZipFile(tmp_path / "part.npz", "w") as zout:
        for item in zin.infolist():
            if item.filename != "chi2_.npy":
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(ValueError, match=r"part\.npz.*chi2_"):
        sio.load_model(tmp_path / "part.npz")


def test_unknown_saved_parameter_is_dropped_with_a_warning(tmp_path, fitted, caplog):
    model, X, ivar = fitted
    sio.save_model(model, tmp_path / "m.npz")
    _rewrite_npz_record(tmp_path / "m.npz", tmp_path / "future.npz",
                        lambda r: r["params"].update(future_option=3))
    with caplog.at_level(logging.WARNING, logger="specnmf"):
        loaded = sio.load_model(tmp_path / "future.npz")
    assert "future_option" in caplog.text
    assert np.array_equal(loaded.transform(X, ivar=ivar), model.transform(X, ivar=ivar))


# -- the estimator's own names (added by the integrator) -------------------------------
needs_save = pytest.mark.skipif(not hasattr(SpectralNMF, "save") or not hasattr(specnmf, "load"),
                                reason="SpectralNMF.save / specnmf.load not wired yet")
needs_from_templates = pytest.mark.skipif(not hasattr(SpectralNMF, "from_templates"),
                                          reason="SpectralNMF.from_templates not added yet")


@needs_save
@pytest.mark.parametrize("name", ["model.fits", "model.npz"])
def test_estimator_save_and_specnmf_load(tmp_path, fitted, name):
    model, X, ivar = fitted
    model.save(tmp_path / name)
    _check_same_model(specnmf.load(tmp_path / name), model, X, ivar)
    with pytest.raises(FileExistsError):
        model.save(tmp_path / name)


@needs_from_templates
@pytest.mark.parametrize("name", ["t.fits", "t.npz"])
def test_model_from_templates_round_trip(tmp_path, name):
    X, ivar, _ = make_toy(n=15, d=12, k=2, seed=4)
    templates = np.abs(np.random.default_rng(0).normal(size=(2, 12)))
    wavelength = np.arange(12.0) + 4000
    model = SpectralNMF.from_templates(templates, wavelength=wavelength)
    sio.save_model(model, tmp_path / name)
    loaded = sio.load_model(tmp_path / name)
    assert np.array_equal(loaded.templates_, model.templates_)
    assert np.array_equal(loaded.wavelength_, wavelength)
    assert np.array_equal(loaded.transform(X, ivar=ivar), model.transform(X, ivar=ivar))
