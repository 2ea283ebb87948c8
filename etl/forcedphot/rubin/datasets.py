"""forcedphot's inputs as Rubin butler datasets, and back, value for value.

Dataset types (all storage classes need no afw; dimensions in brackets):

=========================  ==============  =====================================  ===========================================
dataset type               storage class   dimensions                             holds
=========================  ==============  =====================================  ===========================================
``forcedphot_skyMap``      ArrowTable      skymap                                 the skymap table (tract WCS, patch boxes)
``forcedphot_ref``         ArrowTable      skymap, tract, patch                   the reference catalog (``ref`` dataset)
``forcedphot_coadd``       MaskedImageV2   skymap, tract, patch, band             image, mask planes (by name), variance, xy0
``forcedphot_coadd_psf``   ArrowTable      skymap, tract, patch, band             the PSF grid: node positions and images
``forcedphot_coadd_calib`` ArrowTable      skymap, tract, patch, band             photo_calib, WCS header, mask registry,
                                                                                  aperture corrections, input polygons
``forcedphot_footprints``  ArrowTable      skymap, tract, patch, band             heavy footprints (spans and values)
``forcedphot_forced_source`` ArrowTable    skymap, tract, patch, band             output: forced_source (forcedphot's columns)
``forcedphot_object``      ArrowTable      skymap, tract, patch                   output: the object table of the patch
=========================  ==============  =====================================  ===========================================

The PSF is a dataset of its own (a table), not a ``CellCoadd``: forcedphot's PSF is a grid of images at
arbitrary node positions that :class:`forcedphot.psf.PsfGrid` interpolates; a ``CellCoadd`` carries one
PSF per cell of a regular cell grid with its own cell geometry, which would change the interpolation
(and so the numbers). The table keeps the grid exactly. The reference catalog is ``ArrowTable`` rather
than ``ArrowAstropy``: nullable 64-bit ``externalId`` and nullable booleans survive Arrow exactly, an
astropy round trip turns them into masked columns of other types (a connection may still read it as
``ArrowAstropy``: the butler converts).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from forcedphot.apcorr import ApCorrMap
from forcedphot.coadd_inputs import CoaddInputs
from forcedphot.flags import MaskPlanes
from forcedphot.io.coadd import Coadd
from forcedphot.psf import PsfGrid
from forcedphot.skymap import Box

SKYMAP = "forcedphot_skyMap"
REF = "forcedphot_ref"
COADD = "forcedphot_coadd"
COADD_PSF = "forcedphot_coadd_psf"
COADD_CALIB = "forcedphot_coadd_calib"
FOOTPRINTS = "forcedphot_footprints"
FORCED_SOURCE = "forcedphot_forced_source"
OBJECT = "forcedphot_object"

PATCH_DIMENSIONS = ("skymap", "tract", "patch")
BAND_DIMENSIONS = ("skymap", "tract", "patch", "band")
# (name, storage class, dimensions) of the inputs `forcedphot export butler` puts
INPUT_TYPES = (
    (SKYMAP, "ArrowTable", ("skymap",)),
    (REF, "ArrowTable", PATCH_DIMENSIONS),
    (COADD, "MaskedImageV2", BAND_DIMENSIONS),
    (COADD_PSF, "ArrowTable", BAND_DIMENSIONS),
    (COADD_CALIB, "ArrowTable", BAND_DIMENSIONS),
    (FOOTPRINTS, "ArrowTable", BAND_DIMENSIONS),
)


def mask_schema(planes: MaskPlanes):
    """lsst.images' mask schema with forcedphot's planes at their bit numbers (gaps are None)."""
    from lsst.images import MaskPlane, MaskSchema

    by_bit = {b: n for n, b in planes.bits.items()}
    return MaskSchema([MaskPlane(by_bit[i], f"forcedphot bit {i}") if i in by_bit else None
                       for i in range(max(by_bit) + 1)])


def coadd_to_masked_image(coadd: Coadd):
    """The coadd's image, mask (each plane by name) and variance as an ``lsst.images.MaskedImage``."""
    from lsst.images import Image, Mask, MaskedImage

    yx0 = (coadd.bbox.min_y, coadd.bbox.min_x)
    image = Image(np.array(coadd.image, np.float32), yx0=yx0)
    mask = Mask(0, schema=mask_schema(coadd.mask_planes), bbox=image.bbox)
    values = np.asarray(coadd.mask, np.int64)
    unknown = values & ~np.int64(coadd.mask_planes.bitmask(*coadd.mask_planes.bits))
    if unknown.any():
        raise ValueError(f"{coadd.data_id}: mask bits {int(np.bitwise_or.reduce(unknown.ravel()))} are not in its "
                         "mask-plane registry")
    for name, bit in coadd.mask_planes.bits.items():
        mask.set(name, (values >> bit & 1).astype(bool))
    variance = Image(np.array(coadd.variance, np.float32), yx0=yx0)
    return MaskedImage(image, mask=mask, variance=variance)


