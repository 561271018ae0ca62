"""The SpectralUnmix stellar demonstration: NMF templates trace the stellar
classes (matched one-to-one to the class mean spectra) far better than PCA."""

import numpy as np
import pytest

from specnmf.datasets import COELHO_CLASSES, load_coelho, load_coelho_prototypes
from specnmf.demos import correlation_matrix, match_components, stellar_demo


@pytest.fixture(scope="module")
def demo():
    # one fit of 80 x 2250 spectra shared by the tests marked slow
    # default settings, as a user runs it (no figure: plotting is tested elsewhere)
    return stellar_demo(plot=False)


def test_bundled_coelho_subset():
    stars = load_coelho()
    assert len(stars) == 100 and stars.flux.shape == (100, 2250)
    assert stars.wavelength.shape == (2250,) and np.all(np.diff(stars.wavelength) > 0)
    assert stars.wavelength[0] == pytest.approx(1300) and stars.wavelength[-1] == pytest.approx(1e5)
    assert np.allclose(stars.flux.max(axis=1), 1.0)
    assert sorted(set(stars.type)) == sorted(COELHO_CLASSES)
    assert all(np.count_nonzero(stars.type == c) == 20 for c in COELHO_CLASSES)
    assert stars.teff.shape == stars.logg.shape == stars.feh.shape == stars.id.shape == (100,)
    hot = load_coelho("hot_star")
    assert len(hot) == 20 and set(hot.type) == {"hot_star"}
    assert hot.teff.min() > load_coelho("cool_dwarf").teff.max()
    with pytest.raises(ValueError, match="classes"):
        load_coelho(["red_dwarf"])
    protos = load_coelho_prototypes()
    assert protos.flux.shape == (4, 2250) and np.allclose(protos.wavelength, stars.wavelength)


def test_matching_is_one_to_one_and_sign_blind():
    rng = np.random.default_rng(0)
    protos = rng.uniform(size=(3, 50))
    comps = np.stack([-protos[2], protos[0] + 0.01 * rng.normal(size=50), protos[1],
                      rng.uniform(size=50)])
    assignment, corr = match_components(protos, comps)
    assert assignment.tolist() == [1, 2, 0]
    assert corr[2] == pytest.approx(-1.0) and corr[1] == pytest.approx(1.0)
    assert np.all(correlation_matrix(np.ones((1, 5)), protos[:, :5]) == 0)


@pytest.mark.slow
def test_nmf_templates_are_non_negative(demo):
    assert np.all(demo.model.templates_ >= 0) and np.all(demo.model.coefficients_ >= 0)
    assert np.all(demo.nmf_templates >= 0)


@pytest.mark.slow
def test_nmf_templates_match_the_class_prototypes(demo):
    assert sorted(demo.nmf_assignment.tolist()) == [0, 1, 2, 3]
    assert demo.nmf_mean_correlation >= 0.88, demo.format_table()
    assert np.all(demo.nmf_correlations >= 0.75), demo.format_table()


@pytest.mark.slow
def test_nmf_beats_pca_at_tracing_the_classes(demo):
    assert demo.nmf_mean_correlation >= demo.pca_mean_correlation + 0.15, demo.format_table()


@pytest.mark.slow
def test_table_rows_agree_with_correlations(demo):
    assert [row["class"] for row in demo.table] == list(demo.classes)
    for c, row in enumerate(demo.table):
        assert row["nmf_correlation"] == pytest.approx(demo.nmf_correlations[c])
        assert row["nmf_distance"] == pytest.approx(1 - demo.nmf_correlations[c])
        assert 0 <= row["nmf_rms"] <= 2 and 0 <= row["pca_rms"] <= 2
    summary = demo.summary()
    assert summary["n_spectra"] == 80 and len(summary["table"]) == 4


def test_demo_needs_one_component_per_class():
    with pytest.raises(ValueError, match="n_components"):
        stellar_demo(n_components=3, plot=False)
