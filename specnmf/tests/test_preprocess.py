"""The quasar preprocessing: rest-frame regridding, renormalisation, trimming, fractions."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specnmf.preprocess import (data_fractions, rebin, renormalize, rest_frame_grid,
                                to_observed_frame, to_rest_frame, trim)

OBS = 10 ** (np.log10(3600) + 1e-4 * np.arange(4437))


def smooth_rest_spectrum(lam_rest):
    """A noiseless, smooth positive 'quasar' in the rest frame."""
    return (lam_rest / 3000.0) ** -1.5 + 2.0 * np.exp(-0.5 * ((lam_rest - 2800) / 30.0) ** 2)


def observe(z):
    return np.stack([smooth_rest_spectrum(OBS / (1 + zi)) for zi in z])


def test_rest_frame_grid_covers_every_redshift():
    rest = rest_frame_grid(3600, 10000, 0, 4)
    assert rest.size == 11427                       # the paper's ~11 400
    assert rest[0] == pytest.approx(720.0)
    assert rest[-1] <= 10000 and rest[-1] > 9997
    np.testing.assert_allclose(np.diff(np.log10(rest)), 1e-4, rtol=1e-8)


@pytest.mark.parametrize("method", ["bin", "linear"])
def test_round_trip_of_a_noiseless_spectrum(method):
    z = np.array([0.1, 1.3, 3.7])
    rest = rest_frame_grid(3600, 10000, 0, 4)
    flux, ivar = to_rest_frame(OBS, observe(z), np.ones((3, OBS.size)), z, rest, method=method)
    expected = smooth_rest_spectrum(rest)
    for i in range(3):
        covered = ivar[i] > 0
        # "bin" shifts by at most half a pixel (0.3 A on the 30 A wide line at
        # 2800 A: <1 % on its flanks); "linear" interpolates
        np.testing.assert_allclose(flux[i, covered], expected[covered],
                                   rtol=1e-2 if method == "bin" else 1e-4)
    # and back to the observed frame
    back, covered = to_observed_frame(rest, flux, z, OBS)
    inner = covered & (np.arange(OBS.size) > 2) & (np.arange(OBS.size) < OBS.size - 3)
    np.testing.assert_allclose(back[inner], observe(z)[inner],
                               rtol=1e-2 if method == "bin" else 3e-3)


@pytest.mark.parametrize("method", ["bin", "linear"])
def test_zero_weight_outside_coverage(method):
    z = np.array([0.0, 2.0, 4.0])
    rest = rest_frame_grid(3600, 10000, 0, 4)
    flux, ivar = to_rest_frame(OBS, observe(z), np.ones((3, OBS.size)), z, rest, method=method)
    for i, zi in enumerate(z):
        # beyond half a pixel (1e-4 dex = 0.023 %) of the observed range
        outside = (rest < OBS[0] / (1 + zi) * 0.99975) | (rest > OBS[-1] / (1 + zi) * 1.00025)
        assert np.all(ivar[i, outside] == 0) and np.all(flux[i, outside] == 0)
        inside = (rest > OBS[0] / (1 + zi) * 1.0005) & (rest < OBS[-1] / (1 + zi) * 0.9995)
        assert np.all(ivar[i, inside] > 0)


def test_masked_observed_pixels_get_zero_weight_and_nan_does_not_leak():
    z = np.array([1.0])
    X = observe(z)
    ivar = np.ones_like(X)
    ivar[0, 1000:1010] = 0
    X[0, 1000:1010] = np.nan
    rest = rest_frame_grid(3600, 10000, 0, 4)
    for method in ("bin", "linear"):
        flux, riv = to_rest_frame(OBS, X, ivar, z, rest, method=method)
        assert np.all(np.isfinite(flux))
        hole = (rest > OBS[1001] / 2) & (rest < OBS[1008] / 2)
        assert np.all(riv[0, hole] == 0)


def test_coarse_bins_combine_inverse_variance():
    """Four observed pixels per rest bin: ivar adds up, flux is the weighted mean."""
    rest = rest_frame_grid(3600, 10000, 0, 0, dloglam=4e-4)
    X = np.ones((1, OBS.size))
    ivar = np.full((1, OBS.size), 2.0)
    flux, riv = to_rest_frame(OBS, X, ivar, np.zeros(1), rest)
    inner = slice(2, -2)
    np.testing.assert_allclose(riv[0, inner], 8.0)
    np.testing.assert_allclose(flux[0, inner], 1.0)


def test_to_rest_frame_keeps_float32_and_leaves_inputs_alone():
    z = np.array([0.5, 2.5])
    X = observe(z).astype(np.float32)
    ivar = np.ones_like(X)
    X0, iv0 = X.copy(), ivar.copy()
    flux, riv = to_rest_frame(OBS, X, ivar, z, rest_frame_grid(3600, 10000, 0, 4))
    assert flux.dtype == riv.dtype == np.float32
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(ivar, iv0)


def test_to_rest_frame_bad_input():
    rest = rest_frame_grid(3600, 10000, 0, 4)
    X = np.ones((2, OBS.size))
    with pytest.raises(ValueError, match="redshift"):
        to_rest_frame(OBS, X, X, np.array([0.1]), rest)
    with pytest.raises(ValueError, match="redshift"):
        to_rest_frame(OBS, X, X, np.array([0.1, -1.5]), rest)
    with pytest.raises(ValueError, match="wavelength"):
        to_rest_frame(OBS[::-1], X, X, np.zeros(2), rest)
    with pytest.raises(ValueError, match="ivar"):
        to_rest_frame(OBS, X, -X, np.zeros(2), rest)
    with pytest.raises(ValueError, match="method"):
        to_rest_frame(OBS, X, X, np.zeros(2), rest, method="cubic")
    with pytest.raises(ValueError, match="pixels"):
        to_rest_frame(OBS[:-1], X, X, np.zeros(2), rest)
    with pytest.raises(ValueError, match="obs_min"):
        rest_frame_grid(5000, 4000, 0, 1)


@given(st.floats(0.1, 10.0), st.integers(0, 2**31 - 1))
def test_renormalize_scales_flux_by_s_and_ivar_by_inverse_square(factor, seed):
    rng = np.random.default_rng(seed)
    wave = np.linspace(1000, 2000, 60)
    ref = 1.0 + rng.uniform(size=60)
    flux = factor * ref[None, :] * rng.uniform(0.5, 2.0, size=(4, 1)) + 0.01 * rng.normal(size=(4, 60))
    ivar = rng.uniform(0.5, 2.0, size=(4, 60))
    ivar[:, :10] = 0
    f, v, s = renormalize(flux, ivar, wave, reference=ref)
    np.testing.assert_allclose(f[:, 10:], flux[:, 10:] * s[:, None])
    assert np.all(f[:, :10] == 0)                    # missing flux is set to 0
    np.testing.assert_allclose(v, ivar / s[:, None] ** 2)
    obs = ivar[0] > 0
    for i in range(4):
        assert np.median(f[i, obs]) == pytest.approx(np.median(ref[obs]), rel=1e-9)
    # chi^2 of a scaled model is unchanged
    model = flux * 0.97
    chi_before = np.sum(ivar * (flux - model) ** 2)
    chi_after = np.sum(v * (f - model * s[:, None]) ** 2)
    assert chi_after == pytest.approx(chi_before, rel=1e-9)


def test_renormalize_uses_only_the_observed_rest_range():
    wave = np.linspace(1000, 2000, 100)
    ref = np.linspace(1.0, 3.0, 100)                 # brighter to the red
    flux = np.tile(ref, (2, 1))
    ivar = np.ones_like(flux)
    ivar[0, 50:] = 0                                 # spectrum 0 sees only the blue half
    _, _, s = renormalize(flux * 2.0, ivar, wave, reference=ref)
    np.testing.assert_allclose(s, 0.5)               # same shape: the scale undoes the 2x


def test_renormalize_keeps_scale_one_for_nonpositive_median():
    wave = np.linspace(1000, 2000, 10)
    flux = -np.ones((1, 10))
    f, v, s = renormalize(flux, np.ones((1, 10)), wave, reference=np.ones(10))
    assert s[0] == 1.0 and np.all(f == flux)


def test_trim_cuts_both_ends_and_validates():
    wave = np.arange(1.0, 401.0)
    X = np.arange(800.0).reshape(2, 400)
    w, f, v = trim(wave, X, np.ones_like(X))
    assert w[0] == 51 and w[-1] == 100 and f.shape == v.shape == (2, 50)
    with pytest.raises(ValueError, match="low"):
        trim(wave, X, np.ones_like(X), low=200, high=200)
    with pytest.raises(ValueError, match="high"):
        trim(wave, X, np.ones_like(X), high=-1)


def test_rebin_inverse_variance_weighted():
    wave = np.arange(1.0, 9.0)
    X = np.array([[1.0, 3.0, 5.0, 5.0, 0.0, 7.0, 2.0, 2.0]])
    ivar = np.array([[1.0, 1.0, 3.0, 1.0, 0.0, 2.0, 0.0, 0.0]])
    w, f, v = rebin(wave, X, ivar, 2)
    np.testing.assert_allclose(f, [[2.0, 5.0, 7.0, 0.0]])
    np.testing.assert_allclose(v, [[2.0, 4.0, 2.0, 0.0]])


def test_data_fractions():
    X = np.array([[-1.0, 2.0, np.nan, 3.0], [-0.5, -0.1, 1.0, 0.0]])
    ivar = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    fr = data_fractions(X, ivar)
    assert fr["missing"] == pytest.approx(3 / 8)
    assert fr["negative"] == pytest.approx(3 / 5)
    assert data_fractions(np.ones((1, 2)), np.zeros((1, 2))) == {"missing": 1.0, "negative": 0.0}


def test_paper_missing_fraction_from_geometry():
    """0 < z < 4 and 3600-10000 A leave ~60 % of the trimmed rest grid unobserved
    (paper: 61.1 %)."""
    z = np.linspace(0.01, 3.99, 40)
    rest = rest_frame_grid(3600, 10000, 0, 4)
    flux, ivar = to_rest_frame(OBS, observe(z), np.ones((40, OBS.size)), z, rest)
    _, flux, ivar = trim(rest, flux, ivar)
    fr = data_fractions(flux, ivar)
    assert 0.57 < fr["missing"] < 0.63 and fr["negative"] == 0.0