def psf_table(coadd: Coadd) -> pa.Table:
    """The PSF grid as a one-row table: node positions (tract pixels) and the (ny, nx, K, K) images."""
    psf = coadd.psf
    images = np.ascontiguousarray(psf.images, np.float32).ravel()
    return pa.table({"psf_size": pa.array([psf.size], pa.int32()),
                     "psf_grid_x": pa.array([psf.x.tolist()], pa.list_(pa.float64())),
                     "psf_grid_y": pa.array([psf.y.tolist()], pa.list_(pa.float64())),
                     "psf_images": pa.ListArray.from_arrays(pa.array([0, images.size], pa.int32()), pa.array(images))})


def calib_table(coadd: Coadd) -> pa.Table:
    """The coadd's other metadata as a one-row table (what the engine reads besides pixels and PSF)."""
    return pa.table({
        "tract": pa.array([coadd.tract], pa.int64()), "patch": pa.array([coadd.patch], pa.int64()),
        "band": [coadd.band], "bbox_min_x": pa.array([coadd.bbox.min_x], pa.int64()),
        "bbox_min_y": pa.array([coadd.bbox.min_y], pa.int64()),
        "photo_calib": pa.array([float(coadd.photo_calib)], pa.float64()),
        "wcs_header": [coadd.wcs.to_header(relax=True).tostring(sep="\n")],
        "mask_planes": [json.dumps(coadd.mask_planes.to_json())],
        "ap_corr": pa.array([coadd.ap_corr.to_json() if coadd.ap_corr else None], pa.string()),
        "input_polygons": pa.array([coadd.inputs.to_json() if coadd.inputs else None], pa.string()),
    })


def coadd_from_datasets(masked_image, psf: pa.Table, calib: pa.Table) -> Coadd:
    """A forcedphot :class:`Coadd` from the three datasets (the inverse of the functions above)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    row = calib.to_pylist()[0]
    planes = MaskPlanes.from_json(json.loads(row["mask_planes"]))
    image = masked_image.image.array
    h, w = image.shape
    y0, x0 = masked_image.bbox.y.start, masked_image.bbox.x.start
    if (x0, y0) != (row["bbox_min_x"], row["bbox_min_y"]):
        raise ValueError(f"coadd origin {(x0, y0)} differs from its calib table's {(row['bbox_min_x'], row['bbox_min_y'])}")
    mask = np.zeros((h, w), np.int32)
    for name, bit in planes.bits.items():
        mask |= masked_image.mask.get(name).astype(np.int32) << np.int32(bit)
    prow = psf.to_pylist()[0]
    k, gx, gy = prow["psf_size"], prow["psf_grid_x"], prow["psf_grid_y"]
    images = psf.column("psf_images").chunk(0).values.to_numpy().reshape(len(gy), len(gx), k, k)
    return Coadd(tract=row["tract"], patch=row["patch"], band=row["band"], bbox=Box(x0, y0, x0 + w - 1, y0 + h - 1),
                 image=np.asarray(image, np.float32), mask=mask,
                 variance=np.asarray(masked_image.variance.array, np.float32),
                 wcs=WCS(fits.Header.fromstring(row["wcs_header"], sep="\n")), psf=PsfGrid(gx, gy, images),
                 photo_calib=row["photo_calib"], mask_planes=planes, ap_corr=ApCorrMap.from_json(row["ap_corr"]),
                 inputs=CoaddInputs.from_json(row["input_polygons"]))
