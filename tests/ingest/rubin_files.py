"""Files in Rubin's layouts, made from a simulated repository: ``deep_coadd`` FITS (afw ExposureF) and Object Parquet.

``write_deep_coadd`` writes what afw's ``ExposureF.writeFits`` writes for a coadd: an empty primary HDU with the
butler data ID (``HIERARCH LSST BUTLER DATAID ...``) and the archive ids (``PSF_ID``, ``AR_HDU``), then ``IMAGE``,
``MASK`` and ``VARIANCE`` image HDUs (``EXTTYPE``, ``INHERIT``, ``LTV1/2`` = -xy0, the WCS of the array's own pixels
with SIP and the ``A`` (``PHYSICAL``) WCS of tract pixels, ``BUNIT = 'nJy'``, ``MP_*`` mask-plane cards in Rubin's
bit order, not forcedphot's), then afw's archive binary tables (``ARCHIVE_INDEX``, an ``ARCHIVE_DATA`` ``CoaddPsf``).
The pixels are the simulated coadd's in nJy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.wcs import WCS, Sip

# Rubin's order of a non-cell coadd's planes (afw assigns bits as planes are added): deliberately not forcedphot's
RUBIN_BITS = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6, "SUSPECT": 7,
              "NO_DATA": 8, "CROSSTALK": 9, "NOT_DEBLENDED": 10, "UNMASKEDNAN": 11, "SENSOR_EDGE": 12, "CLIPPED": 13,
              "INEXACT_PSF": 14, "REJECTED": 15, "STREAK": 16}
SIP_A = {"A_2_0": 2e-7, "A_1_1": -1e-7, "A_0_2": 1.5e-7}  # up to 0.03 px at 450 px from CRPIX: SIP matters
SIP_B = {"B_2_0": -1e-7, "B_1_1": 2e-7, "B_0_2": 1e-7}


def tract_sip_wcs(tract_wcs: WCS) -> WCS:
    """The simulated tract's TAN WCS with a small SIP distortion (tract pixels, 0-based frame)."""
    h = tract_wcs.to_header(relax=True)
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["A_ORDER"] = h["B_ORDER"] = 2
    for k, v in {**SIP_A, **SIP_B}.items():
        h[k] = v
    return WCS(h)


def local_header(wcs: WCS, x0: int, y0: int) -> fits.Header:
    """``wcs`` (tract pixels) as the WCS of an array whose first pixel is tract pixel (x0, y0), plus afw's cards."""
    w = wcs.deepcopy()
    w.wcs.crpix = np.asarray(w.wcs.crpix) - [x0, y0]
    w.sip = Sip(w.sip.a, w.sip.b, None, None, np.asarray(w.wcs.crpix))
    h = w.to_header(relax=True)
    h["LTV1"], h["LTV2"] = -x0, -y0
    for k, v in (("CRPIX1A", 1.0), ("CRPIX2A", 1.0), ("CRVAL1A", float(x0)), ("CRVAL2A", float(y0)),
                 ("CTYPE1A", "LINEAR"), ("CTYPE2A", "LINEAR"), ("CUNIT1A", "PIXEL"), ("CUNIT2A", "PIXEL"),
                 ("WCSNAMEA", "PHYSICAL")):
        h[k] = v
    return h


def rubin_mask(mask: np.ndarray, bits: dict[str, int], crosstalk: np.ndarray | None = None) -> np.ndarray:
    """forcedphot mask bits (DEFAULT_MASK_PLANES) re-packed in Rubin's order, by plane name."""
    from forcedphot.flags import DEFAULT_MASK_PLANES

    out = np.zeros(mask.shape, np.int32)
    for name, bit in DEFAULT_MASK_PLANES.items():
        out |= ((mask >> bit) & 1).astype(np.int32) << RUBIN_BITS[name]
    if crosstalk is not None:
        out |= crosstalk.astype(np.int32) << RUBIN_BITS["CROSSTALK"]
    return out


