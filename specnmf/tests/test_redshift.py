"""Redshift fitter: exact chi^2 at every trial redshift, refinement, zwarn, redrock files."""

import numpy as np
import pytest
from scipy.optimize import nnls

from specnmf.redshift import (
    TemplateSet,
    ZWarn,
    _Scanner,
    fit_redshifts,
    pixel_edges,
    read_redrock,
    redshift_grid,
    resample_templates,
    write_redrock,
)

DL = 1e-3
REST = 10 ** (np.log10(900.0) + DL * np.arange(900))          # 900 - 7100 A
OBS = 10 ** (np.log10(3600.0) + DL * np.arange(260))           # 3600 - 6550 A
LINES = (1216.0, 1549.0, 1909.0, 2800.0, 4861.0)


def _templates(rest=REST, negative=False):
    """Three smooth non-negative templates: a power law and two sets of lines."""
    T = np.empty((3, rest.size))
    T[0] = (rest / 3000.0) ** -1.0
    T[1] = sum(np.exp(-0.5 * ((rest - lam) / (0.004 * lam)) ** 2) for lam in LINES[::2])
    T[2] = sum(np.exp(-0.5 * ((rest - lam) / (0.006 * lam)) ** 2) for lam in LINES[1::2])
    if negative:   # PCA-like: signed, and never collinear with another template
        T[1] -= 0.3 * (rest / 3000.0) ** 0.5
    return T


def _spectra(z, rng, T=None, snr=5.0, coef=None):
    T = _templates() if T is None else T
    n = len(z)
    coef = rng.uniform(0.5, 2.0, size=(n, T.shape[0])) if coef is None else coef
    truth = np.stack([coef[i] @ resample_templates(T, REST, OBS, zi) for i, zi in enumerate(z)])
    sigma = truth.mean(axis=1, keepdims=True) / snr
    X = truth + rng.normal(size=truth.shape) * sigma
    ivar = np.broadcast_to(1.0 / sigma ** 2, X.shape).copy()
    return X, ivar


def _brute_chi2(T, X, ivar, z, nonnegative=True):
    """scipy.optimize.nnls (or numpy lstsq) on the resampled templates, every z."""
    out = np.empty((X.shape[0], len(z)))
    for m, zz in enumerate(z):
        A = resample_templates(T, REST, OBS, zz)
        for i in range(X.shape[0]):
            obs = ivar[i] > 0
            s = np.sqrt(ivar[i, obs])
            M, y = (A[:, obs] * s).T, X[i, obs] * s
            if nonnegative:
                out[i, m] = nnls(M, y)[1] ** 2
            else:   # columns scaled to unit norm: lstsq's cutoff then drops no template
                norm = np.linalg.norm(M, axis=0)
                Ms = M / np.where(norm > 0, norm, 1.0)
                c = np.linalg.lstsq(Ms, y, rcond=None)[0]
                out[i, m] = np.sum((y - Ms @ c) ** 2)
    return out


@pytest.fixture(scope="module")
def hard_data():
    """Negative flux, masked pixels (NaN there), the end pixels masked or not."""
    rng = np.random.default_rng(0)
    z = np.array([0.3, 0.9, 1.7, 2.2, 0.5])
    X, ivar = _spectra(z, rng, snr=1.0)
    X[0, :5] = -3 * np.abs(X[0, :5])      # strongly negative flux
    ivar[1, 40:90] = 0.0
    X[1, 40:90] = np.nan                  # missing pixels may hold NaN
    ivar[2, 0] = 0.0
    ivar[2, -1] = 0.0
    ivar[3, ::3] = 0.0
    ivar[4] *= rng.uniform(0.1, 3.0, size=OBS.size)
    return X, ivar


