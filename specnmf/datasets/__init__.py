"""Datasets: small real spectra shipped with the package and simulators.

Nothing here downloads anything; bundled files live in ``datasets/data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from ._ifu import Bunch, make_ifu_cube
from ._simulate import SimulatedSpectra, make_doublet, make_quasars

__all__ = [
    "make_doublet",
    "make_quasars",
    "SimulatedSpectra",
    "load_doublet",
    "load_coelho",
    "load_coelho_prototypes",
    "make_ifu_cube",
    "data_path",
    "Bunch",
    "StellarSpectra",
    "COELHO_CLASSES",
    "load_muse_crop",
    "muse_crop_path",
]

def data_path(name: str):
    """Path of a file bundled in ``specnmf/datasets/data``."""
    return resources.files(__package__).joinpath("data", name)


def load_doublet():
    """The Nearly-NMF paper's toy dataset, as published (Green & Bailey 2024).

    500 noisy exposures of a double Gaussian on 510 pixels, with inverse
    variance weights; the noise drives many pixels negative.  Returned in
    specnmf's orientation, one spectrum per row.  BSD-3-Clause, see
    ``datasets/data/LICENSE-nearly_nmf.txt``.

    Returns
    -------
    X : ndarray of shape (500, 510)
        Flux.
    ivar : ndarray of shape (500, 510)
        Inverse variance.
    """
    with data_path("doublet_dataset.npy").open("rb") as f:
        X = np.load(f, allow_pickle=False)
    with data_path("doublet_weights.npy").open("rb") as f:
        ivar = np.load(f, allow_pickle=False)
    # published orientation is pixels x exposures
    return np.ascontiguousarray(X.T), np.ascontiguousarray(ivar.T)


#: the spectral classes of the bundled Coelho (2014) subset, 20 spectra each
COELHO_CLASSES = ("hot_star", "a_f_star", "solar_like", "cool_dwarf", "cool_giant")


@dataclass(frozen=True)
class StellarSpectra:
    """Spectra of the bundled Coelho (2014) subset and their metadata.

    Attributes
    ----------
    wavelength : ndarray of shape (n_pixels,)
        Wavelength in Angstrom (log-spaced, 1300 to 100000).
    flux : ndarray of shape (n_spectra, n_pixels)
        Flux of each spectrum, scaled to a maximum of 1 (noiseless models).
    type : ndarray of str, of shape (n_spectra,)
        Class of each spectrum, one of :data:`COELHO_CLASSES`.
    teff, logg, feh : ndarray of shape (n_spectra,)
        Effective temperature (K), log surface gravity (cgs), [Fe/H].
    id : ndarray of str, of shape (n_spectra,)
        Identifier in the SpectralUnmix subset (``spec_001`` ...).
    filename : ndarray of str, of shape (n_spectra,)
        File name of the spectrum in the Coelho (2014) library.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    type: np.ndarray
    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    id: np.ndarray
    filename: np.ndarray

    def __len__(self):
        return self.flux.shape[0]


def _check_classes(classes):
    if classes is None:
        return COELHO_CLASSES
    if isinstance(classes, str):
        classes = (classes,)
    try:
        classes = tuple(classes)
    except TypeError:
        raise TypeError(f"classes must be None, a str or a sequence of str; got {classes!r}") from None
    bad = [c for c in classes if not isinstance(c, str) or c not in COELHO_CLASSES]
    if bad or not classes:
        raise ValueError(f"classes must be a non-empty selection of {list(COELHO_CLASSES)}; "
                         f"got {list(classes)!r}")
    return classes


