"""The bundled crop of a real MUSE cube (Abell 478), and how it was made."""

from __future__ import annotations

import os

import numpy as np

#: the crop of ``abell478_minicube.fits``: spaxels y 8-19, x 17-28 (12 x 12
#: around the brightest cluster galaxy's peak at y=14, x=23) and wavelength
#: pixels 1641-2152 (512 pixels, 6801.1-7439.9 Angstrom in air: continuum,
#: H-alpha + [N II] at ~7140 and [S II] at ~7310 Angstrom, sky residuals)
CROP = {"y": (8, 20), "x": (17, 29), "wave": (1641, 2153)}
CROP_FILE = "muse_abell478_crop.fits.gz"

# descriptive cards of the archive file's primary header kept in the crop
_PRIMARY_CARDS = ("TELESCOP", "INSTRUME", "OBJECT", "RA", "DEC", "EQUINOX", "RADESYS",
                  "EXPTIME", "MJD-OBS", "DATE-OBS", "ORIGIN")


def make_muse_crop(source, path, *, overwrite=False):
    """Write the bundled crop from the full cube (how ``muse_abell478_crop.fits.gz`` was made).

    The bundled file is this function's output compressed with ``gzip -n -9``
    (``path`` ending in ``.gz`` lets astropy compress it directly).

    Every extension keeps its data type and header (the ESO ``HDUCLASS``,
    ``ERRDATA`` pointers, units and WCS, with the reference pixels shifted to
    the crop), so the crop is a faithful small copy of the archive layout.

    Parameters
    ----------
    source : str or path-like
        ``abell478_minicube.fits`` (DATA / STAT / DQ).
    path : str or path-like
        Output FITS file.
    overwrite : bool, default=False
    """
    from astropy.io import fits

    (y0, y1), (x0, x1), (z0, z1) = CROP["y"], CROP["x"], CROP["wave"]
    with fits.open(source, memmap=False) as hdul:
        primary = fits.PrimaryHDU()
        for key in _PRIMARY_CARDS:
            if key in hdul[0].header:
                primary.header[key] = (hdul[0].header[key], hdul[0].header.comments[key])
        primary.header["COMMENT"] = ("Crop of the MUSE cube of Abell 478 (ESO programme "
                                     "094.A-0859(A)), as shipped in MPDAF 3.6 "
                                     "(mpdaf/data/sdetect/minicube.fits), BSD-3-Clause; "
                                     f"spaxels y {y0}:{y1}, x {x0}:{x1}, wavelength pixels "
                                     f"{z0}:{z1} (0-based, end exclusive).")
        hdus = [primary]
        for name in ("DATA", "STAT", "DQ"):
            src = hdul[name]
            header = src.header.copy()
            for key in ("CHECKSUM", "DATASUM"):
                header.remove(key, ignore_missing=True)
            if "CRPIX1" in header:
                header["CRPIX1"] -= x0
                header["CRPIX2"] -= y0
                header["CRPIX3"] -= z0
            data = np.ascontiguousarray(src.data[z0:z1, y0:y1, x0:x1])
            hdus.append(fits.ImageHDU(data, header=header, name=name))
        fits.HDUList(hdus).writeto(os.fspath(path), overwrite=overwrite, checksum=True)