@pytest.mark.parametrize("aligned", [True, False], ids=["fft", "direct"])
def test_chi2_equals_brute_force_nnls_at_every_redshift(hard_data, aligned):
    X, ivar = hard_data
    T = _templates()
    if aligned:
        z = redshift_grid(0.2, 2.5, wavelength=OBS, template_wavelength=REST, step=3 * DL)
    else:
        z = np.linspace(0.2, 2.5, 40)
    assert (_Scanner(TemplateSet(T, REST), OBS).lag_of(z) is not None) == aligned
    r = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST,
                      return_chi2_curve=True)
    ref = _brute_chi2(T, np.where(ivar > 0, X, 0.0), ivar, z)
    np.testing.assert_allclose(r.chi2_curve["QSO"], ref, rtol=1e-8, atol=0)


def test_pca_mode_equals_weighted_least_squares(hard_data):
    X, ivar = hard_data
    T = _templates(negative=True)
    z = redshift_grid(0.2, 2.5, wavelength=OBS, template_wavelength=REST, step=5 * DL)
    with pytest.raises(ValueError, match="nonnegative=False"):
        fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST)
    r = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST,
                      nonnegative=False, return_chi2_curve=True)
    ref = _brute_chi2(T, np.where(ivar > 0, X, 0.0), ivar, z, nonnegative=False)
    np.testing.assert_allclose(r.chi2_curve["QSO"], ref, rtol=1e-8, atol=0)


def test_resampling_rule_is_pixel_mean_of_linear_interpolant():
    """The rule, against a fine numerical integral of the interpolated template."""
    T = _templates()
    z = 1.234
    A = resample_templates(T, REST, OBS, z)
    e = pixel_edges(OBS)
    for j in (0, 1, 100, OBS.size - 1):
        u = np.linspace(e[j], e[j + 1], 20001)
        f = np.interp(u / (1 + z), REST, T[1])
        np.testing.assert_allclose(A[1, j], np.trapezoid(f, u) / (e[j + 1] - e[j]), rtol=1e-6,
                                   atol=1e-12 * A[1].max())


def test_resampling_matches_redrock_trapz_rebin():
    rebin = pytest.importorskip("redrock.rebin")
    T = _templates()
    for z in (0.3, 1.7):
        ours = resample_templates(T, REST, OBS, z)
        theirs = rebin.trapz_rebin(REST * (1 + z), T, OBS)        # (d, q)
        np.testing.assert_allclose(ours, theirs.T, rtol=1e-9, atol=1e-12)


def test_recovers_redshift_and_parabola_error():
    rng = np.random.default_rng(1)
    z_true = np.array([0.41, 1.013, 1.9876, 2.3])
    X, ivar = _spectra(z_true, rng, snr=20.0)
    T = _templates()
    z = redshift_grid(0.2, 2.5, wavelength=OBS, template_wavelength=REST, step=3 * DL)
    r = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST)
    # lines of FWHM ~2000 km/s sampled at 690 km/s per pixel: z to ~1e-3
    assert np.all(np.abs(r.z - z_true) / (1 + z_true) < 1e-3)
    assert np.all(np.isfinite(r.z_err)) and np.all((r.z_err > 1e-5) & (r.z_err < 3e-3))
    assert np.all(np.abs(r.z - z_true) < 4 * r.z_err)
    assert np.all(r.zwarn & ~ZWarn.SMALL_DELTA_CHI2 == 0)
    assert np.all(r.delta_chi2 > 0)
    assert np.all(r.spectype == "QSO")
    assert r.coefficients.shape == (4, 3) and np.all(r.coefficients >= 0)
    # the general path gives the same answer on the same grid
    r2 = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z + 1e-7,
                       template_wavelength=REST)
    sure = r.delta_chi2 > 9
    np.testing.assert_allclose(r2.z[sure], r.z[sure], atol=2e-4)


