"""``forcedphot ingest rubin``: Rubin ``deep_coadd`` files and an ``Object`` or ``deepCoadd_ref`` catalog.

A Rubin ``deep_coadd`` is one FITS file per (tract, patch, band) in the layout of afw's
``ExposureF``: an empty primary HDU holding the metadata (the butler data ID, the ids of the
persisted PSF, calibration and aperture corrections), ``IMAGE``, ``MASK`` and ``VARIANCE``
extensions (``EXTTYPE``; pixel origin in ``LTV1/2``, the patch's outer box in tract pixels;
WCS with SIP; ``BUNIT = 'nJy'``; mask planes named by ``MP_*`` cards), then afw's binary-table
archive (``ARCHIVE_INDEX``, ``ARCHIVE_DATA``), which holds the PSF, PhotoCalib, ApCorrMap and
coadd inputs. :func:`read_deep_coadd` reads the pixels with ``lsst.images``
(``MaskedImage.read_legacy``, astropy only) and maps each mask plane by its name onto
forcedphot's registry (:data:`forcedphot.flags.DEFAULT_MASK_PLANES`), so ``PixelFlags``' Rubin
plane lists apply. The archive needs ``lsst.afw`` (not on PyPI): its PSF is refused with one line
naming the HDU, and the PSF comes from ``--psf FILE`` or ``--psf estimate`` instead.

A ``CellCoadd`` file (lsst.images' own FITS format, ``DATAMODL`` ``.../cell_coadd-1.0.0`` in its primary
header: :func:`is_cell_coadd`) is read with lsst.images' reader, ``CellCoadd.read`` (:func:`read_cell_coadd`):
image, variance, mask planes by name (lsst.images' ``SATURATED``, ``COSMIC_RAY``, ... mapped back to afw's
``SAT``, ``CR``, ...), pixel origin, band, tract, patch, the FITS form of its sky projection, and its per-cell
PSFs, which become forcedphot's spatially varying PSF grid: one node per cell centre holding that cell's
kernel image (:func:`cell_psf_grid`; several patches' cells are merged by the pixels' nearest-centre rule).

The files of one band (several patches of one tract) are put on one pixel grid, the union of
their boxes, each pixel taken from the file whose box centre is nearest (L-infinity: a regular
patch grid's inner boxes); that grid's 0-based frame is the ingested repository's tract frame,
Rubin tract pixel = forcedphot pixel + ``xy0`` (recorded in ``repository.json`` under
``ingest.rubin``). The catalog's flavour is told from its columns (:func:`rubin_catalog`) and
mapped to forcedphot's reference columns without options. Everything then goes through
:func:`forcedphot.ingest.fits.ingest_fits` (the same checks, deblender, reference models and
writer), from standard FITS planes written to a temporary folder.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forcedphot.errors import InputError
from forcedphot.flags import DEFAULT_MASK_PLANES
from forcedphot.ingest.images import oneline

log = logging.getLogger(__name__)

PLANE_HDUS = ("IMAGE", "MASK", "VARIANCE")  # afw ExposureF's HDUs 1, 2, 3
# Rubin mask planes forcedphot has no plane for: read (lsst.images maps them) and left out, with an info line
RUBIN_ONLY_PLANES = ("CROSSTALK", "NOT_DEBLENDED", "UNMASKEDNAN", "STREAK", "SPIKE", "VIGNETTED", "PARTLY_VIGNETTED",
                     "ITL_DIP", "CELL_EDGE", "HIGH_VARIANCE", "SAT_TEMPLATE", "INJECTED", "INJECTED_CORE",
                     "INJECTED_TEMPLATE", "INJECTED_CORE_TEMPLATE")
DATAID_KEYS = {  # primary-header cards, first present wins
    "band": ("LSST BUTLER DATAID BAND", "BAND"),
    "tract": ("LSST BUTLER DATAID TRACT", "TRACT"),
    "patch": ("LSST BUTLER DATAID PATCH", "PATCH"),
    "skymap": ("LSST BUTLER DATAID SKYMAP", "SKYMAP"),
}
RUBIN_BANDS = ("u", "g", "r", "i", "z", "y")
PSF_WORKAROUND = ("give --psf FILE (a PSF image, e.g. deep_coadd.psf.computeKernelImage(position) written to FITS "
                  "where the LSST stack is installed), --psf estimate (an effective PSF of the catalog's stars) or "
                  "--psf-fwhm")


def _rubin_planes() -> set[str]:
    """Every legacy plane name lsst.images knows for Rubin images (coadds, visits, differences, templates)."""
    import lsst.images as m

    names = set(RUBIN_ONLY_PLANES)
    for f in ("get_legacy_visit_image_mask_planes", "get_legacy_difference_image_mask_planes",
              "get_legacy_deep_coadd_mask_planes", "get_legacy_non_cell_coadd_mask_planes",
              "get_legacy_template_mask_planes", "get_legacy_optional_mask_planes"):
        if hasattr(m, f):
            names |= set(getattr(m, f)())
    return names


def require_lsst_images():
    try:
        import lsst.images  # noqa: F401
    except ImportError as exc:
        raise InputError("ingest rubin reads deep_coadd files with lsst.images (Python >= 3.12): "
                         "pip install 'forcedphot[rubin]'") from exc


@dataclass
class RubinCoadd:
    """One deep_coadd file read: planes in its own box, forcedphot mask bits, WCS of its 0-based pixels."""

    path: Path
    band: str
    tract: int | None
    patch: int | None
    x0: int  # tract pixel of the first column (-LTV1)
    y0: int
    image: np.ndarray  # float32, in ``unit``
    variance: np.ndarray
    mask: np.ndarray  # int32, bits of DEFAULT_MASK_PLANES
    wcs: object  # astropy WCS of the array's 0-based pixels (SIP included)
    unit: str | None  # BUNIT as lsst.images parsed it
    psf_hdu: str | None  # "FILE[n NAME]" of the afw-persisted PSF, if any
    planes: dict = field(default_factory=dict)  # Rubin plane -> pixels set, of the planes left out
    sky_projection: object | None = None  # lsst.images' projection (tract pixels -> sky)
    cell_psf: object | None = None  # a CellCoadd's per-cell PSFs as a PsfGrid, nodes at cell centres (tract pixels)
    kind: str = "deep_coadd"  # or "CellCoadd"

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    @property
    def label(self) -> str:
        return str(self.path)


def _card(header, keys):
    for k in keys:
        if k in header:
            return header[k]
    return None


def _hdu_list(hdul) -> str:
    return ", ".join(f"{i} {h.name}" for i, h in enumerate(hdul))


def _afw_psf_hdu(hdul, path: Path) -> str | None:
    """``FILE[n NAME]`` of the HDU holding afw's persisted PSF, or None when the file has none."""
    primary = hdul[0].header
    psf_id = primary.get("PSF_ID")
    for i, h in enumerate(hdul[1:], 1):
        names = f"{h.name} {h.header.get('AR_NAME', '')}"
        if h.header.get("EXTTYPE") == "ARCHIVE_DATA" and "psf" in names.lower():
            ar_name = h.header.get("AR_NAME")
            return f"{path}[{i} {h.name}]" + (f" (afw {ar_name})" if ar_name else "")
    if psf_id:
        index = next((i for i, h in enumerate(hdul) if h.header.get("EXTTYPE") == "ARCHIVE_INDEX"), None)
        return f"{path}[{index} ARCHIVE_INDEX]" if index is not None else f"{path}[0 PSF_ID={psf_id}]"
    return None