def write_deep_coadd(path: Path, coadd, sip_wcs: WCS, *, psf_archive: bool = True, planes: dict | None = None,
                     extra_plane: str | None = None, hdus=("IMAGE", "MASK", "VARIANCE"),
                     band_card: bool = True) -> Path:
    """The simulated coadd as a Rubin deep_coadd file (see the module docstring)."""
    bits = dict(RUBIN_BITS if planes is None else planes)
    if extra_plane is not None:
        bits[extra_plane] = max(bits.values()) + 1
    x0, y0 = coadd.bbox.min_x, coadd.bbox.min_y
    primary = fits.PrimaryHDU()
    ph = primary.header
    if band_card:
        ph["HIERARCH LSST BUTLER DATAID BAND"] = coadd.band
    ph["HIERARCH LSST BUTLER DATAID SKYMAP"] = "tiny"
    ph["HIERARCH LSST BUTLER DATAID TRACT"] = coadd.tract
    ph["HIERARCH LSST BUTLER DATAID PATCH"] = coadd.patch
    ph["FILTER"] = f"{coadd.band}_sim"
    if psf_archive:
        ph["AR_HDU"] = 5  # 1-based, as afw
        ph["PSF_ID"] = 1
        ph["HIERARCH PHOTOCALIB_ID"] = 2
    wcs_cards = local_header(sip_wcs, x0, y0)
    yy, xx = np.mgrid[:coadd.bbox.height, :coadd.bbox.width]
    crosstalk = ((xx + yy) % 97 == 0)  # a Rubin-only plane with pixels set
    data = {
        "IMAGE": (coadd.image * coadd.photo_calib).astype(np.float32),
        "MASK": rubin_mask(np.asarray(coadd.mask), bits, crosstalk),
        "VARIANCE": (coadd.variance * coadd.photo_calib ** 2).astype(np.float32),
    }
    hdul = [primary]
    for name in hdus:
        h = fits.Header()
        h["EXTTYPE"] = name
        h["INHERIT"] = True
        h.update(wcs_cards)
        if name == "IMAGE":
            h["BUNIT"] = "nJy"
        if name == "MASK":
            for plane, bit in bits.items():
                h[f"HIERARCH MP_{plane}"] = bit  # afw writes long names as HIERARCH cards
        hdul.append(fits.ImageHDU(data[name], h, name=name))
    if psf_archive:
        index = fits.BinTableHDU.from_columns([fits.Column("id", "J", array=[1, 2]),
                                               fits.Column("cat.archive", "J", array=[1, 2])], name="ARCHIVE_INDEX")
        index.header["EXTTYPE"] = "ARCHIVE_INDEX"
        psf = fits.BinTableHDU.from_columns([fits.Column("id", "J", array=[1])], name="CoaddPsf")
        psf.header["EXTTYPE"] = "ARCHIVE_DATA"
        psf.header["AR_NAME"] = "CoaddPsf"
        hdul += [index, psf]
    fits.HDUList(hdul).writeto(path, overwrite=True)
    return path


def psf_file(path: Path, coadd) -> Path:
    """The coadd's PSF at its grid's middle node, as a FITS image (what a user gets from the stack)."""
    images = coadd.psf.images
    fits.writeto(path, np.asarray(images[images.shape[0] // 2, images.shape[1] // 2], np.float32), overwrite=True)
    return path


def object_table(path: Path, ref: pa.Table, sip_wcs: WCS, *, ref_band: str = "i", primary_only: bool = True,
                 extra: dict | None = None) -> Path:
    """Rubin's Object table (lsst-sdm-schemas names) for the simulated reference rows: positions through the
    deep_coadd's SIP WCS, so they land on the simulated centroids."""
    t = ref.to_pydict()
    keep = np.asarray(t["detect_isPrimary"], bool) if primary_only else np.ones(len(t["id"]), bool)
    x = np.asarray(t["centroid_x"], float)[keep]
    y = np.asarray(t["centroid_y"], float)[keep]
    ra, dec = sip_wcs.all_pix2world(x, y, 0)
    cols = {
        "objectId": np.asarray(t["id"], np.int64)[keep],
        "parentObjectId": np.asarray([p or 0 for p in t["parent"]], np.int64)[keep],
        "coord_ra": ra, "coord_dec": dec,
        "refBand": np.full(keep.sum(), ref_band),
        "shape_xx": np.asarray(t["shape_xx"], float)[keep], "shape_yy": np.asarray(t["shape_yy"], float)[keep],
        "shape_xy": np.asarray(t["shape_xy"], float)[keep],
        "tract": np.asarray(t["tract"], np.int64)[keep], "patch": np.asarray(t["patch"], np.int64)[keep],
    }
    if "kron_radius" in t:
        cols[f"{ref_band}_kronRad"] = np.asarray(t["kron_radius"], float)[keep]
    cols.update(extra or {})
    pq.write_table(pa.table(cols), path)
    return path
