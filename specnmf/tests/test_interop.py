"""astropy / specutils / hyperspy containers in and out (specnmf.interop)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from specnmf import SpectralNMF, load
from specnmf.interop import as_arrays, is_container, rest_frame, to_spectrum

u = pytest.importorskip("astropy.units")
nddata = pytest.importorskip("astropy.nddata")


@pytest.fixture(autouse=True)
def _numpy_kernels(monkeypatch):
    # these tests are about containers, not speed: skip compiling the numba kernels
    monkeypatch.setenv("SPECNMF_DISABLE_NUMBA", "1")


def _spectrum_class():
    specutils = pytest.importorskip("specutils")
    return getattr(specutils, "Spectrum", None) or specutils.Spectrum1D


UNCERTAINTIES = {
    "ivar": lambda ivar: nddata.InverseVariance(ivar),
    "stddev": lambda ivar: nddata.StdDevUncertainty(_inv(np.sqrt(ivar))),
    "variance": lambda ivar: nddata.VarianceUncertainty(_inv(ivar)),
}


def _inv(a):
    """1/a with inf where a == 0 (no information: the convention for missing data)."""
    with np.errstate(divide="ignore"):
        return 1.0 / a


@pytest.fixture
def toy():
    rng = np.random.default_rng(1)
    n, d = 24, 30
    truth = rng.uniform(0.5, 1.5, size=(n, 2)) @ rng.uniform(size=(2, d))
    sigma = rng.uniform(0.05, 0.1, size=(n, d))
    X = truth + rng.normal(size=(n, d)) * sigma
    ivar = 1.0 / sigma**2
    ivar[rng.uniform(size=(n, d)) < 0.1] = 0.0
    wave = np.linspace(5000.0, 5290.0, d)
    return X, ivar, wave


def _model(**kw):
    return SpectralNMF(2, solver="anls", random_state=0, max_iter=30, tol=0, **kw)


@pytest.mark.parametrize("kind", sorted(UNCERTAINTIES))
def test_spectrum_round_trip_each_uncertainty(toy, kind):
    Spectrum = _spectrum_class()
    X, ivar, wave = toy
    spec = Spectrum(flux=X * u.Jy, spectral_axis=wave * u.AA,
                    uncertainty=UNCERTAINTIES[kind](ivar))
    a = as_arrays(spec)
    np.testing.assert_allclose(a.flux, X)
    np.testing.assert_allclose(a.ivar, ivar, rtol=1e-12)
    assert np.all(a.ivar[ivar == 0] == 0)
    np.testing.assert_allclose(a.wavelength, wave)
    assert (a.wavelength_unit, a.flux_unit, a.shape) == ("Angstrom", "Jy", (X.shape[0],))
    # the fit is the fit of the arrays, and remembers the units
    m = _model().fit(spec)
    ref = _model().fit(X, ivar=ivar, wavelength=wave)
    np.testing.assert_allclose(m.templates_, ref.templates_, rtol=1e-10)
    assert (m.wavelength_unit_, m.flux_unit_) == ("Angstrom", "Jy")
    np.testing.assert_allclose(m.transform(spec), ref.transform(X, ivar=ivar), rtol=1e-10)
    assert m.score(spec) == pytest.approx(ref.score(X, ivar=ivar))


def test_uncertainty_in_another_unit_is_converted(toy):
    Spectrum = _spectrum_class()
    X, ivar, wave = toy
    sigma_mjy = 1000.0 * _inv(np.sqrt(ivar))
    spec = Spectrum(flux=X * u.Jy, spectral_axis=wave * u.AA,
                    uncertainty=nddata.StdDevUncertainty(sigma_mjy, unit=u.mJy))
    np.testing.assert_allclose(as_arrays(spec).ivar, ivar, rtol=1e-12)


def test_bad_uncertainties_mask_and_nan_flux_give_zero_weight():
    Spectrum = _spectrum_class()
    X = np.ones((2, 5))
    X[1, 4] = np.nan
    sigma = np.array([[0.5, 0.0, np.inf, np.nan, 0.5], [0.5] * 5])
    mask = np.zeros((2, 5), bool)
    mask[1, 0] = True
    spec = Spectrum(flux=X * u.Jy, spectral_axis=np.arange(5.0) * u.nm,
                    uncertainty=nddata.StdDevUncertainty(sigma), mask=mask)
    a = as_arrays(spec)
    np.testing.assert_array_equal(a.ivar, [[4, 0, 0, 0, 4], [0, 4, 4, 4, 0]])
    with pytest.raises(ValueError, match="negative"):
        as_arrays(Spectrum(flux=X * u.Jy, spectral_axis=np.arange(5.0) * u.nm,
                           uncertainty=nddata.StdDevUncertainty(-sigma)))
    with pytest.raises(TypeError, match="not supported"):
        as_arrays(Spectrum(flux=X * u.Jy, spectral_axis=np.arange(5.0) * u.nm,
                           uncertainty=nddata.UnknownUncertainty(sigma)))
    # no uncertainty: unit weights, still 0 under the mask and the NaN
    a = as_arrays(Spectrum(flux=X * u.Jy, spectral_axis=np.arange(5.0) * u.nm, mask=mask))
    np.testing.assert_array_equal(a.ivar, [[1] * 5, [0, 1, 1, 1, 0]])


def test_old_spectrum1d_name_and_spectral_axis_not_last(toy):
    specutils = pytest.importorskip("specutils")
    X, ivar, wave = toy
    if hasattr(specutils, "Spectrum1D"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated alias in specutils 2
            spec = specutils.Spectrum1D(flux=X * u.Jy, spectral_axis=wave * u.AA,
                                        uncertainty=nddata.InverseVariance(ivar))
        np.testing.assert_allclose(as_arrays(spec).ivar, ivar)
    if hasattr(specutils, "Spectrum"):
        spec = specutils.Spectrum(flux=X.T * u.Jy, spectral_axis=wave * u.AA,
                                  uncertainty=nddata.InverseVariance(ivar.T),
                                  spectral_axis_index=0)
        a = as_arrays(spec)
        np.testing.assert_allclose(a.flux, X)
        np.testing.assert_allclose(a.ivar, ivar)


def test_nddata_with_spectral_wcs_or_wavelength_argument(toy):
    wcs_mod = pytest.importorskip("astropy.wcs")
    X, ivar, wave = toy
    w = wcs_mod.WCS(naxis=2)
    w.wcs.ctype = ["WAVE", "LINEAR"]
    w.wcs.cunit = ["m", ""]
    w.wcs.crval = [wave[0] * 1e-10, 0]
    w.wcs.cdelt = [(wave[1] - wave[0]) * 1e-10, 1]
    w.wcs.crpix = [1, 1]
    nd = nddata.NDData(X, uncertainty=nddata.VarianceUncertainty(_inv(ivar)), unit="Jy", wcs=w)
    a = as_arrays(nd)
    np.testing.assert_allclose(a.wavelength, wave)
    assert a.wavelength_unit == "Angstrom"  # the WCS's metres, back in Angstrom
    np.testing.assert_allclose(a.ivar, ivar, rtol=1e-12)
    with pytest.raises(ValueError, match="wavelength was given twice"):
        as_arrays(nd, wavelength=wave)
    with pytest.raises(ValueError, match="ivar was given twice"):
        as_arrays(nd, ivar=ivar)
    # no WCS: the wavelength (a Quantity keeps its unit) and ivar come as arguments
    bare = nddata.NDData(X, unit="Jy", mask=ivar == 0)
    b = as_arrays(bare, ivar=ivar, wavelength=(wave / 10) * u.nm)
    np.testing.assert_allclose(b.wavelength, wave / 10)
    assert b.wavelength_unit == "nm"
    np.testing.assert_allclose(b.ivar, ivar)
    m = _model().fit(bare, ivar=ivar, wavelength=wave * u.AA)
    assert m.wavelength_unit_ == "Angstrom"


def test_quantity_flux_and_plain_arrays():
    X = np.ones((3, 4))
    a = as_arrays(X * u.mJy, ivar=np.full((3, 4), 4.0) / u.Jy**2)
    assert a.flux_unit == "mJy"
    np.testing.assert_allclose(a.ivar, 4e-6)  # in mJy**-2
    b = as_arrays(X, ivar=None)
    assert b.flux is X and b.ivar is None and b.flux_unit is None
    assert not is_container(X) and is_container(X * u.Jy)


def test_wavelength_units_are_checked_not_mixed(toy):
    Spectrum = _spectrum_class()
    X, ivar, wave = toy
    unc = nddata.InverseVariance(ivar)
    m = _model().fit(Spectrum(flux=X * u.Jy, spectral_axis=wave * u.AA, uncertainty=unc))
    ref = m.transform(X, ivar=ivar)
    # the same grid in nm, in Hz, and with the flux in mJy: converted exactly
    nm = Spectrum(flux=X * u.Jy, spectral_axis=(wave / 10) * u.nm, uncertainty=unc)
    np.testing.assert_allclose(m.transform(nm), ref, rtol=1e-10)
    hz = Spectrum(flux=X[:, ::-1] * u.Jy, spectral_axis=(wave[::-1] * u.AA).to(
        u.Hz, equivalencies=u.spectral()), uncertainty=nddata.InverseVariance(ivar[:, ::-1]))
    with pytest.raises(ValueError, match="not the model's wavelength grid"):
        m.transform(hz)  # the same pixels, reversed: not the model's pixel order
    mjy = Spectrum(flux=1000 * X * u.mJy, spectral_axis=wave * u.AA,
                   uncertainty=nddata.InverseVariance(ivar / 1e6))
    np.testing.assert_allclose(m.transform(mjy), ref, rtol=1e-10)
    # the numbers of the Angstrom grid, in nm: an error, not a silent mismatch
    wrong = Spectrum(flux=X * u.Jy, spectral_axis=wave * u.nm, uncertainty=unc)
    with pytest.raises(ValueError, match="not the model's wavelength grid"):
        m.transform(wrong)
    with pytest.raises(ValueError, match="not the model's wavelength grid"):
        m.score(wrong)
    with pytest.raises(ValueError, match="cannot be expressed"):
        m.transform(_with_axis(X, wave * u.km / u.s))


def _with_axis(X, axis):
    """A Spectrum whose spectral axis is a velocity (specutils allows km/s)."""
    return _spectrum_class()(flux=X * u.Jy, spectral_axis=axis)


def test_templates_spectrum_and_units_survive_save(toy, tmp_path):
    Spectrum = _spectrum_class()
    X, ivar, wave = toy
    m = _model().fit(Spectrum(flux=X * u.Jy, spectral_axis=wave * u.AA,
                              uncertainty=nddata.InverseVariance(ivar)))
    t = m.templates_spectrum()
    assert isinstance(t, Spectrum)
    assert t.flux.shape == (2, X.shape[1]) and t.flux.unit == u.Jy
    np.testing.assert_allclose(t.spectral_axis.to_value(u.AA), wave)
    np.testing.assert_allclose(t.flux.value, m.templates_)
    path = tmp_path / "m.npz"
    m.save(path)
    loaded = load(path)
    assert (loaded.wavelength_unit_, loaded.flux_unit_) == ("Angstrom", "Jy")
    assert loaded.templates_spectrum().spectral_axis.unit == u.AA
    plain = _model().fit(X, ivar=ivar)
    with pytest.raises(ValueError, match="no wavelength grid"):
        plain.templates_spectrum()
    plain = _model().fit(X, ivar=ivar, wavelength=wave)
    with pytest.raises(ValueError, match="wavelength_unit="):
        plain.templates_spectrum()
    assert plain.templates_spectrum(wavelength_unit="nm").spectral_axis.unit == u.nm


def test_to_spectrum_round_trip(toy):
    _spectrum_class()
    X, ivar, wave = toy
    spec = to_spectrum(X, wave, wavelength_unit="Angstrom", flux_unit="Jy", ivar=ivar)
    a = as_arrays(spec)
    np.testing.assert_allclose(a.flux, X)
    np.testing.assert_allclose(a.ivar, ivar)


def test_fit_cube_with_a_spectrum_cube():
    Spectrum = _spectrum_class()
    from specnmf.ifu import fit_cube

    rng = np.random.default_rng(2)
    cube = rng.uniform(size=(3, 4, 2)) @ rng.uniform(size=(2, 12)) \
        + rng.normal(scale=0.01, size=(3, 4, 12))
    ivar = np.full(cube.shape, 1e4)
    mask = np.zeros(cube.shape, bool)
    mask[0, 1, :3] = True
    spec = Spectrum(flux=cube * u.Jy, spectral_axis=np.linspace(600, 611, 12) * u.nm,
                    uncertainty=nddata.InverseVariance(ivar), mask=mask)
    m = fit_cube(_model(), spec)
    ref = fit_cube(_model(), cube, ivar=ivar, mask=mask, wavelength=np.linspace(600, 611, 12))
    np.testing.assert_allclose(m.templates_, ref.templates_, rtol=1e-10)
    assert m.spatial_shape_ == (3, 4) and m.wavelength_unit_ == "nm"
    with pytest.raises(ValueError, match="mask was given twice"):
        fit_cube(_model(), spec, mask=mask)


def test_rest_frame_of_a_spectrum_matches_the_array_function():
    _spectrum_class()
    from specnmf.preprocess import to_rest_frame

    rng = np.random.default_rng(3)
    wave = np.geomspace(4000, 8000, 200)
    X = rng.normal(size=(3, 200)) + 2
    ivar = np.full(X.shape, 4.0)
    z = np.array([0.1, 0.5, 0.9])
    rest = np.geomspace(2200, 7000, 150)
    spec = to_spectrum(X, wave, wavelength_unit="Angstrom", flux_unit="Jy", ivar=ivar)
    out = rest_frame(spec, (rest / 10) * u.nm, redshift=z)
    f, iv = to_rest_frame(wave, X, ivar, z, rest)
    a = as_arrays(out)
    np.testing.assert_allclose(a.flux, f)
    np.testing.assert_allclose(a.ivar, iv)
    np.testing.assert_allclose(a.wavelength, rest)


def test_numpy_fits_import_no_astropy():
    code = ("import sys, numpy as np; from specnmf import SpectralNMF; "
            "SpectralNMF(1, max_iter=2).fit(np.ones((3, 4))); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('astropy', 'specutils', 'hyperspy', 'tqdm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# -- hyperspy ----------------------------------------------------------------------------
@pytest.fixture
def spectrum_image():
    hs = pytest.importorskip("hyperspy.api")
    rng = np.random.default_rng(4)
    data = rng.uniform(size=(3, 4, 2)) @ rng.uniform(size=(2, 40)) \
        + rng.normal(scale=0.01, size=(3, 4, 40))
    s = hs.signals.Signal1D(data)
    ax = s.axes_manager.signal_axes[0]
    ax.name, ax.units, ax.offset, ax.scale = "Wavelength", "nm", 500.0, 0.5
    return s


def test_hyperspy_helper_uses_the_noise_variance(spectrum_image):
    from specnmf.interop import decompose_signal

    s = spectrum_image
    var = np.full(s.data.shape, 1e-4)
    var[0, 0, :5] = 0  # unknown variance: no weight
    s.metadata.set_item("Signal.Noise_properties.variance", type(s)(var))
    model, factors, loadings = decompose_signal(s, _model())
    ivar = np.where(var > 0, 1 / np.where(var > 0, var, 1), 0).reshape(12, 40)
    ref = _model().fit(s.data.reshape(12, 40), ivar=ivar)
    np.testing.assert_allclose(model.templates_, ref.templates_, rtol=1e-10)
    assert model.wavelength_unit_ == "nm"
    np.testing.assert_allclose(model.wavelength_, 500 + 0.5 * np.arange(40))
    assert factors.axes_manager.signal_axes[0].units == "nm"
    assert factors.data.shape == (2, 40)
    assert loadings.data.shape == (2, 3, 4)
    np.testing.assert_allclose(loadings.data[:, 1, 2], model.coefficients_[1 * 4 + 2])
    # stored as the signal's decomposition: hyperspy's own tools use it
    rebuilt = s.get_decomposition_model(2)
    np.testing.assert_allclose(rebuilt.data.reshape(12, 40),
                               model.coefficients_ @ model.templates_)
    # a scalar variance is the same as a constant one
    s.metadata.set_item("Signal.Noise_properties.variance", 1e-4)
    scalar, _, _ = decompose_signal(s, _model(), store=False)
    constant = _model().fit(s.data.reshape(12, 40), ivar=np.full((12, 40), 1e4))
    np.testing.assert_allclose(scalar.templates_, constant.templates_, rtol=1e-10)


def test_hyperspy_decomposition_route(spectrum_image):
    s = spectrum_image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.decomposition(algorithm=_model(), output_dimension=2)
    lr = s.learning_results
    assert lr.factors.shape == (40, 2) and lr.loadings.shape == (12, 2)
    assert np.all(lr.factors >= 0) and np.all(lr.loadings >= 0)
    ref = _model().fit(s.data.reshape(12, 40))
    np.testing.assert_allclose(lr.factors, ref.templates_.T, rtol=1e-10)
    # hyperspy's variance goes through as_arrays too
    s.metadata.set_item("Signal.Noise_properties.variance", 0.25)
    a = as_arrays(s)
    assert a.shape == (3, 4) and np.all(a.ivar == 4.0)
    with pytest.raises(ValueError, match="ivar was given twice"):
        as_arrays(s, ivar=a.ivar)


def test_docs_code_blocks_run(tmp_path, monkeypatch):
    """The python blocks of docs/interop.md run, in order, as one script."""
    import re
    from pathlib import Path

    pytest.importorskip("specutils")
    pytest.importorskip("hyperspy.api")
    page = Path(__file__).resolve().parents[2] / "docs" / "interop.md"
    if not page.exists():
        pytest.skip("docs/ is not beside the package (installed copy)")
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of the short doc fits
        for block in blocks:
            exec(compile(block, str(page), "exec"), namespace)


def test_a_list_of_spectra_on_one_grid(toy):
    Spectrum = _spectrum_class()
    X, ivar, wave = toy
    one_by_one = [Spectrum(flux=x * u.Jy, spectral_axis=wave * u.AA,
                           uncertainty=nddata.InverseVariance(iv)) for x, iv in zip(X, ivar)]
    one_by_one[1] = Spectrum(flux=X[1] * 1000 * u.mJy, spectral_axis=(wave / 10) * u.nm,
                             uncertainty=nddata.InverseVariance(ivar[1] / 1e6))
    a = as_arrays(one_by_one)
    np.testing.assert_allclose(a.flux, X)
    np.testing.assert_allclose(a.ivar, ivar, rtol=1e-12)
    assert a.flux_unit == "Jy" and a.shape == (X.shape[0],)
    m = _model().fit(one_by_one)
    np.testing.assert_allclose(m.templates_, _model().fit(X, ivar=ivar).templates_, rtol=1e-10)
    one_by_one[2] = Spectrum(flux=X[2] * u.Jy, spectral_axis=(wave + 1) * u.AA)
    with pytest.raises(ValueError, match="spectrum 2 of the list is not on the grid"):
        as_arrays(one_by_one)


def test_templates_spectrum_back_into_a_model(toy):
    Spectrum = _spectrum_class()
    X, ivar, wave = toy
    m = _model().fit(Spectrum(flux=X * u.Jy, spectral_axis=wave * u.AA,
                              uncertainty=nddata.InverseVariance(ivar)))
    again = SpectralNMF.from_templates(m.templates_spectrum())
    assert (again.wavelength_unit_, again.flux_unit_) == ("Angstrom", "Jy")
    np.testing.assert_allclose(again.templates_, m.templates_)
    nm = Spectrum(flux=X * u.Jy, spectral_axis=(wave / 10) * u.nm,
                  uncertainty=nddata.InverseVariance(ivar))
    np.testing.assert_allclose(again.transform(nm), m.transform(X, ivar=ivar), rtol=1e-10)


def test_docstring_examples():
    import doctest

    import specnmf.interop

    pytest.importorskip("specutils")
    result = doctest.testmod(specnmf.interop, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_nddata_whose_wcs_puts_the_spectral_axis_first(toy):
    wcs_mod = pytest.importorskip("astropy.wcs")
    X, ivar, wave = toy
    w = wcs_mod.WCS(naxis=2)  # FITS order: axis 1 = numpy's last; here the spectra's index
    w.wcs.ctype = ["LINEAR", "FREQ"]
    freq = (wave * u.AA).to_value(u.Hz, equivalencies=u.spectral())
    w.wcs.cunit = ["", "Hz"]
    w.wcs.crval = [0, freq[0]]
    w.wcs.cdelt = [1, freq[1] - freq[0]]  # not uniform in frequency: only the first two pixels
    w.wcs.crpix = [1, 1]
    a = as_arrays(nddata.NDData(X.T, wcs=w, uncertainty=nddata.InverseVariance(ivar.T)))
    np.testing.assert_allclose(a.flux, X)
    np.testing.assert_allclose(a.ivar, ivar)
    assert a.wavelength_unit == "Hz"
    np.testing.assert_allclose(a.wavelength[:2], freq[:2])


def test_negative_hyperspy_variance_is_an_error(spectrum_image):
    spectrum_image.metadata.set_item("Signal.Noise_properties.variance", -1.0)
    with pytest.raises(ValueError, match="noise variance has 1 negative"):
        as_arrays(spectrum_image)