def test_zwarn_flags():
    rng = np.random.default_rng(2)
    T = _templates()
    z = redshift_grid(0.2, 2.5, wavelength=OBS, template_wavelength=REST, step=3 * DL)
    X, ivar = _spectra(np.array([1.0, 1.0, 1.0, 1.0]), rng, snr=20.0)
    X[2] = rng.normal(size=OBS.size)                  # pure noise, tiny weights
    ivar[2] = 1e-6
    ivar[3] = 0.0                                     # no data
    X[3] = np.nan
    r = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST)
    assert r.zwarn[0] & ~ZWarn.SMALL_DELTA_CHI2 == 0
    # true z just beyond the grid's end: the minimum is at the edge
    r_edge = fit_redshifts(T, X[:1], ivar=ivar[:1], wavelength=OBS,
                           redshifts=z[(z > 0.8) & (z < 0.99)], template_wavelength=REST)
    assert r_edge.zwarn[0] & ZWarn.Z_FITLIMIT
    assert r.zwarn[2] & ZWarn.SMALL_DELTA_CHI2
    assert r.zwarn[3] & ZWarn.NODATA and np.isnan(r.z[3])
    X, ivar = _spectra(np.array([1.0]), rng, snr=20.0)
    ivar[0, 20:] = 0.0                                # 20 pixels < 10 per coefficient
    r = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST)
    assert r.zwarn[0] & ZWarn.LITTLE_COVERAGE


def test_several_template_sets_choose_class_by_chi2():
    rng = np.random.default_rng(3)
    T = _templates()
    star = np.stack([(REST / 3000.0) ** 2, np.exp(-0.5 * ((REST - 3500) / 300) ** 2)])
    Xq, iq = _spectra(np.array([0.7, 1.6]), rng, snr=10.0)
    Xs, is_ = _spectra(np.array([0.01, 0.03]), rng, T=star, coef=np.ones((2, 2)), snr=10.0)
    X, ivar = np.vstack([Xq, Xs]), np.vstack([iq, is_])
    z = redshift_grid(0.0, 2.0, wavelength=OBS, template_wavelength=REST, step=2 * DL)
    sets = [TemplateSet(T, REST, "QSO"), TemplateSet(star, REST, "STAR", "K")]
    r = fit_redshifts(sets, X, ivar=ivar, wavelength=OBS, redshifts=z)
    assert list(r.spectype) == ["QSO", "QSO", "STAR", "STAR"]
    assert list(r.subtype) == ["", "", "K", "K"]
    assert r.coefficients.shape == (4, 3) and np.all(r.coefficients[2:, 2] == 0)
    r2 = fit_redshifts({"QSO": TemplateSet(T, REST), "STAR:::K": TemplateSet(star, REST)},
                       X, ivar=ivar, wavelength=OBS, redshifts=z)
    np.testing.assert_array_equal(r2.spectype, r.spectype)


def test_blocks_and_progress_do_not_change_results(hard_data):
    X, ivar = hard_data
    T = _templates()
    z = redshift_grid(0.2, 2.5, wavelength=OBS, template_wavelength=REST, step=3 * DL)
    seen = []
    r1 = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST,
                       block_size=2, progress=lambda done, n: seen.append((done, n)))
    r2 = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST,
                       block_size=16)
    assert seen == [(2, 5), (4, 5), (5, 5)]
    np.testing.assert_allclose(r1.chi2, r2.chi2, rtol=1e-10)
    np.testing.assert_array_equal(r1.z, r2.z)


def test_coverage_and_input_errors():
    T = _templates()
    X = np.ones((1, OBS.size))
    with pytest.raises(ValueError, match="do not cover"):
        fit_redshifts(T, X, ivar=X, wavelength=OBS, redshifts=np.linspace(0.0, 7.0, 50),
                      template_wavelength=REST)
    with pytest.raises(ValueError, match="template_wavelength"):
        fit_redshifts(T, X, ivar=X, wavelength=OBS, redshifts=np.linspace(0.5, 1.0, 5))
    with pytest.raises(ValueError, match="increasing"):
        fit_redshifts(T, X, ivar=X, wavelength=OBS, redshifts=[1.0, 0.5, 0.7],
                      template_wavelength=REST)
    with pytest.raises(ValueError, match="pixels"):
        fit_redshifts(T, X[:, :-1], ivar=X[:, :-1], wavelength=OBS, redshifts=[0.5, 0.6, 0.7],
                      template_wavelength=REST)


