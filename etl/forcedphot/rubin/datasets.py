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
``forcedphot_cell_coadd``  CellCoadd       skymap, tract, patch, band             instead of the coadd and its PSF table:
                                                                                  pixels, planes and per-cell PSFs
``forcedphot_forced_source`` ArrowTable    skymap, tract, patch, band             output: forced_source (forcedphot's columns)
``forcedphot_object``      ArrowTable      skymap, tract, patch                   output: the object table of the patch
=========================  ==============  =====================================  ===========================================

By default the PSF is a dataset of its own (a table), not a ``CellCoadd``: forcedphot's PSF is a grid of
images at arbitrary node positions that :class:`forcedphot.psf.PsfGrid` interpolates, and the table keeps
it exactly. A ``CellCoadd`` (``forcedphot_cell_coadd``, storage class ``CellCoadd``; ``export_butler(...,
cell_coadd=True)`` and the task's ``use_cell_coadd``) carries the pixels and one PSF per cell of a regular
cell grid instead: read back as a grid with one node per cell centre (:func:`coadd_from_cell_coadd`), which
is the coadd's own grid only when its nodes are the cell centres (:func:`coadd_to_cell_coadd`). The reference catalog is ``ArrowTable`` rather
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
CELL_COADD = "forcedphot_cell_coadd"
DEFAULT_CELL_SIZE = 150  # pixels: Rubin's cell coadds' cells
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
# with export_butler(cell_coadd=True): the coadd and its PSF as one CellCoadd, instead of COADD and COADD_PSF
CELL_INPUT_TYPES = tuple(t for t in INPUT_TYPES if t[0] not in (COADD, COADD_PSF)) + (
    (CELL_COADD, "CellCoadd", BAND_DIMENSIONS),)


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


def cell_psf_images(psf: PsfGrid, grid_bbox: Box, cell: int) -> np.ndarray:
    """(ny, nx, K, K) float64 kernel images of the cells of size ``cell`` tiling ``grid_bbox`` from its min corner:
    each the bilinear blend of ``psf``'s node images at the cell's centre (clamped as :class:`PsfGrid` clamps),
    without a sub-pixel shift. A cell whose centre is a node gets that node's image exactly."""
    nx = -(-grid_bbox.width // cell)
    ny = -(-grid_bbox.height // cell)
    cx = grid_bbox.min_x + np.arange(nx) * cell + (cell - 1) / 2
    cy = grid_bbox.min_y + np.arange(ny) * cell + (cell - 1) / 2
    ix, tx = psf._weights(cx, psf.x)
    iy, ty = psf._weights(cy, psf.y)
    ix1 = ix if psf.x.size == 1 else ix + 1
    iy1 = iy if psf.y.size == 1 else iy + 1
    nodes = psf.node_images()
    out = np.zeros((ny, nx, psf.size, psf.size))
    for a in range(ny):
        for b in range(nx):
            blend = {}
            for jy, jx, w in ((iy[a], ix[b], (1 - ty[a]) * (1 - tx[b])), (iy[a], ix1[b], (1 - ty[a]) * tx[b]),
                              (iy1[a], ix[b], ty[a] * (1 - tx[b])), (iy1[a], ix1[b], ty[a] * tx[b])):
                if w > 0:
                    blend[(jy, jx)] = blend.get((jy, jx), 0.0) + w
            if len(blend) == 1:  # on a node (or clamped to one): its image exactly
                out[a, b] = nodes[next(iter(blend))]
            else:
                out[a, b] = sum(w * nodes[key] for key, w in blend.items())
    return out


def coadd_to_cell_coadd(coadd: Coadd, *, skymap: str, tract_box: Box, cell_size: int = DEFAULT_CELL_SIZE):
    """The coadd as an ``lsst.images.cells.CellCoadd``: its image (unit nJy if ``photo_calib`` is 1, else adu), mask
    (planes by
    name), variance, tract WCS (``TractFrame``) and a ``CellPointSpreadFunction`` of ``cell_size`` pixel cells
    tiling the coadd's box from its first pixel, each cell's PSF the PSF grid's at the cell centre
    (:func:`cell_psf_images`). The grid reads back (:func:`forcedphot.ingest.rubin.cell_psf_grid`) with one
    node per cell centre: the coadd's own grid exactly when its nodes are the cell centres, else a resampling."""
    import astropy.units as u
    from lsst.images import Box as LBox
    from lsst.images import Image, SkyProjection, TractFrame
    from lsst.images import YX
    from lsst.images.cells import CellCoadd, CellGrid, CellGridBounds, CellPointSpreadFunction

    mi = coadd_to_masked_image(coadd)
    b = coadd.bbox
    nx = -(-b.width // cell_size)
    ny = -(-b.height // cell_size)
    grid_box = Box(b.min_x, b.min_y, b.min_x + nx * cell_size - 1, b.min_y + ny * cell_size - 1)
    grid = CellGrid(bbox=LBox.factory[grid_box.min_y:grid_box.max_y + 1, grid_box.min_x:grid_box.max_x + 1],
                    cell_shape=YX(y=cell_size, x=cell_size))
    psf = CellPointSpreadFunction(cell_psf_images(coadd.psf, grid_box, cell_size),
                                  CellGridBounds(grid=grid, bbox=grid.bbox))
    # nJy when calibrated so; else ADU ("image units": the calib table's photo_calib converts). A scaled unit
    # (photo_calib nJy) does not survive lsst.images' FITS round trip exactly (its factor is written rounded).
    unit = u.nJy if coadd.photo_calib == 1.0 else u.adu
    yx0 = (b.min_y, b.min_x)
    frame = TractFrame(skymap=skymap, tract=int(coadd.tract),
                       bbox=LBox.factory[tract_box.min_y:tract_box.max_y + 1, tract_box.min_x:tract_box.max_x + 1])
    projection = SkyProjection.from_fits_wcs(coadd.wcs, frame, pixel_bounds=frame.bbox)
    return CellCoadd(Image(mi.image.array, yx0=yx0, unit=unit), mask=mi.mask,
                     variance=Image(mi.variance.array, yx0=yx0, unit=unit**2), sky_projection=projection,
                     band=coadd.band, psf=psf)


def coadd_from_cell_coadd(cell_coadd, calib: pa.Table) -> Coadd:
    """A forcedphot :class:`Coadd` from a ``CellCoadd`` (pixels, mask planes by name, per-cell PSFs as a PSF grid
    with one node per cell centre) and the coadd's calib table (calibration, WCS header, mask registry, aperture
    corrections, input polygons). A ``CellCoadd`` whose pixel unit converts to nJy must agree with the table's
    calibration (to 1e-4: lsst.images writes a scaled unit's factor rounded)."""
    import astropy.units as u

    from forcedphot.ingest.rubin import cell_psf_grid

    row = calib.to_pylist()[0]
    njy = None
    try:
        njy = float((1.0 * cell_coadd.unit).to(u.nJy).value)
    except (u.UnitConversionError, AttributeError, TypeError):
        pass
    if njy is not None and not np.isclose(njy, row["photo_calib"], rtol=1e-4, atol=0):
        raise ValueError(f"CellCoadd pixel unit {cell_coadd.unit} is {njy:g} nJy; the calib table says "
                         f"{row['photo_calib']:g} nJy per image unit")
    return _coadd(cell_coadd, cell_psf_grid(cell_coadd.psf, label="CellCoadd PSF"), row)


def _plane(mask, name: str) -> np.ndarray:
    """A mask plane by forcedphot's (afw's) name, or by the name lsst.images gives it (SAT is SATURATED ...)."""
    if name in mask.schema.names:
        return mask.get(name)
    import lsst.images as m

    legacy = m.get_legacy_non_cell_coadd_mask_planes().get(name)
    if legacy is not None and legacy.name in mask.schema.names:
        return mask.get(legacy.name)
    return np.zeros(mask.array.shape[:2], bool)


def coadd_from_datasets(masked_image, psf: pa.Table, calib: pa.Table) -> Coadd:
    """A forcedphot :class:`Coadd` from the three datasets (the inverse of the functions above)."""
    prow = psf.to_pylist()[0]
    k, gx, gy = prow["psf_size"], prow["psf_grid_x"], prow["psf_grid_y"]
    images = psf.column("psf_images").chunk(0).values.to_numpy().reshape(len(gy), len(gx), k, k)
    return _coadd(masked_image, PsfGrid(gx, gy, images), calib.to_pylist()[0])


def _coadd(masked_image, psf_grid: PsfGrid, row: dict) -> Coadd:
    from astropy.io import fits
    from astropy.wcs import WCS

    planes = MaskPlanes.from_json(json.loads(row["mask_planes"]))
    image = masked_image.image.array
    h, w = image.shape
    y0, x0 = masked_image.bbox.y.start, masked_image.bbox.x.start
    if (x0, y0) != (row["bbox_min_x"], row["bbox_min_y"]):
        raise ValueError(f"coadd origin {(x0, y0)} differs from its calib table's {(row['bbox_min_x'], row['bbox_min_y'])}")
    mask = np.zeros((h, w), np.int32)
    for name, bit in planes.bits.items():
        mask |= _plane(masked_image.mask, name).astype(np.int32) << np.int32(bit)
    return Coadd(tract=row["tract"], patch=row["patch"], band=row["band"], bbox=Box(x0, y0, x0 + w - 1, y0 + h - 1),
                 image=np.asarray(image, np.float32), mask=mask,
                 variance=np.asarray(masked_image.variance.array, np.float32),
                 wcs=WCS(fits.Header.fromstring(row["wcs_header"], sep="\n")), psf=psf_grid,
                 photo_calib=row["photo_calib"], mask_planes=planes, ap_corr=ApCorrMap.from_json(row["ap_corr"]),
                 inputs=CoaddInputs.from_json(row["input_polygons"]))
