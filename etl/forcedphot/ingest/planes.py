"""One band's pixels as the coadd planes: background-subtracted image, variance, mask bits.

Unusable pixels keep the convention of the rest of forcedphot (and of the simulator):
NO_DATA in the mask and a non-finite value in the image or variance, which every
measurement treats as invalid (zero weight, flagged). That covers NaN/inf image pixels,
inverse variance 0 and infinite or zero variance. Negative variances are errors: they
mean a wrong plane or a wrong ``--variance/--invvar/--sigma`` choice. ``estimate`` for the
background, sigma or PSF measures them on the image (:mod:`forcedphot.ingest.estimate`),
with one warning each saying how.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from forcedphot.errors import InputError
from forcedphot.flags import MaskPlanes
from forcedphot.ingest import estimate as est
from forcedphot.ingest.calib import Calibration, band_calibration
from forcedphot.ingest.grid import Grid
from forcedphot.ingest.images import parse_hdu_spec, read_plane
from forcedphot.ingest.psfimage import gaussian_psf, load_psf, parse_fwhm, psf_fwhm_pixels
from forcedphot.ingest.specs import BandSpec

log = logging.getLogger(__name__)


@dataclass
class BandData:
    name: str
    label: str  # the image file[HDU]
    image: np.ndarray  # (H, W) float32, image units, background subtracted
    variance: np.ndarray  # (H, W) float32, image units^2, NaN where unusable
    mask: np.ndarray  # (H, W) int32 bits of MaskPlanes()
    psf: np.ndarray  # (K, K) float64, unit sum
    psf_fwhm: float  # pixels
    photo_calib: float  # nJy per image unit
    record: dict = field(default_factory=dict)  # where each plane came from (repository.json "ingest")
    psf_estimate: est.PsfEstimate | None = None  # --psf estimate: written beside the repository
    psf_grid: object | None = None  # a spatially varying PSF (PsfGrid, image pixels); ``psf`` is then its
    #                                 node nearest the image centre (deblender, footprint sizes)

    def psf_grid_for(self, cut):
        """The coadd's PSF grid for the box ``cut``: the band's grid's nodes that bracket the box (the same PSF at
        every pixel of it as the whole grid), else ``psf`` as one node at the box's centre."""
        from forcedphot.psf import PsfGrid

        if self.psf_grid is not None:
            g = self.psf_grid

            def span(nodes, lo, hi):
                a = max(int(np.searchsorted(nodes, lo, side="right")) - 1, 0)
                b = min(int(np.searchsorted(nodes, hi, side="left")) + 1, nodes.size)
                return slice(min(a, nodes.size - 1), max(b, a + 1))

            sx, sy = span(g.x, cut.min_x, cut.max_x), span(g.y, cut.min_y, cut.max_y)
            return PsfGrid(g.x[sx], g.y[sy], g.images[sy, sx])
        return PsfGrid([(cut.min_x + cut.max_x) / 2], [(cut.min_y + cut.max_y) / 2], self.psf[None, None])


def _noise_to_variance(data: np.ndarray, kind: str, label: str, usable: np.ndarray) -> np.ndarray:
    """Variance (float32) from a variance, inverse-variance or sigma plane; NaN where unusable."""
    d = np.asarray(data, np.float64)
    finite = np.isfinite(d)
    negative = finite & (d < 0) & usable
    if negative.any():
        raise InputError(f"{label}: {int(negative.sum())} pixels have a negative {kind} "
                         f"(min {d[negative].min():g}); is this the right plane and option?")
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "invvar":
            var = np.where(finite & (d > 0), 1.0 / d, np.nan)
        elif kind == "sigma":
            var = np.where(finite & (d > 0), d * d, np.nan)
        else:
            var = np.where(finite & (d > 0), d, np.nan)
    var[~np.isfinite(var)] = np.nan
    return var.astype(np.float32)