def test_redrock_file_round_trip_without_redrock(tmp_path):
    pytest.importorskip("astropy")
    T = _templates()
    z = redshift_grid(0.2, 2.5, wavelength=OBS, template_wavelength=REST)
    path = tmp_path / "rrtemplate-qso.fits"
    write_redrock(path, T, wavelength=REST, spectype="qso", redshifts=z)
    ts = read_redrock(path)
    assert (ts.spectype, ts.subtype, ts.method, ts.igm_model) == ("QSO", "", "NMF", "None")
    np.testing.assert_allclose(ts.wavelength, REST, rtol=1e-12)
    np.testing.assert_array_equal(ts.templates, T)
    np.testing.assert_array_equal(ts.redshifts, z)
    with pytest.raises(FileExistsError):
        write_redrock(path, T, wavelength=REST)
    write_redrock(path, _templates(negative=True), wavelength=REST, overwrite=True)
    assert read_redrock(path).method == "PCA"
    with pytest.raises(ValueError, match="uniform"):
        write_redrock(tmp_path / "x.fits", T[:, :3], wavelength=[1.0, 2.0, 5.0])


def test_redrock_round_trip_agrees_on_simulated_quasars(tmp_path):
    """redrock loads the written file and finds the same redshifts as specnmf."""
    pytest.importorskip("redrock")
    from redrock.templates import Template

    from specnmf.datasets._simulate import QUASAR_LINES, make_quasars
    from specnmf.redshift import redrock_fit

    # templates from the simulator's own recipe (a power law, the broad lines,
    # the narrow [OIII] and H-alpha), at a coarse resolution so the test stays small
    T = np.empty((4, REST.size))
    T[0] = (REST / 3000.0) ** -1.5
    T[1:] = 0.0
    for name, (lam, ew, fwhm) in QUASAR_LINES.items():
        k = 3 if name in ("Ha", "[OIII]") else (1 if lam < 2000 else 2)
        sig = lam * fwhm / 2.3548 / 299792.458
        T[k] += ew * (lam / 3000.0) ** -1.5 / (np.sqrt(2 * np.pi) * sig) \
            * np.exp(-0.5 * ((REST - lam) / sig) ** 2)
    sim = make_quasars(30, random_state=4, z_range=(0.3, 2.2), wavelength_range=(3600, 6500),
                       dloglam=DL, snr=20.0, forest=False, dtype="float64")
    wave = sim.wavelength
    z = redshift_grid(0.25, 2.3, wavelength=wave, template_wavelength=REST, step=2 * DL)
    path = tmp_path / "rrtemplate-qso.fits"
    write_redrock(path, T, wavelength=REST, spectype="QSO", redshifts=z)
    tmpl = Template(str(path))
    assert tmpl.method == "NMF" and tmpl.template_type == "QSO"
    ours = fit_redshifts(read_redrock(path), sim.X, ivar=sim.ivar, wavelength=wave)
    theirs = redrock_fit(path, sim.X, ivar=sim.ivar, wavelength=wave)
    agree = np.abs(ours.z - theirs["z"]) / (1 + ours.z) < 3e-4
    assert agree.mean() >= 0.98, np.c_[ours.z, theirs["z"]][~agree]


