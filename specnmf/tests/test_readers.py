"""Readers of real survey layouts: SDSS/BOSS, DESI, LAMOST (and cubes in test_ifu.py).

Each reader is tested twice: on the real file in ``../shared/data/surveys``
(skipped when that folder is absent; ``SPECNMF_SHARED_DATA`` may point to
``shared/data`` elsewhere) and on a small file in the same layout written here
with astropy, so the conventions (bitmasks, big-endian data, vacuum
wavelengths, camera overlaps) are checked without the shared data too.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from specnmf import io as sio

fits = pytest.importorskip("astropy.io.fits")


def shared_data(*parts):
    """A file under shared/data, or skip the test."""
    roots = [os.environ.get("SPECNMF_SHARED_DATA"),
             Path(__file__).resolve().parents[2].parent / "shared" / "data"]
    for root in roots:
        if root and Path(root, *parts).exists():
            return str(Path(root, *parts))
    pytest.skip(f"shared/data/{'/'.join(parts)} not available")


def native(a):
    return a.dtype.isnative


# -- ivar from variance ----------------------------------------------------------
def test_ivar_from_variance_kinds_and_unknown_errors():
    v = np.array([4.0, 0.0, -1.0, np.nan, np.inf], dtype=">f8")
    assert np.array_equal(sio.ivar_from_variance(v), [0.25, 0, 0, 0, 0])
    assert np.array_equal(sio.ivar_from_variance(np.array([2.0]), kind="sigma"), [0.25])
    assert np.array_equal(sio.ivar_from_variance(np.array([2.0]), kind="ivar"), [2.0])
    assert np.array_equal(sio.ivar_from_variance(np.array([2.0]), kind="isigma"), [4.0])
    assert native(sio.ivar_from_variance(v))
    with pytest.raises(ValueError, match="kind must be one of"):
        sio.ivar_from_variance(v, kind="rms")


# -- SDSS ---------------------------------------------------------------------------
def write_sdss(path, n=50):
    """An SDSS spec file: COADD table of big-endian columns, SPECOBJ with CLASS/Z."""
    rng = np.random.default_rng(0)
    loglam = (3.58 + 1e-4 * np.arange(n)).astype(">f4")
    flux = rng.normal(5, 1, n).astype(">f4")
    flux[3] = -0.5  # negative flux is data
    flux[7] = np.nan
    ivar = rng.uniform(0.5, 2, n).astype(">f4")
    ivar[9] = 0
    and_mask = np.zeros(n, dtype=">i4")
    and_mask[11] = 1 << 23  # BRIGHTSKY: any bit makes the pixel missing
    and_mask[12] = 1 << 4
    cols = [fits.Column("flux", "E", array=flux), fits.Column("loglam", "E", array=loglam),
            fits.Column("ivar", "E", array=ivar), fits.Column("and_mask", "J", array=and_mask),
            fits.Column("or_mask", "J", array=and_mask)]
    primary = fits.PrimaryHDU()
    primary.header["BUNIT"] = "1E-17 erg/cm^2/s/Ang"
    primary.header["VACUUM"] = True
    specobj = fits.BinTableHDU.from_columns(
        [fits.Column("CLASS", "6A", array=np.array([b"QSO"])),
         fits.Column("Z", "E", array=np.array([1.5], dtype=">f4"))], name="SPECOBJ")
    fits.HDUList([primary, fits.BinTableHDU.from_columns(cols, name="COADD"), specobj]) \
        .writeto(path)
    return flux, ivar, and_mask, loglam


def test_sdss_reproduced_file(tmp_path):
    path = tmp_path / "spec-0001-51000-0001.fits"
    flux, ivar, and_mask, loglam = write_sdss(path)
    s = sio.read_spectra(path)
    assert s.format == "sdss" and s.shape == (1, 50)
    assert s.medium == "vacuum" and s.wavelength_unit == "Angstrom"
    assert s.flux_unit == "1E-17 erg/cm^2/s/Ang"
    assert np.allclose(s.wavelength, 10 ** loglam.astype(np.float64))
    assert native(s.flux) and native(s.ivar) and native(s.wavelength)
    expected = np.where((and_mask != 0) | ~np.isfinite(flux), 0, ivar.astype(np.float64))
    assert np.array_equal(s.ivar[0], expected)
    assert s.flux[0, 3] == pytest.approx(-0.5) and s.ivar[0, 3] > 0  # never clipped
    assert np.all(np.isfinite(s.flux))
    assert s.meta["CLASS"] == "QSO" and s.meta["Z"] == pytest.approx(1.5)
    # bad_bits: honour only BRIGHTSKY (bit 23)
    t = sio.read_sdss(path, bad_bits=1 << 23)
    assert t.ivar[0, 11] == 0 and t.ivar[0, 12] > 0
    assert np.array_equal(sio.read_spectra(path, format="sdss").ivar, s.ivar)


def test_sdss_real_file():
    path = shared_data("surveys", "sdss_spec-0266-51602-0013.fits")
    s = sio.read_spectra(path)
    assert s.format == "sdss" and s.shape == (1, 3838)
    assert s.wavelength[0] == pytest.approx(3803.6, abs=0.1)
    assert s.wavelength[-1] == pytest.approx(9202.4, abs=0.1)
    assert np.allclose(np.diff(np.log10(s.wavelength)), 1e-4, rtol=0.01)  # float32 loglam
    with fits.open(path) as h:
        and_mask = np.asarray(h["COADD"].data["and_mask"])
        ivar = np.asarray(h["COADD"].data["ivar"], dtype=np.float64)
    assert np.array_equal(s.ivar[0] == 0, (and_mask != 0) | (ivar <= 0))
    assert s.meta["CLASS"] == "GALAXY" and s.meta["Z"] == pytest.approx(0.1213, abs=1e-3)
    # bit 4 (MANYBADCOLUMNS) is informational; honouring other bits keeps those pixels
    kept = sio.read_sdss(path, bad_bits=~(1 << 4) & 0x7FFFFFFF)
    assert (kept.ivar > 0).sum() > (s.ivar > 0).sum()


# -- DESI ---------------------------------------------------------------------------
def write_desi(path, grids, n_targets=2, offset=0.0):
    """A DESI coadd: per camera WAVELENGTH, FLUX, IVAR, MASK (big-endian), FIBERMAP."""
    rng = np.random.default_rng(1)
    hdus = [fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns([fits.Column("TARGETID", "K", array=np.arange(
                n_targets, dtype=">i8") + 39627)], name="FIBERMAP")]
    truth = {}
    for cam, (lo, hi) in grids.items():
        wave = np.arange(lo, hi + 1e-9, 0.8) + (offset if cam == "R" else 0.0)
        flux = rng.normal(3, 1, (n_targets, wave.size))
        ivar = rng.uniform(1, 4, (n_targets, wave.size))
        mask = np.zeros(flux.shape, dtype=">i4")
        mask[0, 2] = 1 << 1
        truth[cam] = (wave, flux, ivar, mask)
        hdus += [fits.ImageHDU(wave.astype(">f8"), name=f"{cam}_WAVELENGTH"),
                 fits.ImageHDU(flux.astype(">f4"), name=f"{cam}_FLUX"),
                 fits.ImageHDU(ivar.astype(">f4"), name=f"{cam}_IVAR"),
                 fits.ImageHDU(mask, name=f"{cam}_MASK")]
    hdus[2].header["BUNIT"] = "Angstrom"
    hdus[3].header["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"
    fits.HDUList(hdus).writeto(path)
    return truth


GRIDS = {"B": (3600.0, 3616.0), "R": (3612.0, 3628.0), "Z": (3624.8, 3640.0)}


def test_desi_reproduced_file_per_camera_and_merged(tmp_path):
    path = tmp_path / "coadd-1-1.fits"
    truth = write_desi(path, GRIDS)
    b = sio.read_desi(path, camera="b")
    wave, flux, ivar, _ = truth["B"]
    assert b.shape == flux.shape and np.allclose(b.wavelength, wave)
    assert native(b.flux) and b.medium == "vacuum"
    assert np.allclose(b.flux, flux.astype(np.float32))
    assert b.ivar[0, 2] == 0 and np.allclose(b.ivar[1], ivar[1].astype(np.float32))

    s = sio.read_spectra(path)  # detected, cameras merged
    assert s.format == "desi" and s.meta["CAMERAS"] == "brz" and s.meta["TARGETID"] == 39627
    assert s.wavelength[0] == 3600.0 and s.wavelength[-1] == pytest.approx(3640.0)
    assert np.allclose(np.diff(s.wavelength), 0.8)
    assert s.shape == (2, 51)
    # each grid pixel: inverse-variance weighted mean of the cameras covering it
    f32 = {c: (t[0], t[1].astype(np.float32).astype(np.float64),
               np.where(t[3] != 0, 0, t[2].astype(np.float32).astype(np.float64)))
           for c, t in truth.items()}
    for j, w in enumerate(s.wavelength):
        num = den = 0.0
        for wave, f, iv in f32.values():
            hit = np.isclose(wave, w)
            if hit.any():
                num, den = num + iv[:, hit][:, 0] * f[:, hit][:, 0], den + iv[:, hit][:, 0]
        assert np.allclose(s.ivar[:, j], den)
        assert np.allclose(s.flux[:, j], np.where(den > 0, num / np.where(den > 0, den, 1), 0))
    overlap = np.isclose(s.wavelength, 3614.4)
    assert np.allclose(s.ivar[:, overlap][:, 0], f32["B"][2][:, -3] + f32["R"][2][:, 3])
    with pytest.raises(ValueError, match="camera must be None or one of"):
        sio.read_desi(path, camera="x")


def test_desi_cameras_off_the_common_grid_are_refused(tmp_path):
    path = tmp_path / "coadd-off.fits"
    write_desi(path, GRIDS, offset=0.3)
    with pytest.raises(ValueError, match="offset by .* without interpolation"):
        sio.read_desi(path)
    assert sio.read_desi(path, camera="r").shape == (2, 21)  # one camera still reads


def test_desi_real_file():
    path = shared_data("surveys", "desi_coadd-4-80613-thru20210324.fits")
    s = sio.read_spectra(path)
    assert s.format == "desi" and s.shape == (1, 7781)
    assert s.wavelength[0] == pytest.approx(3600.0) and s.wavelength[-1] == pytest.approx(9824.0)
    b, r = sio.read_desi(path, camera="b"), sio.read_desi(path, camera="r")
    assert b.shape == (1, 2751) and r.shape == (1, 2326)
    # the B/R overlap (5760-5800 A): inverse-variance weighted mean of both cameras
    w = 5780.0
    jb, jr, js = (int(np.argmin(np.abs(x.wavelength - w))) for x in (b, r, s))
    den = b.ivar[0, jb] + r.ivar[0, jr]
    assert s.ivar[0, js] == pytest.approx(den, rel=1e-6)
    assert s.flux[0, js] == pytest.approx(
        (b.ivar[0, jb] * b.flux[0, jb] + r.ivar[0, jr] * r.flux[0, jr]) / den, rel=1e-5)


# -- LAMOST ---------------------------------------------------------------------------
def write_lamost(path, n=40):
    rng = np.random.default_rng(2)
    data = np.zeros((5, n), dtype=">f4")
    data[0] = rng.normal(100, 5, n)
    data[1] = rng.uniform(0.01, 0.02, n)
    data[2] = 1.0
    data[3, 5] = 1  # andmask
    data[4, 6] = 1  # ormask only: kept
    hdu = fits.PrimaryHDU(data)
    hdu.header["COEFF0"] = 3.5682
    hdu.header["COEFF1"] = 1e-4
    hdu.header["VACUUM"] = True
    hdu.header["CLASS"] = "STAR"
    fits.HDUList([hdu]).writeto(path)
    return data


def test_lamost_reproduced_file(tmp_path):
    path = tmp_path / "spec-55862-B0000_sp01-001.fits"
    data = write_lamost(path)
    s = sio.read_spectra(path)
    assert s.format == "lamost" and s.shape == (1, 40) and s.medium == "vacuum"
    assert np.allclose(s.wavelength, 10 ** (3.5682 + 1e-4 * np.arange(40)))
    assert native(s.flux)
    assert s.ivar[0, 5] == 0 and s.ivar[0, 6] > 0
    assert np.allclose(s.flux[0], data[0]) and s.meta["CLASS"] == "STAR"
    with pytest.raises(ValueError, match="COEFF0"):
        bad = tmp_path / "nocoeff.fits"
        fits.PrimaryHDU(data).writeto(bad)
        sio.read_lamost(bad)


@pytest.mark.parametrize("name", ["spec-55862-B6212_sp06-003.fits",
                                  "spec-55862-B6212_sp06-005.fits"])
def test_lamost_real_files(name):
    s = sio.read_spectra(shared_data("surveys", name))
    assert s.format == "lamost" and s.shape == (1, 3904)
    assert s.wavelength[0] == pytest.approx(10 ** 3.5682)
    assert s.wavelength[-1] == pytest.approx(10 ** (3.5682 + 1e-4 * 3903))
    with fits.open(shared_data("surveys", name)) as h:
        data = np.asarray(h[0].data, dtype=np.float64)
    assert np.array_equal(s.ivar[0] == 0, (data[3] != 0) | (data[1] <= 0))
    assert s.meta["CLASS"] == "STAR"


# -- read_spectra: detection and forcing ------------------------------------------
def test_format_detection_forcing_and_mismatch(tmp_path):
    write_sdss(tmp_path / "sdss.fits")
    write_lamost(tmp_path / "lamost.fits")
    sio.write_spectra(tmp_path / "image.fits", np.ones((2, 3)))
    assert sio.read_spectra(tmp_path / "image.fits").format == "image"
    assert sio.read_spectra(tmp_path / "lamost.fits").format == "lamost"
    with pytest.raises(ValueError, match="format must be None or one of"):
        sio.read_spectra(tmp_path / "sdss.fits", format="manga")
    with pytest.raises(ValueError, match="lacks the SDSS column"):
        sio.read_spectra(tmp_path / "image.fits", format="sdss", hdu=1)
    np.save(tmp_path / "x.npy", np.ones((2, 3)))
    with pytest.raises(ValueError, match="does not match"):
        sio.read_spectra(tmp_path / "x.npy", format="sdss")
    assert sio.read_spectra(tmp_path / "x.npy").format == "npy"


def test_table_layout_honours_an_andmask_column(tmp_path):
    # LAMOST DR8+ style: one row, array columns FLUX, IVAR, WAVELENGTH, ANDMASK
    d = 6
    cols = [fits.Column("FLUX", f"{d}E", array=np.ones((1, d))),
            fits.Column("IVAR", f"{d}E", array=np.full((1, d), 2.0)),
            fits.Column("WAVELENGTH", f"{d}D", array=np.linspace(4000, 5000, d)[None]),
            fits.Column("ANDMASK", f"{d}J", array=np.array([[0, 4, 0, 0, 0, 0]]))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(
        tmp_path / "t.fits")
    s = sio.read_spectra(tmp_path / "t.fits")
    assert s.format == "table" and np.array_equal(s.ivar[0], [2, 0, 2, 2, 2, 2])


def test_coadd_cameras_checks_its_input():
    with pytest.raises(ValueError, match="empty"):
        sio.coadd_cameras([])
    a = sio.Spectra(np.ones((1, 3)), np.ones((1, 3)), np.array([1.0, 2.0, 3.0]))
    b = sio.Spectra(np.ones((2, 3)), np.ones((2, 3)), np.array([3.0, 4.0, 5.0]))
    with pytest.raises(ValueError, match="same targets"):
        sio.coadd_cameras({"a": a, "b": b})
    c = sio.Spectra(np.ones((1, 3)), np.ones((1, 3)), np.array([3.0, 5.0, 7.0]))
    with pytest.raises(ValueError, match="different wavelength steps"):
        sio.coadd_cameras({"a": a, "c": c})
    merged = sio.coadd_cameras({"a": a, "d": sio.Spectra(np.full((1, 2), 3.0), np.full((1, 2), 3.0),
                                                          np.array([3.0, 4.0]))})
    assert np.allclose(merged.wavelength, [1, 2, 3, 4])
    assert np.allclose(merged.flux, [[1, 1, 2.5, 3]]) and np.allclose(merged.ivar, [[1, 1, 4, 3]])


def test_docstring_examples_of_the_readers_and_cube_modules():
    import doctest

    import specnmf._readers
    import specnmf.datasets
    import specnmf.ifu

    for module in (specnmf._readers, specnmf.ifu, specnmf.datasets):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__


def test_read_spectra_of_a_cube_gives_one_spectrum_per_spaxel():
    from specnmf.datasets import load_muse_crop, muse_crop_path

    s = sio.read_spectra(muse_crop_path())
    c = load_muse_crop()
    assert s.format == "cube" and s.spatial_shape == (12, 12) and s.shape == (144, 512)
    assert s.medium == "air" and s.wavelength_unit == "Angstrom"
    np.testing.assert_array_equal(s.flux[3 * 12 + 5], c.cube[3, 5])
    np.testing.assert_array_equal(s.ivar[3 * 12 + 5], c.ivar[3, 5])