def read_deep_coadd(path, *, band: str | None = None, drop_planes=()) -> RubinCoadd:
    """Read one deep_coadd file (afw ExposureF layout) with lsst.images; one-line errors naming file and HDU."""
    require_lsst_images()
    import astropy.units as u
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS
    from lsst.images import GeneralFrame, MaskedImage, MaskPlane

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: deep_coadd file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(path) as hdul:
                for i, want in enumerate(PLANE_HDUS, 1):
                    h = hdul[i] if i < len(hdul) else None
                    kind = None if h is None else (h.header.get("EXTTYPE") or h.name)
                    if kind != want:
                        raise InputError(f"{path}[{i}]: no {want} HDU (HDUs: {_hdu_list(hdul)}); a deep_coadd (afw "
                                         "ExposureF) has IMAGE, MASK and VARIANCE as HDUs 1-3; for other layouts "
                                         "use forcedphot ingest fits")
                primary = hdul[0].header.copy()
                image_header = hdul[1].header.copy()
                mask_header = hdul[2].header
                legacy = {c.keyword[3:]: int(c.value) for c in mask_header.cards if c.keyword.startswith("MP_")}
                if not legacy:
                    raise InputError(f"{path}[2 MASK]: no MP_* mask-plane cards: the mask bits cannot be named")
                psf_hdu = _afw_psf_hdu(hdul, path)
    except InputError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read as FITS ({oneline(exc)})") from exc
    known = _rubin_planes() | set(DEFAULT_MASK_PLANES)
    dropped = set(drop_planes)
    unknown = sorted(n for n in legacy if n not in known and n not in dropped)
    if unknown:
        raise InputError(f"{path}[2 MASK]: mask plane(s) {', '.join(unknown)} (MP_* cards) are neither Rubin's nor "
                         "forcedphot's; pass --drop-mask-plane NAME for each to leave them out")
    plane_map = {n: MaskPlane(n, DESCRIPTIONS.get(n, n)) for n in legacy}
    try:
        mi = MaskedImage.read_legacy(str(path), plane_map=plane_map, fits_wcs_frame=GeneralFrame(unit=u.pix))
    except Exception as exc:  # noqa: BLE001 - lsst.images raises many types; all mean "unreadable"
        raise InputError(f"{path}: lsst.images cannot read it as a deep_coadd ({oneline(exc)})") from exc
    bbox = mi.bbox
    x0, y0 = int(bbox.x.start), int(bbox.y.start)
    names = set(mi.mask.schema.names)
    mask = np.zeros(mi.image.array.shape, np.int32)
    left_out = {}
    for n in names:
        bits = mi.mask.get(n)
        if n in DEFAULT_MASK_PLANES:
            mask |= bits.astype(np.int32) << DEFAULT_MASK_PLANES[n]
        else:
            left_out[n] = int(np.count_nonzero(bits))
    b = band
    header_band = _card(primary, DATAID_KEYS["band"])
    if b is None:
        b = header_band
    if b is None and primary.get("FILTER"):
        m = re.fullmatch(r"([ugrizy])(_.*)?", str(primary["FILTER"]).strip())
        b = m.group(1) if m else None
    if b is None:
        raise InputError(f"{path}[0]: no band in the header (LSST BUTLER DATAID BAND, BAND or FILTER); give --band")
    try:
        wcs = WCS(image_header, relax=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}[1 IMAGE]: cannot parse the WCS ({oneline(exc)})") from exc
    if not wcs.has_celestial:
        raise InputError(f"{path}[1 IMAGE]: no celestial WCS")
    tract, patch = (_card(primary, DATAID_KEYS[k]) for k in ("tract", "patch"))
    unit = None if mi.unit is None else mi.unit.to_string()
    return RubinCoadd(path=path, band=str(b), tract=None if tract is None else int(tract),
                      patch=None if patch is None else int(patch), x0=x0, y0=y0,
                      image=np.asarray(mi.image.array, np.float32), variance=np.asarray(mi.variance.array, np.float32),
                      mask=mask, wcs=wcs.celestial, unit=unit, psf_hdu=psf_hdu, planes=left_out,
                      sky_projection=mi.image.sky_projection)