def _mask_bits(data: np.ndarray, mapping: dict[str, int] | None, label: str, planes: MaskPlanes) -> np.ndarray:
    d = np.asarray(data)
    if not np.issubdtype(d.dtype, np.integer):
        if not (np.all(np.isfinite(d)) and np.all(d == np.round(d))):
            raise InputError(f"{label}: mask must hold integers, found {d.dtype} values that are not")
        d = d.astype(np.int64)
    d = d.astype(np.int64)
    if mapping is None:
        return np.where(d != 0, planes.bitmask("BAD"), 0).astype(np.int32)
    out = np.zeros(d.shape, np.int32)
    for plane, bit in mapping.items():
        out |= np.where((d >> bit) & 1, planes.bitmask(plane), 0).astype(np.int32)
    return out


def _constant(value) -> float | None:
    """A number given instead of a plane (``--background 12.5``, ``--sigma 0.05``), else None."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return None if parse_hdu_spec(text).path.exists() else number


def _plane_or_constant(value, *, what: str, shape, image_label: str) -> tuple[np.ndarray, str]:
    number = _constant(value)
    if number is not None:
        return np.full(shape, number, np.float32), f"constant {what} {number:g}"
    return read_plane(value, what=what, shape=shape, image_label=image_label)


def _describe_background(b: est.BackgroundEstimate, fwhm: float) -> str:
    return (f"photutils Background2D statistics of {b.box} px boxes (SExtractor mode of {est.CLIP_SIGMA:g}-sigma "
            f"clipped pixels; bicubic spline, outlying boxes median-filtered), sources masked ({100 * b.masked:.1f}% "
            f"of pixels: {est.DETECT_SIGMA:g}-sigma detections dilated by {max(1, round(fwhm))} px and "
            f"{est.CATALOG_MASK_FWHM * fwhm:.1f} px discs at catalog positions)")


def _psf(spec: BandSpec, grid: Grid) -> tuple[np.ndarray | None, dict]:
    """The given PSF (image or Gaussian FWHM) and its record; (None, {}) for an estimate. For a PSF grid: its
    node nearest the image centre (the deblender's and the footprints' PSF)."""
    if spec.psf_grid is not None:
        g = spec.psf_grid
        h, w = grid.shape
        j = int(np.argmin(np.abs(g.x - (w - 1) / 2)))
        i = int(np.argmin(np.abs(g.y - (h - 1) / 2)))
        node = np.asarray(g.images[i, j], np.float64)
        return node / node.sum(), dict(spec.psf_grid_record or {"grid": f"{g.x.size}x{g.y.size} nodes"})
    if spec.psf is not None and not est.is_estimate(spec.psf):
        return load_psf(spec.psf, oversampling=spec.psf_oversampling, image_scale=grid.pixel_scale,
                        mismatch=spec.psf_scale_mismatch)
    if spec.psf is None:
        fwhm = parse_fwhm(spec.psf_fwhm, unit=spec.psf_fwhm_unit, pixel_scale=grid.pixel_scale,
                          label=f"band {spec.name}")
        return gaussian_psf(fwhm, label=f"band {spec.name}"), {"gaussian_fwhm_px": fwhm}
    return None, {}


def load_band(spec: BandSpec, image: np.ndarray, image_label: str, grid: Grid, *,
              calibration: Calibration | None = None, positions=None) -> BandData:
    """Read and check every plane of one band on the common grid.

    ``calibration`` (default: from the band's zero point or flux unit) comes from
    :func:`forcedphot.ingest.calib.band_calibration`, which also reads the image header.
    ``positions`` (x, y) of the catalog objects (pixels) mask sources for ``--background
    estimate`` and ``--sigma estimate`` and are the candidate stars of ``--psf estimate``.
    """
    planes = MaskPlanes()
    shape = grid.shape
    where = f"band {spec.name} ({image_label})"
    x, y = (np.zeros(0), np.zeros(0)) if positions is None else (np.asarray(p, float) for p in positions)
    img = np.array(image, dtype=np.float32)
    record = {"image": image_label}
    mask = np.zeros(shape, np.int32)
    if spec.mask is not None:
        data, mlabel = read_plane(spec.mask, what="mask", shape=shape, image_label=image_label)
        mask |= _mask_bits(data, spec.mask_mapping(), mlabel, planes)
        record["mask"] = mlabel
    psf, record["psf"] = _psf(spec, grid)
    if spec.background is not None and not est.is_estimate(spec.background):
        bkg_plane, record["background"] = _plane_or_constant(spec.background, what="background", shape=shape,
                                                             image_label=image_label)
        img -= bkg_plane
    kind, noise_spec = spec.noise
    estimates = [n for n, v in (("background", spec.background), ("sigma", noise_spec), ("psf", spec.psf))
                 if est.is_estimate(v)]
    fwhm = None
    if estimates:
        # detection planes mark no defect (Rubin coadds set DETECTED on every source): stars stay candidates
        unusable = ~np.isfinite(img) | ((mask & ~planes.bitmask("DETECTED", "DETECTED_NEGATIVE")) != 0)
        if spec.psf_fwhm is not None:  # a Gaussian PSF, or the first guess of --psf estimate
            fwhm = parse_fwhm(spec.psf_fwhm, unit=spec.psf_fwhm_unit, pixel_scale=grid.pixel_scale, label=where)
        elif psf is not None:
            fwhm = psf_fwhm_pixels(psf)
        else:
            fwhm = est.rough_fwhm(img, unusable, x, y, label=where)
    if "background" in estimates or "sigma" in estimates:
        bkg = est.estimate_background(img, unusable, fwhm=fwhm, x=x, y=y, box=spec.background_box, label=where)
        how = _describe_background(bkg, fwhm)
        if "background" in estimates:
            img -= bkg.background
            log.warning("%s: background estimated with %s; median %.5g", where, how, np.nanmedian(bkg.background))
            record["background"] = {"estimate": bkg.record()}
        if "sigma" in estimates:
            log.warning("%s: noise sigma estimated as the background RMS of the same %d px boxes (%g-sigma clipped "
                        "std / %.4f); median %.5g; it omits the sources' Poisson noise", where, bkg.box, est.CLIP_SIGMA,
                        est.clipped_std_factor(), np.nanmedian(bkg.rms))
            record["noise"] = {"sigma": {"estimate": bkg.record()}}
            noise, nlabel = bkg.rms, f"{where} estimated sigma"
    if "sigma" not in estimates:
        noise, nlabel = _plane_or_constant(noise_spec, what=kind, shape=shape, image_label=image_label)
        nlabel = nlabel if not nlabel.startswith("constant") else f"band {spec.name} {nlabel}"
        record["noise"] = {kind: nlabel}
    finite_img = np.isfinite(img)
    variance = _noise_to_variance(noise, kind, nlabel, finite_img & (mask == 0))
    no_var = finite_img & ~np.isfinite(variance)
    if no_var.all():
        raise InputError(f"{nlabel}: no pixel has a positive finite {kind}")
    if no_var.any():
        log.warning("%s: %d pixels with zero or non-finite %s marked NO_DATA", nlabel, int(no_var.sum()), kind)
    no_data = ~finite_img | no_var
    if (~finite_img).any():
        log.info("%s: %d NaN/inf image pixels marked NO_DATA", image_label, int((~finite_img).sum()))
    img[~finite_img] = np.nan
    variance[no_data] = np.nan
    mask |= np.where(no_data, planes.bitmask("NO_DATA"), 0).astype(np.int32)
    psf_est = None
    if "psf" in estimates:
        psf_est = est.estimate_psf(img, (mask & ~planes.bitmask("DETECTED", "DETECTED_NEGATIVE")) != 0, np.sqrt(variance), x, y, fwhm_guess=fwhm, label=where)
        psf = psf_est.psf
        record["psf"] = {"estimate": psf_est.record()}
    if calibration is None:
        calibration = band_calibration(zero_point=spec.zero_point, flux_unit=spec.flux_unit,
                                       pixel_area_sr=grid.pixel_area_sr, label=f"band {spec.name} ({image_label})")
    return BandData(spec.name, image_label, img, variance, mask, psf, psf_fwhm_pixels(psf), calibration.njy, record,
                    psf_est, spec.psf_grid)
