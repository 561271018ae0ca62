"""Plotting: every function returns a Figure with the expected axes (Agg backend)."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from specnmf import plotting  # noqa: E402


class FakeModel:
    """Only the documented attributes of a fitted model."""

    def __init__(self, n=6, d=20, k=3, history=True, wavelength=True):
        rng = np.random.default_rng(0)
        self.templates_ = rng.uniform(size=(k, d))
        self.coefficients_ = rng.uniform(size=(n, k))
        self.chi2_ = np.geomspace(100.0, 10.0, 15)
        self.objective_ = self.chi2_ + np.linspace(5.0, 1.0, 15)
        if history:
            self.history_ = {"chi2": self.chi2_, "smoothness": np.linspace(5.0, 1.0, 15),
                             "sparsity": np.zeros(15)}
        self.wavelength_ = np.linspace(4000, 7000, d) if wavelength else None


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("wavelength", [True, False])
def test_plot_templates_of_model_or_array(wavelength):
    model = FakeModel(wavelength=wavelength)
    fig = plotting.plot_templates(model)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert len(fig.axes[0].get_lines()) == 3
    fig2 = plotting.plot_templates(model.templates_, np.arange(20.0), normalize=True)
    assert max(line.get_ydata().max() for line in fig2.axes[0].get_lines()) == pytest.approx(1)


def test_plot_templates_on_given_axes():
    fig, ax = plt.subplots(1, 2)
    out = plotting.plot_templates(np.ones((2, 5)), ax=ax[1])
    assert out is fig and len(ax[1].get_lines()) == 2 and not ax[0].get_lines()


def test_plot_templates_rejects_wrong_wavelength():
    with pytest.raises(ValueError, match="wavelength"):
        plotting.plot_templates(np.ones((2, 5)), np.arange(4.0))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_plot_coefficient_maps_one_image_and_colorbar_per_component(k):
    maps = np.random.default_rng(1).uniform(size=(4, 6, k))
    fig = plotting.plot_coefficient_maps(maps)
    assert isinstance(fig, Figure)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == k and len(fig.axes) == 2 * k


def test_plot_objective_draws_chi2_and_nonzero_penalties_on_log_axis():
    fig = plotting.plot_objective(FakeModel())
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["chi2", "smoothness", "objective"]   # all-zero sparsity left out


def test_plot_objective_without_history_uses_chi2():
    model = FakeModel(history=False)
    model.objective_ = model.chi2_
    fig = plotting.plot_objective(model)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["chi2"]


def test_plot_reconstruction_one_panel_per_index_with_components():
    model = FakeModel()
    X = model.coefficients_ @ model.templates_
    ivar = np.ones_like(X)
    ivar[0, :5] = 0   # gaps, not infinite error bars
    fig = plotting.plot_reconstruction(X, ivar, model, [0, 2, 5])
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    lines = fig.axes[0].get_lines()
    assert len(lines) == 1 + 3 + 1   # data, three components, model
    model_line = [ln for ln in lines if ln.get_label() == "model"][0]
    assert np.allclose(model_line.get_ydata(), X[0])
    assert np.all(np.isnan(lines[0].get_ydata()[:5]))


def test_plot_reconstruction_bad_indices():
    model = FakeModel()
    X = model.coefficients_ @ model.templates_
    with pytest.raises(ValueError, match="indices"):
        plotting.plot_reconstruction(X, None, model, [6])


def test_plot_stellar_demo_has_four_panels():
    from specnmf.demos import StellarDemoResult

    rng = np.random.default_rng(2)
    classes = ("hot_star", "a_f_star", "solar_like", "cool_dwarf")
    table = [{"class": c, "nmf_component": i, "nmf_correlation": 0.9, "nmf_distance": 0.1,
              "nmf_rms": 0.3, "pca_component": i, "pca_correlation": 0.5,
              "pca_distance": 0.5, "pca_rms": 0.8} for i, c in enumerate(classes)]
    result = StellarDemoResult(
        classes=classes, wavelength=np.geomspace(1300, 1e5, 30),
        prototypes=rng.uniform(size=(4, 30)), nmf_templates=rng.uniform(size=(4, 30)),
        pca_components=rng.normal(size=(4, 30)), nmf_assignment=np.arange(4),
        pca_assignment=np.array([1, 0, 3, 2]), nmf_correlations=np.full(4, 0.9),
        pca_correlations=np.full(4, 0.5), table=table, model=None,
        pca_explained_variance_ratio=np.full(4, 0.2))
    fig = plotting.plot_stellar_demo(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert fig.axes[0].get_xscale() == "log"