def test_cli_redshift_and_export(tmp_path, capsys):
    pytest.importorskip("astropy")
    import warnings

    from astropy.table import Table

    from specnmf import SpectralNMF
    from specnmf.cli import main
    from specnmf.io import save_model, write_spectra

    T = _templates()
    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralNMF(3, max_iter=5, random_state=0).fit(
            rng.uniform(0.5, 1.5, size=(20, 3)) @ T, wavelength=REST)
    model.templates_ = T                      # known templates, whatever the short fit found
    save_model(model, tmp_path / "model.fits")
    z_true = np.array([0.9, 1.2, 2.0])
    X, ivar = _spectra(z_true, rng, snr=20.0)
    write_spectra(tmp_path / "spectra.fits", X, ivar=ivar, wavelength=OBS)
    out = tmp_path / "zbest.fits"
    assert main(["redshift", str(tmp_path / "model.fits"), str(tmp_path / "spectra.fits"),
                 "--z-range", "0.2,2.5", "-o", str(out), "-q"]) == 0
    t = Table.read(out)
    assert set(t.colnames) >= {"Z", "ZERR", "CHI2", "DELTACHI2", "ZWARN", "SPECTYPE", "COEFF"}
    np.testing.assert_allclose(t["Z"], z_true, atol=3e-3 * 3.0)
    rr = tmp_path / "rrtemplate-qso.fits"
    assert main(["export", str(tmp_path / "model.fits"), "--format", "redrock", "--spectype",
                 "QSO", "--z-range", "0.2,2.5", "-o", str(rr), "-q"]) == 0
    ts = read_redrock(rr)
    assert ts.method == "NMF" and ts.spectype == "QSO" and ts.redshifts[0] == pytest.approx(0.2)
    # the exported file fits the same spectra with its own redshift grid
    assert main(["redshift", str(rr), str(tmp_path / "spectra.fits"), "-o",
                 str(tmp_path / "z2.fits"), "-q"]) == 0
    np.testing.assert_allclose(Table.read(tmp_path / "z2.fits")["Z"], t["Z"], atol=2e-3)
    capsys.readouterr()
    # templates that do not cover the range: a clear error, exit status 2
    assert main(["redshift", str(rr), str(tmp_path / "spectra.fits"), "--z-range", "0.0,6",
                 "-o", str(tmp_path / "z3.fits")]) == 2
    assert "do not cover" in capsys.readouterr().err


def test_docstring_examples():
    import doctest

    import specnmf.redshift

    result = doctest.testmod(specnmf.redshift, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_nnls_gram_packed_matches_nnls_gram():
    from specnmf.solvers.nnls import nnls_gram

    rng = np.random.default_rng(7)
    A = rng.normal(size=(500, 12, 4))
    G = np.einsum("mjk,mjl->mkl", A, A)
    b = np.einsum("mjk,mj->mk", A, rng.normal(size=(500, 12)))
    iu = np.triu_indices(4)
    x, fragile = nnls_gram(G[:, iu[0], iu[1]], b, packed=True, return_fragile=True)
    np.testing.assert_allclose(x, nnls_gram(G, b), atol=1e-10)
    assert not fragile.any()
    G[0, 3, :] = G[0, :, 3] = G[0, 2, :] = G[0, :, 2] = 0.0     # template absent
    x = nnls_gram(G[:, iu[0], iu[1]], b, packed=True)
    assert np.all(x[0, 2:] == 0)


def test_spectrum_input_in_other_units_gives_the_array_answer():
    # a specutils Spectrum brings its spectral axis (here in nm, converted to the
    # templates' Angstrom), uncertainty (standard deviations) and mask
    u = pytest.importorskip("astropy.units")
    specutils = pytest.importorskip("specutils")
    from astropy.nddata import StdDevUncertainty

    rng = np.random.default_rng(3)
    z_true = np.array([0.7, 1.4])
    X, ivar = _spectra(z_true, rng, snr=10.0)
    ivar[0, :20] = 0                                   # missing pixels -> a mask
    T = _templates()
    z = redshift_grid(0.2, 2.5, wavelength=OBS, template_wavelength=REST, step=3 * DL)
    ref = fit_redshifts(T, X, ivar=ivar, wavelength=OBS, redshifts=z, template_wavelength=REST)
    sigma = np.where(ivar > 0, 1 / np.sqrt(np.where(ivar > 0, ivar, 1)), 1.0)
    cls = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D
    spec = cls(flux=np.where(ivar > 0, X, 0) * u.Jy, spectral_axis=OBS / 10 * u.nm,
               uncertainty=StdDevUncertainty(sigma), mask=ivar == 0)
    got = fit_redshifts(T, spec, redshifts=z, template_wavelength=REST)
    np.testing.assert_allclose(got.z, ref.z, rtol=1e-9)
    np.testing.assert_allclose(got.chi2, ref.chi2, rtol=1e-8)