CELL_COADD_MODEL = "/cell_coadd-"  # in the DATAMODL card lsst.images writes in a CellCoadd's primary header


def is_cell_coadd(path) -> bool:
    """True for a file lsst.images wrote as a ``CellCoadd`` (its primary header's ``DATAMODL`` schema URL)."""
    from astropy.io import fits

    try:
        return CELL_COADD_MODEL in str(fits.getheader(path, 0).get("DATAMODL", ""))
    except (OSError, ValueError):
        return False


def _hdu_label(path: Path, name: str) -> str:
    """``FILE[n NAME]`` of a named HDU (``FILE[NAME]`` if it cannot be found)."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            return next((f"{path}[{i} {h.name}]" for i, h in enumerate(hdul) if h.name == name), f"{path}[{name}]")
    except (OSError, ValueError):
        return f"{path}[{name}]"


def cell_psf_grid(psf, *, x0: int = 0, y0: int = 0, label: str = "CellCoadd PSF"):
    """An ``lsst.images`` ``CellPointSpreadFunction`` as forcedphot's :class:`~forcedphot.psf.PsfGrid`.

    One node per cell of the PSF's bounds, at the cell's centre (pixel ``start + (size - 1) / 2`` of its
    bounding box, minus ``(x0, y0)``: the frame the grid is wanted in), holding that cell's kernel image
    (centrally cropped to :data:`~forcedphot.ingest.psfimage.MAX_PSF_SIZE`, normalised to unit sum, float32 as
    coadds store it). At a cell centre the grid's PSF is that cell's; between centres it is the bilinear blend of
    the four nearest cells (Rubin's ``compute_kernel_image`` takes the PSF of the cell holding the pixel: a
    step at each cell edge). A missing cell (no data, NaN in lsst.images) takes the nearest present cell's PSF.
    """
    from lsst.images.cells import CellIJ

    from forcedphot.ingest.psfimage import MAX_PSF_SIZE
    from forcedphot.psf import PsfGrid

    bounds = psf.bounds
    grid = bounds.grid
    start, stop = bounds.subgrid_start, bounds.subgrid_stop
    sy, sx = int(grid.cell_shape.y), int(grid.cell_shape.x)
    rows = np.arange(start.i, stop.i)
    cols = np.arange(start.j, stop.j)
    xs = grid.bbox.x.start + cols * sx + (sx - 1) / 2 - x0
    ys = grid.bbox.y.start + rows * sy + (sy - 1) / 2 - y0
    k = psf.kernel_bbox.y.size
    if psf.kernel_bbox.x.size != k or k % 2 == 0:
        raise InputError(f"{label}: kernel images of {psf.kernel_bbox.y.size}x{psf.kernel_bbox.x.size} pixels; "
                         "forcedphot needs square images of odd size")
    crop = max(0, (k - MAX_PSF_SIZE) // 2)
    kk = k - 2 * crop
    images = np.zeros((rows.size, cols.size, kk, kk), np.float64)
    present = np.zeros((rows.size, cols.size), bool)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            cell = CellIJ(i=int(i), j=int(j))
            if cell in bounds.missing:
                continue
            img = np.asarray(psf[cell].array, np.float64)[crop:k - crop, crop:k - crop]
            total = img.sum()
            if not (np.isfinite(img).all() and total > 0):
                continue
            images[a, b] = img / total
            present[a, b] = True
    if not present.any():
        raise InputError(f"{label}: no cell has a usable PSF image (all missing or without flux)")
    if not present.all():
        pi, pj = np.nonzero(present)
        for a, b in zip(*np.nonzero(~present)):
            n = int(np.argmin((pi - a) ** 2 + (pj - b) ** 2))
            images[a, b] = images[pi[n], pj[n]]
        log.info("%s: %d of %d cells have no PSF (no data); each takes its nearest cell's", label,
                 int((~present).sum()), present.size)
    if crop:
        log.warning("%s: cell PSF images %dx%d cropped to %dx%d", label, k, k, kk, kk)
    return PsfGrid(xs, ys, images.astype(np.float32))


def _cell_plane_names() -> dict[str, str]:
    """lsst.images' plane name -> afw's (forcedphot's) name, for the planes lsst.images renames."""
    import lsst.images as m

    out = {}
    for f in ("get_legacy_non_cell_coadd_mask_planes", "get_legacy_deep_coadd_mask_planes"):
        if hasattr(m, f):
            out.update({v.name: k for k, v in getattr(m, f)().items() if v is not None and v.name != k})
    return out


def read_cell_coadd(path, *, band: str | None = None, drop_planes=()) -> RubinCoadd:
    """Read an ``lsst.images`` ``CellCoadd`` file with lsst.images' own reader (``CellCoadd.read``): image, mask
    (planes by name, lsst.images' names mapped back to afw's), variance, pixel origin, band, tract, patch, the FITS
    form of its sky projection and the per-cell PSFs (:func:`cell_psf_grid`, nodes in tract pixels)."""
    require_lsst_images()
    from lsst.images.cells import CellCoadd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: CellCoadd file not found")
    try:
        cc = CellCoadd.read(str(path))
    except Exception as exc:  # noqa: BLE001 - lsst.images raises many types; all mean "unreadable"
        raise InputError(f"{path}: lsst.images cannot read it as a CellCoadd ({oneline(exc)})") from exc
    renamed = _cell_plane_names()
    known_rubin = _rubin_planes() | set(renamed)
    dropped = set(drop_planes)
    mask = np.zeros(cc.image.array.shape, np.int32)
    left_out, unknown = {}, []
    for n in cc.mask.schema.names:
        name = n if n in DEFAULT_MASK_PLANES else renamed.get(n, n)
        bits = cc.mask.get(n)
        if name in DEFAULT_MASK_PLANES:
            mask |= bits.astype(np.int32) << DEFAULT_MASK_PLANES[name]
        elif name in known_rubin or n in dropped or name in dropped:
            left_out[n] = int(np.count_nonzero(bits))
        else:
            unknown.append(n)
    if unknown:
        raise InputError(f"{_hdu_label(path, 'MASK')}: mask plane(s) {', '.join(sorted(unknown))} are neither "
                         "Rubin's nor forcedphot's; pass --drop-mask-plane NAME for each to leave them out")
    b = band or cc.band
    if b is None:
        raise InputError(f"{path}: the CellCoadd names no band; give --band")
    bbox = cc.bbox
    x0, y0 = int(bbox.x.start), int(bbox.y.start)
    wcs = cc.sky_projection.as_fits_wcs(bbox)
    if wcs is None:
        wcs = cc.sky_projection.as_fits_wcs(bbox, allow_approximation=True)
        if wcs is not None:
            log.warning("%s: the sky projection is not a FITS WCS; its FITS approximation is used", path)
    if wcs is None or not wcs.has_celestial:
        raise InputError(f"{_hdu_label(path, 'JSON')}: the CellCoadd's sky projection has no FITS WCS form")
    try:
        patch = int(cc.patch.id)
    except AttributeError:
        patch = None
    cell_psf = cell_psf_grid(cc.psf, label=_hdu_label(path, "PSF"))
    return RubinCoadd(path=path, band=str(b), tract=int(cc.tract), patch=patch, x0=x0, y0=y0,
                      image=np.asarray(cc.image.array, np.float32), variance=np.asarray(cc.variance.array, np.float32),
                      mask=mask, wcs=wcs.celestial, unit=None if cc.unit is None else cc.unit.to_string(),
                      psf_hdu=None, planes=left_out, sky_projection=cc.sky_projection, cell_psf=cell_psf,
                      kind="CellCoadd")


def read_coadd_file(path, *, band: str | None = None, drop_planes=()) -> RubinCoadd:
    """A ``CellCoadd`` (lsst.images) or a ``deep_coadd`` (afw ExposureF layout), told apart by the file."""
    if is_cell_coadd(path):
        return read_cell_coadd(path, band=band, drop_planes=drop_planes)
    return read_deep_coadd(path, band=band, drop_planes=drop_planes)


DESCRIPTIONS = {
    "BAD": "bad pixel", "SAT": "saturated", "INTRP": "interpolated", "CR": "cosmic ray", "EDGE": "detection edge",
    "DETECTED": "detected source", "DETECTED_NEGATIVE": "detected negative source", "SUSPECT": "near saturation",
    "NO_DATA": "no input data", "SENSOR_EDGE": "near a sensor edge", "CLIPPED": "clipped artifact",
    "INEXACT_PSF": "PSF inexact", "REJECTED": "an input was rejected",
}


# -- one band on one grid ------------------------------------------------------------------
@dataclass
class BandMosaic:
    band: str
    x0: int  # tract pixel of the grid's (0, 0)
    y0: int
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    wcs: object  # of the grid's 0-based pixels
    unit: str | None
    files: list[RubinCoadd]
    psf_grid: object | None = None  # the cells' PSFs on the grid's pixels (every file a CellCoadd), else None


def _shifted(wcs, dx: float, dy: float):
    """The WCS of pixels shifted by (dx, dy): pixel p of the new frame is p + (dx, dy) of the old one."""
    w = wcs.deepcopy()
    w.wcs.crpix = np.asarray(w.wcs.crpix) - [dx, dy]
    if w.sip is not None:  # SIP is about CRPIX: it moves with it
        from astropy.wcs import Sip

        w.sip = Sip(w.sip.a, w.sip.b, w.sip.ap, w.sip.bp, np.asarray(w.wcs.crpix))
    return w


def mosaic(files: list[RubinCoadd]) -> BandMosaic:
    """The band's files on the union of their boxes; a pixel comes from the file whose centre is nearest."""
    band = files[0].band
    x0 = min(f.x0 for f in files)
    y0 = min(f.y0 for f in files)
    x1 = max(f.x0 + f.shape[1] for f in files)
    y1 = max(f.y0 + f.shape[0] for f in files)
    h, w = y1 - y0, x1 - x0
    first = files[0]
    wcs = _shifted(first.wcs, x0 - first.x0, y0 - first.y0)
    for f in files[1:]:  # one tract: every file's WCS maps its pixels as the first one's does
        xs, ys = np.meshgrid(np.linspace(0, f.shape[1] - 1, 5), np.linspace(0, f.shape[0] - 1, 5))
        ra, dec = f.wcs.all_pix2world(xs.ravel(), ys.ravel(), 0)
        gx, gy = wcs.all_world2pix(ra, dec, 0)
        off = np.hypot(gx - (xs.ravel() + f.x0 - x0), gy - (ys.ravel() + f.y0 - y0)).max()
        if off > 0.01:
            raise InputError(f"{f.path}[1 IMAGE]: its WCS and pixel origin place it {off:.3g} px from where "
                             f"{first.path} does: not one tract's pixel grid (ingest one tract at a time)")
    psf_grid = _mosaic_psf(files, x0, y0)
    if len(files) == 1:
        f = files[0]
        return BandMosaic(band, x0, y0, f.image, f.variance, f.mask, wcs, f.unit, files, psf_grid)
    image = np.full((h, w), np.nan, np.float32)
    variance = np.full((h, w), np.nan, np.float32)
    mask = np.full((h, w), 1 << DEFAULT_MASK_PLANES["NO_DATA"], np.int32)
    best = np.full((h, w), np.inf)
    for f in files:
        fh, fw = f.shape
        cy, cx = (fh - 1) / 2, (fw - 1) / 2
        yy, xx = np.ogrid[:fh, :fw]
        dist = np.maximum(np.abs(xx - cx), np.abs(yy - cy))
        sl = np.s_[f.y0 - y0:f.y0 - y0 + fh, f.x0 - x0:f.x0 - x0 + fw]
        take = dist < best[sl]
        best[sl] = np.where(take, dist, best[sl])
        image[sl] = np.where(take, f.image, image[sl])
        variance[sl] = np.where(take, f.variance, variance[sl])
        mask[sl] = np.where(take, f.mask, mask[sl])
    units = {f.unit for f in files}
    if len(units) > 1:
        raise InputError(f"band {band}: the files' units differ ({sorted(map(str, units))})")
    return BandMosaic(band, x0, y0, image, variance, mask, wcs, first.unit, files, psf_grid)


def _mosaic_psf(files: list[RubinCoadd], x0: int, y0: int):
    """The files' cell PSFs as one PsfGrid on the mosaic's pixels: nodes at the union of the cell centres, each
    node's image from the file whose box centre is nearest (the pixels' rule) among the files with a cell there,
    else (no file has that node: cell grids that do not line up) the nearest node's. None unless every file is
    a CellCoadd."""
    from forcedphot.psf import PsfGrid

    if not all(f.cell_psf is not None for f in files):
        if any(f.cell_psf is not None for f in files):
            log.warning("band %s: CellCoadd and deep_coadd files mixed; the cells' PSFs are not used", files[0].band)
        return None
    if len(files) == 1:
        g = files[0].cell_psf
        return PsfGrid(g.x - x0, g.y - y0, g.images)
    sizes = {f.cell_psf.size for f in files}
    if len(sizes) > 1:
        raise InputError(f"band {files[0].band}: the CellCoadds' PSF images differ in size ({sorted(sizes)})")
    xs = np.unique(np.concatenate([f.cell_psf.x for f in files]))
    ys = np.unique(np.concatenate([f.cell_psf.y for f in files]))
    k = sizes.pop()
    images = np.zeros((ys.size, xs.size, k, k), np.float32)
    best = np.full((ys.size, xs.size), np.inf)
    for f in files:
        g = f.cell_psf
        cx, cy = f.x0 + (f.shape[1] - 1) / 2, f.y0 + (f.shape[0] - 1) / 2
        jx = np.searchsorted(xs, g.x)
        iy = np.searchsorted(ys, g.y)
        dist = np.maximum(np.abs(g.x[None, :] - cx), np.abs(g.y[:, None] - cy))
        sub = best[np.ix_(iy, jx)]
        take = dist < sub
        best[np.ix_(iy, jx)] = np.where(take, dist, sub)
        cur = images[np.ix_(iy, jx)]
        images[np.ix_(iy, jx)] = np.where(take[..., None, None], g.images, cur)
    empty = ~np.isfinite(best)
    if empty.any():
        pi, pj = np.nonzero(~empty)
        for a, b in zip(*np.nonzero(empty)):
            n = int(np.argmin((ys[pi] - ys[a]) ** 2 + (xs[pj] - xs[b]) ** 2))
            images[a, b] = images[pi[n], pj[n]]
        log.info("band %s: %d PSF grid nodes lie in no file's cells (cell grids not aligned); each takes the nearest "
                 "node's PSF", files[0].band, int(empty.sum()))
    return PsfGrid(xs - x0, ys - y0, images)


# -- the catalog -----------------------------------------------------------------------------
@dataclass
class RubinCatalog:
    flavour: str  # "Object" or "deepCoadd_ref"
    columns: dict  # normalised columns: id, parent, coord_ra, coord_dec (deg) and, where present, shape_*,
    #                kron_radius, cmodel_{exp,dev}_{major,minor,theta}, detect_isPrimary
    ref_band: str | None  # the most common refBand, if the catalog has one
    mapped: dict  # normalised column -> the catalog's column(s) it came from


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(f"{path}: catalog file not found")
    try:
        return pq.read_table(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read as Parquet (Rubin's Object and deepCoadd_ref tables are Parquet; "
                         f"other catalogs: forcedphot ingest fits) ({oneline(exc)})") from exc


def _unit(table, name: str) -> str | None:
    """A column's unit from the Parquet metadata astropy writes (ArrowAstropy), if any."""
    import json

    meta = (table.schema.metadata or {}).get(b"table_meta_yaml")
    if meta:
        m = re.search(rf"name: {re.escape(name)}\n\s+unit: ([^\n]+)", meta.decode(errors="replace"))
        if m:
            return m.group(1).strip().strip("'\"")
    field_meta = table.schema.field(name).metadata or {}
    for k in (b"unit", b"units"):
        if k in field_meta:
            return field_meta[k].decode()
    try:
        pandas = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
        for c in pandas.get("columns", []):
            if c.get("name") == name and isinstance(c.get("metadata"), dict) and c["metadata"].get("unit"):
                return c["metadata"]["unit"]
    except ValueError:
        pass
    return None


def _np(table, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.types as pat

    col = table.column(name)
    if col.null_count and (pat.is_integer(col.type) or pat.is_floating(col.type)):
        col = col.cast(pa.float64())
    return col.to_numpy(zero_copy_only=False)


def _per_ref_band(table, ref_band: np.ndarray, template: str, bands) -> np.ndarray | None:
    """Each row's value of ``template.format(band=its refBand)`` (NaN where that column is missing)."""
    present = [b for b in bands if template.format(band=b) in table.column_names]
    if not present:
        return None
    out = np.full(table.num_rows, np.nan)
    for b in present:
        rows = ref_band == b
        if rows.any():
            out[rows] = np.asarray(_np(table, template.format(band=b)), float)[rows]
    return out


def rubin_catalog(path) -> RubinCatalog:
    """Read a Rubin ``Object`` table (lsst-sdm-schemas names: ``objectId``, ``parentObjectId``, ``coord_ra``/
    ``coord_dec`` in degrees, ``refBand``, ``shape_xx`` ... in pixel**2, ``{band}_kronRad``, and the CModel half-light
    ellipses ``{band}_cModel_{exp,dev}_reff_major``/``_minor`` (arcsec) and ``_theta`` (degrees), taken from each row's
    refBand) or a ``deepCoadd_ref`` table (afw names: ``id``, ``parent``, ``coord_ra``/``coord_dec`` in radians unless
    the file says degrees, ``detect_isPrimary``, ``deblend_nChild``, ``shape_xx`` or ``slot_Shape_xx`` ...)."""
    path = Path(path)
    t = _read_parquet(path)
    names = set(t.column_names)
    cols, mapped = {}, {}
    if {"objectId", "coord_ra", "coord_dec"} <= names:
        flavour, id_c, parent_c = "Object", "objectId", "parentObjectId"
    elif {"id", "parent", "coord_ra", "coord_dec"} <= names:
        flavour, id_c, parent_c = "deepCoadd_ref", "id", "parent"
    else:
        shown = ", ".join(t.column_names[:20]) + (" ..." if t.num_columns > 20 else "")
        raise InputError(f"{path}: neither a Rubin Object table (objectId, coord_ra, coord_dec) nor a deepCoadd_ref "
                         f"table (id, parent, coord_ra, coord_dec); columns: {shown}; for other catalogs use "
                         "forcedphot ingest fits")
    cols["id"] = np.asarray(_np(t, id_c))
    mapped["id"] = id_c
    if parent_c in names:
        parent = np.asarray(_np(t, parent_c))
        linked = np.isin(parent, cols["id"]) & (parent != 0)
        if linked.any():
            cols["parent"] = np.where(linked, parent, 0)
            mapped["parent"] = parent_c
        else:  # Rubin's Object holds primary rows only: children whose parents are not in the table
            log.info("%s: no %s names a row of the table (an Object table holds no blend parents); rows taken as "
                     "isolated, overlapping ones are deblended at ingest", path, parent_c)
    for c in ("coord_ra", "coord_dec"):
        v = np.asarray(_np(t, c), float)
        unit = _unit(t, c)
        radians = unit in ("rad", "radian") if unit else flavour == "deepCoadd_ref"
        cols[c] = np.rad2deg(v) if radians else v
        mapped[c] = f"{c} ({'rad' if radians else 'deg'})"
    ref_band = np.asarray(_np(t, "refBand")).astype(str) if "refBand" in names else None
    main_band = None
    if ref_band is not None and ref_band.size:
        values, counts = np.unique(ref_band, return_counts=True)
        main_band = str(values[np.argmax(counts)])
        mapped["refBand"] = "refBand"
    for k in ("xx", "yy", "xy"):
        for c in (f"shape_{k}", f"slot_Shape_{k}", f"base_SdssShape_{k}"):
            if c in names:
                cols[f"shape_{k}"] = np.asarray(_np(t, c), float)
                mapped[f"shape_{k}"] = c
                break
    bands = sorted({c.split("_", 1)[0] for c in names if re.match(r"[a-zA-Z0-9]{1,8}_", c)})
    if ref_band is not None:
        kron = _per_ref_band(t, ref_band, "{band}_kronRad", bands)
        if kron is not None:
            cols["kron_radius"] = kron
            mapped["kron_radius"] = "{refBand}_kronRad"
        for stage in ("exp", "dev"):
            parts = {}
            for part, templates in (("major", ("{band}_cModel_%s_reff_major",)),
                                    ("minor", ("{band}_cModel_%s_reff_minor",)),
                                    ("theta", ("{band}_cModel_%s_theta", "{band}_cModel_%s_reff_theta"))):
                for tpl in templates:
                    v = _per_ref_band(t, ref_band, tpl % stage, bands)
                    if v is not None:
                        parts[part] = v
                        mapped[f"cmodel_{stage}_{part}"] = "{refBand}" + (tpl % stage)[len("{band}"):]
                        break
            if len(parts) == 3:
                for part, v in parts.items():
                    cols[f"cmodel_{stage}_{part}"] = v
            else:
                for part in ("major", "minor", "theta"):
                    mapped.pop(f"cmodel_{stage}_{part}", None)
    if "detect_isPrimary" in names:
        cols = _primary_rows(cols, np.asarray(_np(t, "detect_isPrimary"), bool), path)
        mapped["detect_isPrimary"] = "detect_isPrimary (rows kept: primary ones and their parents)"
    return RubinCatalog(flavour, cols, main_band, mapped)


def _primary_rows(cols: dict, primary: np.ndarray, path: Path) -> dict:
    """The rows Rubin measures into its Object table: primary ones, and the parents of those (kept as catalog
    families). A deepCoadd_ref also holds every object of the patch's border (primary in the neighbouring patch)
    and sky objects; several patches' tables hold the border objects twice, at one position."""
    keep = primary.copy()
    if "parent" in cols:
        ids = cols["id"]
        parents = cols["parent"]
        for _ in range(8):  # parents of kept rows, up the hierarchy
            wanted = np.isin(ids, parents[keep & (parents != 0)]) & ~keep
            if not wanted.any():
                break
            keep |= wanted
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: %d of %d rows left out: not detect_isPrimary and no primary child (patch-border objects, "
                 "primary in a neighbouring patch, and sky objects)", path, dropped, keep.size)
    return {k: v[keep] for k, v in cols.items()}


def _write_catalog(cat: RubinCatalog, path: Path):
    """The normalised catalog as Parquet, and the CatalogSpec fields that read it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: v for k, v in cat.columns.items() if k != "detect_isPrimary"}), path)
    spec = {"ra": "coord_ra", "dec": "coord_dec", "id": "id", "key": "id", "positions": "sky", "frame": "icrs"}
    if "parent" in cat.columns:
        spec["parent"] = "parent"
    if all(f"shape_{k}" in cat.columns for k in ("xx", "yy", "xy")):
        spec.update(xx="shape_xx", yy="shape_yy", xy="shape_xy")
    if "kron_radius" in cat.columns:
        spec.update(kron="kron_radius", kron_unit="pix")
    for stage in ("exp", "dev"):
        if f"cmodel_{stage}_major" in cat.columns:
            spec[f"cmodel_{stage}"] = ",".join(f"cmodel_{stage}_{p}" for p in ("major", "minor", "theta"))
    return spec


# -- the ingest ------------------------------------------------------------------------------
def _psf_for(psf, band: str):
    """The --psf value for a band: a dict band -> value, or one value for all bands."""
    if isinstance(psf, dict):
        return psf.get(band, psf.get(None))
    return psf


def ingest_rubin(repo_root, coadds, catalog, *, psf=None, psf_fwhm=None, band: str | None = None,
                 drop_planes=(), patch_size: int | None = None, patch_border: int | None = None,
                 ref_band: str | None = None, overwrite: bool = False, deblend: str | None = None,
                 duplicates: str = "refuse"):
    """A repository from Rubin deep_coadd files (any bands and patches of one tract) and an Object or
    deepCoadd_ref Parquet catalog. ``psf``: a PSF image file or ``"estimate"``, or a dict band -> either (key None:
    every other band); ``psf_fwhm``: a Gaussian PSF instead (``"0.7arcsec"``). The afw PSF inside deep_coadd files
    cannot be read (it needs lsst.afw): without ``psf`` or ``psf_fwhm`` for a band, the ingest stops naming its HDU.
    ``coadds`` may also be (or mix in) lsst.images ``CellCoadd`` files: a band whose files are all CellCoadds gets
    their cells' PSFs as its PSF grid unless ``psf`` or ``psf_fwhm`` names it."""
    from astropy.io import fits

    from forcedphot.ingest.fits import ingest_fits
    from forcedphot.ingest.specs import BandSpec, CatalogSpec

    coadds = [Path(c) for c in coadds]
    if not coadds:
        raise InputError("no deep_coadd files; give --coadd FILE ...")
    files = [read_coadd_file(c, band=band, drop_planes=drop_planes) for c in coadds]
    tracts = sorted({f.tract for f in files if f.tract is not None})
    if len(tracts) > 1:
        raise InputError(f"the deep_coadd files are of tracts {tracts}; ingest one tract at a time")
    by_band: dict[str, list[RubinCoadd]] = {}
    for f in files:
        by_band.setdefault(f.band, []).append(f)
    for f in files:
        if f.planes:
            log.info("%s[2 MASK]: Rubin plane(s) with no forcedphot plane left out: %s", f.path,
                     ", ".join(f"{n} ({k} px)" for n, k in sorted(f.planes.items())))
    cat = rubin_catalog(catalog)
    mosaics = {b: mosaic(fs) for b, fs in by_band.items()}
    origins = {(m.x0, m.y0) for m in mosaics.values()}
    shapes = {m.image.shape for m in mosaics.values()}
    if len(origins) > 1 or len(shapes) > 1:
        raise InputError("the bands cover different patches (pixel boxes "
                         + ", ".join(f"{b}: x0,y0={m.x0},{m.y0} {m.image.shape[1]}x{m.image.shape[0]}"
                                     for b, m in mosaics.items()) + "); give the same patches in every band")
    for name, given in (("--psf", psf), ("--psf-fwhm", psf_fwhm)):
        unknown = sorted(b for b in (given or {}) if isinstance(given, dict) and b is not None and b not in mosaics)
        if unknown:
            raise InputError(f"{name} names band(s) {', '.join(unknown)}; the files' bands are "
                             f"{', '.join(sorted(mosaics))}")
    specs = []
    with tempfile.TemporaryDirectory(prefix="forcedphot-rubin-") as tmp:
        tmp = Path(tmp)
        for b, m in mosaics.items():
            psf_b = _psf_for(psf, b)
            fwhm_b = _psf_for(psf_fwhm, b)
            grid_b, grid_record = None, None
            if m.psf_grid is not None and psf_b is None and fwhm_b is None:
                grid_b = m.psf_grid
                grid_record = {"cell_coadd": [f"{f.path}[PSF]" for f in m.files],
                               "nodes": [int(grid_b.x.size), int(grid_b.y.size)], "size": grid_b.size}
            elif m.psf_grid is not None:
                log.info("band %s: the CellCoadd's cell PSFs are not used: %s given", b,
                         "--psf" if psf_b is not None else "--psf-fwhm")
            if psf_b is None and fwhm_b is None and grid_b is None:
                hdu = next((f.psf_hdu for f in m.files if f.psf_hdu), None)
                if hdu is not None:
                    raise InputError(f"{hdu}: the PSF is afw's persisted PSF, which needs lsst.afw (not on PyPI); "
                                     f"{PSF_WORKAROUND}")
                raise InputError(f"{m.files[0].path}: band {b} has no PSF; {PSF_WORKAROUND}")
            header = m.wcs.to_header(relax=True)
            if m.unit:
                header["BUNIT"] = m.unit
            stem = tmp / f"deep_coadd_{b}"
            fits.writeto(f"{stem}_image.fits", m.image, header)
            fits.writeto(f"{stem}_variance.fits", m.variance, header)
            fits.writeto(f"{stem}_mask.fits", m.mask, header)
            specs.append(BandSpec(name=b, image=f"{stem}_image.fits", variance=f"{stem}_variance.fits",
                                  mask=f"{stem}_mask.fits", mask_bits=dict(DEFAULT_MASK_PLANES),
                                  psf=None if psf_b is None else str(psf_b), psf_fwhm=fwhm_b,
                                  psf_grid=grid_b, psf_grid_record=grid_record))
        cat_path = tmp / f"{Path(catalog).stem}.parquet"
        spec = CatalogSpec(path=cat_path, duplicates=duplicates, **_write_catalog(cat, cat_path))
        ref = ref_band or (cat.ref_band if cat.ref_band in mosaics else None)
        first = next(iter(mosaics.values()))
        record = {
            "xy0": [first.x0, first.y0], "tract": tracts[0] if tracts else None,
            "flavour": cat.flavour, "columns": cat.mapped,
            "coadds": {b: [{"file": str(f.path), "kind": f.kind, "patch": f.patch, "xy0": [f.x0, f.y0],
                            "planes_left_out": f.planes} for f in m.files] for b, m in mosaics.items()},
        }

        def hook(meta: dict) -> dict:
            ing = meta["ingest"]
            for b, m in mosaics.items():
                entry = ing["bands"][b]
                for k in ("image", "mask"):
                    if k in entry:
                        entry[k] = ", ".join(f"{f.path}[{k.upper()}]" for f in m.files)
                if "variance" in entry.get("noise", {}):
                    entry["noise"]["variance"] = ", ".join(f"{f.path}[VARIANCE]" for f in m.files)
                if entry.get("from", "").startswith("header"):
                    entry["from"] = entry["from"].replace("header", "deep_coadd header", 1)
            ing["catalog"]["path"] = str(catalog)
            ing["rubin"] = record
            return meta

        repo = ingest_fits(repo_root, specs, spec, patch_size=patch_size, patch_border=patch_border,
                           ref_band=ref, overwrite=overwrite, deblend=deblend, metadata_hook=hook)
    return repo
