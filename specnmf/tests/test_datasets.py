"""The paper's simulators: shapes, seeds, negativity and noise consistent with ivar."""

import numpy as np
import pytest

from specnmf.datasets._simulate import QUASAR_LINES, make_doublet, make_quasars


@pytest.fixture(scope="module")
def quasars():
    return make_quasars(300, random_state=3)


def test_doublet_shapes_and_unpacking():
    X, ivar, truth = make_doublet(40, 120, random_state=0)
    assert X.shape == ivar.shape == truth.shape == (40, 120)
    assert np.all(ivar > 0) and np.all(truth >= 0)


def test_doublet_seed_reproducible_and_seeds_differ():
    a, b, c = (make_doublet(20, random_state=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.ivar, b.ivar)
    assert not np.array_equal(a.X, c.X)


def test_doublet_line_ratio_between_half_and_two():
    h = make_doublet(500, random_state=0).params["heights"]
    ratio = h[:, 1] / h[:, 0]
    assert ratio.min() >= 0.5 and ratio.max() <= 2.0
    assert ratio.min() < 0.6 and ratio.max() > 1.9          # the whole range is used


def test_doublet_like_the_bundled_data():
    """Scale chosen after the bundled file: about a third of the pixels negative,
    peaks of ~25 and ~32 counts on average."""
    sim = make_doublet(500, random_state=0)
    assert 0.25 < np.mean(sim.X < 0) < 0.40
    mean = sim.truth.mean(axis=0)
    assert 23 < mean[218] < 27 and 28 < mean[318] < 36


@pytest.mark.parametrize("variance_per", ["pixel", "exposure"])
def test_doublet_pulls_have_unit_spread(variance_per):
    sim = make_doublet(400, random_state=5, variance_per=variance_per)
    pulls = (sim.X - sim.truth) * np.sqrt(sim.ivar)
    assert abs(pulls.std() - 1) < 0.05 and abs(pulls.mean()) < 0.05
    gvar = sim.params["gaussian_variance"]
    if variance_per == "exposure":
        assert np.all(gvar == gvar[:, :1])
    else:
        assert np.unique(gvar[0]).size == gvar.shape[1]


def test_doublet_bad_input():
    with pytest.raises(ValueError, match="n_exposures"):
        make_doublet(0)
    with pytest.raises(TypeError, match="n_pixels"):
        make_doublet(10, 50.5)
    with pytest.raises(ValueError, match="variance_per"):
        make_doublet(10, variance_per="row")
    with pytest.raises(ValueError, match="variance_range"):
        make_doublet(10, variance_range=(4, -1))


def test_quasars_shapes_grid_and_dtype(quasars):
    q = quasars
    assert q.X.shape == q.ivar.shape == q.truth.shape == (300, 4437)
    assert q.X.dtype == np.float32
    steps = np.diff(np.log10(q.wavelength))
    np.testing.assert_allclose(steps, 1e-4, rtol=1e-6)
    assert 3600 <= q.wavelength[0] < 3601 and 9990 < q.wavelength[-1] <= 10000
    assert q.redshift.shape == (300,) and 0 <= q.redshift.min() and q.redshift.max() <= 4
    assert np.all(np.isfinite(q.X)) and np.all(q.ivar > 0) and np.all(q.truth >= 0)


def test_quasars_seed_reproducible():
    a, b = make_quasars(5, random_state=9), make_quasars(5, random_state=9)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.redshift, b.redshift)
    assert not np.array_equal(a.X, make_quasars(5, random_state=10).X)


def test_quasars_low_snr_makes_many_pixels_negative(quasars):
    frac = np.mean(quasars.X < 0)
    assert 0.07 < frac < 0.25                 # paper: 11.4 % at SNR 1.5
    # negativity comes from the noise: far fewer negatives at high SNR and many photons
    hi = make_quasars(100, random_state=3, snr=20.0, mean_counts=1000.0)
    assert np.mean(hi.X < 0) < frac / 4


def test_quasars_pulls_have_unit_spread(quasars):
    pulls = (quasars.X - quasars.truth).astype(np.float64) * np.sqrt(quasars.ivar)
    assert abs(pulls.std() - 1) < 0.05 and abs(pulls.mean()) < 0.05


def test_quasars_gaussian_snr_matches_request():
    q = make_quasars(50, random_state=0, snr=1.5)
    snr = q.truth.mean(axis=1) / q.params["sigma"]
    np.testing.assert_allclose(snr, 1.5, rtol=1e-4)


def test_quasar_lines_sit_at_their_rest_wavelength():
    q = make_quasars(40, random_state=2, forest=False, line_scatter=0.0, z_range=(0.2, 0.4))
    lam0 = QUASAR_LINES["Ha"][0]
    for i in range(5):
        rest = q.wavelength / (1 + q.redshift[i])
        near = np.abs(rest - lam0) < 200
        peak = rest[near][np.argmax(q.truth[i, near])]
        assert abs(peak - lam0) < 3


def test_forest_absorbs_only_blueward_of_lyman_alpha_and_more_at_high_z():
    kw = dict(random_state=4, z_range=(3.0, 3.8))
    with_f, without = make_quasars(60, forest=True, **kw), make_quasars(60, forest=False, **kw)
    transmission = with_f.truth / without.truth
    rest = with_f.wavelength[None, :] / (1 + with_f.redshift[:, None])
    red = rest > 1230
    np.testing.assert_allclose(transmission[red], 1.0, rtol=1e-5)
    blue = rest < 1200
    assert transmission[blue].mean() < 0.85
    # absorber redshift 2.0-2.3 (4860-5000 A) transmits more than 2.6-2.9 (5550-5750 A)
    lo = (with_f.wavelength > 3700) & (with_f.wavelength < 4000) & blue
    hi = (with_f.wavelength > 4400) & (with_f.wavelength < 4700) & blue
    assert transmission[hi].mean() < transmission[lo].mean()


def test_quasars_bad_input():
    with pytest.raises(ValueError, match="snr"):
        make_quasars(5, snr=0)
    with pytest.raises(ValueError, match="z_range"):
        make_quasars(5, z_range=(2, 1))
    with pytest.raises(ValueError, match="dtype"):
        make_quasars(5, dtype="int32")