def load_coelho(classes=None):
    """Stellar spectra from the Coelho (2014) library, as bundled by SpectralUnmix.

    100 theoretical stellar spectra (SEDs) on a common log-spaced grid of 2250
    pixels from 1300 to 100000 Angstrom, 20 in each of five classes:
    ``hot_star``, ``a_f_star``, ``solar_like``, ``cool_dwarf`` and
    ``cool_giant``.  The SpectralUnmix stellar demonstration uses the 80
    spectra of the first four classes (see :func:`specnmf.demos.stellar_demo`).
    The spectra are noiseless; fit them with unit ``ivar``.

    Parameters
    ----------
    classes : str, sequence of str or None, default=None
        Classes to return (spectra keep the order of the file); ``None``
        returns all 100 spectra.

    Returns
    -------
    StellarSpectra
        ``wavelength`` of shape (2250,), ``flux`` of shape (n_spectra, 2250)
        and per-spectrum ``type``, ``teff``, ``logg``, ``feh``, ``id``,
        ``filename``.

    Notes
    -----
    The file is read with ``allow_pickle=False``: its string columns are
    fixed-width unicode arrays, not Python objects.

    References
    ----------
    P. R. T. Coelho, "A new library of theoretical stellar spectra with
    scaled-solar and alpha-enhanced mixtures", MNRAS 440, 1027 (2014),
    doi:10.1093/mnras/stu365.  The subset and its selection come from the
    SpectralUnmix package (R. S. de Souza), MIT licence, see
    ``datasets/data/LICENSE-SpectralUnmix.txt``.

    Examples
    --------
    >>> from specnmf.datasets import load_coelho
    >>> stars = load_coelho(["hot_star", "cool_dwarf"])
    >>> stars.flux.shape, stars.wavelength.shape
    ((40, 2250), (2250,))
    """
    classes = _check_classes(classes)
    with data_path("coelho_stellar_subset.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    keep = np.isin(arrays["type"], classes)
    fields = {name: np.ascontiguousarray(arrays[name][keep])
              for name in ("flux", "type", "teff", "logg", "feh", "id", "filename")}
    return StellarSpectra(wavelength=arrays["wavelength"].copy(), **fields)


def load_coelho_prototypes():
    """The four single prototype spectra of the SpectralUnmix demonstration data.

    One Coelho (2014) spectrum each of a cool giant, a solar-type dwarf, an A
    star and a hot star, on the grid of :func:`load_coelho`.

    Returns
    -------
    Bunch
        ``wavelength`` of shape (2250,), ``flux`` of shape (4, 2250),
        ``names`` (``cool_giant``, ``solar_dwarf``, ``a_star``, ``hot_star``),
        and ``filename``, ``teff``, ``logg``, ``feh`` of shape (4,).
    """
    import csv

    with data_path("coelho-demo-spectra.csv").open("r", encoding="ascii") as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", ndmin=2)
    names = header[1:]
    with data_path("coelho-demo-metadata.csv").open("r", encoding="ascii") as f:
        meta = {row["id"]: row for row in csv.DictReader(f)}
    rows = [meta[name] for name in names]
    return Bunch(
        wavelength=table[:, 0].copy(),
        flux=np.ascontiguousarray(table[:, 1:].T),
        names=tuple(names),
        filename=np.array([r["file"] for r in rows]),
        teff=np.array([float(r["teff"]) for r in rows]),
        logg=np.array([float(r["logg"]) for r in rows]),
        feh=np.array([float(r["feh"]) for r in rows]),
    )


def muse_crop_path():
    """Path of the bundled crop of a real MUSE cube (``muse_abell478_crop.fits.gz``).

    The file is in the ESO archive layout (DATA / STAT / DQ, WCS in the DATA
    header), so it can be given to ``specnmf fit`` or
    :func:`specnmf.ifu.read_cube` like a cube downloaded from the archive.
    See :func:`load_muse_crop` for its content.
    """
    from ._muse import CROP_FILE

    return str(data_path(CROP_FILE))


def load_muse_crop():
    """A real MUSE cube of the Abell 478 brightest cluster galaxy: a small crop.

    12 x 12 spaxels (0.2 arcsec each) around the galaxy's peak, 512
    wavelengths from 6801 to 7440 Angstrom (air, 1.25 Angstrom pixels): the
    stellar continuum, H-alpha + [N II] (7110-7150 Angstrom) and [S II]
    (7292, 7308 Angstrom) emission of gas at z = 0.0858, and sky residuals.
    Modest S/N per pixel (median per spaxel 6-10 here, 1.4-5.8 over the full
    cube), per-pixel variance from the pipeline.  The crop is the bright centre of the field: its fluxes
    are positive, while ~5 % of the full cube's (edges of the field, blue
    end) are negative.  One 900 s exposure of ESO
    programme 094.A-0859(A), as shipped in MPDAF 3.6 (BSD-3-Clause); see
    ``datasets/data/LICENSE-MPDAF-muse.txt`` for provenance and citation.

    Returns
    -------
    specnmf.ifu.IFUCube
        ``cube``, ``ivar`` (from the STAT variance) and ``mask`` (DQ) of
        shape (12, 12, 512), ``wavelength`` of shape (512,), ``header`` with
        the celestial and spectral WCS.

    Examples
    --------
    >>> from specnmf.datasets import load_muse_crop
    >>> c = load_muse_crop()
    >>> c.cube.shape, c.medium
    ((12, 12, 512), 'air')
    """
    from ..ifu import read_cube

    return read_cube(muse_crop_path())
