"""A band's PSF as one odd-sized, centred, unit-sum image (stored as a 1x1 PsfGrid).

Forced PSF photometry needs the PSF centred on its central pixel (PsfGrid shifts it to
each source's sub-pixel position). PSF files come in every convention, so an image is
made odd-sized and centred here: a PSF whose centroid is more than half a pixel from
the middle is recentred on it; even sizes are shifted by half a pixel (cubic spline).
An oversampled PSF is shifted so that its centre falls at the centre of a block of
``factor x factor`` pixels and then binned (flux-conserving). A Gaussian is integrated
over each pixel, so it is exact for a well-sampled Gaussian star.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from forcedphot.errors import InputError
from forcedphot.ingest.images import read_image

log = logging.getLogger(__name__)

MAX_PSF_SIZE = 65  # PsfFlux pads quanta by 32 pixels, so a PSF image is at most 65x65
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _centroid(img: np.ndarray) -> np.ndarray:
    """(cy, cx) of the positive part: robust to small negative wings."""
    w = np.clip(img, 0, None)
    yy, xx = np.indices(img.shape)
    total = w.sum()
    return np.array([(w * yy).sum() / total, (w * xx).sum() / total])


def prepare_psf(img: np.ndarray, *, oversampling: int = 1, label: str) -> np.ndarray:
    """Odd-sized (<= 65), centred, unit-sum float64 PSF image from any 2-D PSF image."""
    img = np.array(img, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"{label}: PSF must be a 2-D image, found shape {img.shape}")
    f = int(oversampling)
    if f < 1 or f != oversampling:
        raise InputError(f"{label}: PSF oversampling must be a positive integer, not {oversampling!r}")
    bad = ~np.isfinite(img)
    if bad.any():
        log.warning("%s: %d non-finite PSF pixels set to zero", label, int(bad.sum()))
        img[bad] = 0.0
    total = img.sum()
    if not total > 0 or np.clip(img, 0, None).sum() <= 0:
        raise InputError(f"{label}: PSF has no flux (sum {total:g})")
    middle = (np.array(img.shape) - 1) / 2.0
    centre = _centroid(img)
    if np.any(np.abs(centre - middle) > 0.5 * f):
        log.warning("%s: PSF centroid (x=%.2f, y=%.2f) is off the middle pixel; recentring on it",
                    label, centre[1], centre[0])
    else:
        centre = middle
    # centre of a block of f pixels: an integer after subtracting (f - 1) / 2
    half_block = (f - 1) / 2.0
    target = np.floor(centre - half_block + 0.5) + half_block
    shift = target - centre
    if np.any(np.abs(shift) > 1e-9):
        img = ndimage.shift(img, shift, order=3, mode="constant", cval=0.0)
    # blocks -h..h around the centre block cover the whole input
    reach = np.maximum(target - half_block, (np.array(img.shape) - 1) - (target + half_block))
    h = int(np.max(np.ceil(reach / f)))
    k = 2 * h + 1
    start = (target - half_block - h * f).astype(int)
    out = np.zeros((k * f, k * f))
    src = [slice(max(s, 0), min(s + k * f, n)) for s, n in zip(start, img.shape)]
    dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start)]
    out[dst[0], dst[1]] = img[src[0], src[1]]
    if f > 1:
        out = out.reshape(k, f, k, f).sum(axis=(1, 3))
    if k > MAX_PSF_SIZE:
        c = (k - MAX_PSF_SIZE) // 2
        kept = out[c:c + MAX_PSF_SIZE, c:c + MAX_PSF_SIZE].sum() / out.sum()
        log.warning("%s: PSF image %dx%d cropped to %dx%d (keeps %.4f of its flux)", label, k, k,
                    MAX_PSF_SIZE, MAX_PSF_SIZE, kept)
        out = out[c:c + MAX_PSF_SIZE, c:c + MAX_PSF_SIZE]
    total = out.sum()
    if not total > 0:
        raise InputError(f"{label}: PSF has no flux after centring (sum {total:g})")
    return out / total


SCALE_TOLERANCE = 0.01  # PSF and image pixel scales agreeing this well are taken as equal
MAX_UPSAMPLING = 2.0  # a PSF whose pixels are coarser than the image's by more is refused
SCALE_MODES = ("resample", "refuse", "ignore")
_ANGLE_UNITS = {"deg": 3600.0, "arcmin": 60.0, "arcsec": 1.0, "mas": 1e-3}


def header_pixel_scale(header) -> tuple[float, float, str] | None:
    """(x, y) arcsec per pixel of a PSF image from its header, and the keyword(s) it came from.

    SECPIX, PIXSCALE (arcsec, both axes), PIXSCAL1/PIXSCAL2 (arcsec), then CDELTi or the CD
    matrix in CUNITi (deg by default). A CDELT or CD without an angular unit or a celestial
    CTYPE counts only below 0.01 deg (36 arcsec): a PSF's plain pixel axis often has CDELT1 = 1.
    """
    for key in ("SECPIX", "PIXSCALE"):
        v = header.get(key)
        if isinstance(v, (int, float)) and v > 0:
            return float(v), float(v), key
    v1, v2 = header.get("PIXSCAL1"), header.get("PIXSCAL2", header.get("PIXSCAL1"))
    if isinstance(v1, (int, float)) and isinstance(v2, (int, float)) and v1 > 0 and v2 > 0:
        return abs(float(v1)), abs(float(v2)), "PIXSCAL1/2"
    units = [str(header.get(f"CUNIT{i}", "")).strip().lower() for i in (1, 2)]
    celestial = all(str(header.get(f"CTYPE{i}", ""))[:4].strip("-") in ("RA", "DEC", "GLON", "GLAT", "ELON", "ELAT")
                    for i in (1, 2))
    factor = _ANGLE_UNITS.get(units[0] or "deg")
    if factor is None or (units[0] or "deg") != (units[1] or "deg"):
        return None
    if all(f"CD{i}_{j}" in header for i in (1, 2) for j in (1, 2)):
        cd = np.array([[header[f"CD{i}_{j}"] for j in (1, 2)] for i in (1, 2)], float)
        sx, sy, key = float(np.hypot(*cd[:, 0])), float(np.hypot(*cd[:, 1])), "CD matrix"
    elif "CDELT1" in header and "CDELT2" in header:
        sx, sy, key = abs(float(header["CDELT1"])), abs(float(header["CDELT2"])), "CDELT1/2"
    else:
        return None
    if not (sx > 0 and sy > 0) or not (celestial or units[0] or max(sx, sy) * factor / 3600.0 < 0.01):
        return None
    return sx * factor, sy * factor, key


def resample_psf(img: np.ndarray, zoom: tuple[float, float], *, oversampling: int) -> np.ndarray:
    """``img`` on a grid ``zoom`` (x, y) times finer, about its middle pixel (cubic spline), unit sum.

    The output is k x oversampling pixels wide (k odd) with the middle at the centre of the
    central block, so :func:`prepare_psf` bins it without another shift.
    """
    img = np.asarray(img, np.float64)
    f = int(oversampling)
    mid = (np.array(img.shape) - 1) / 2.0  # (y, x)
    z = np.array([zoom[1], zoom[0]], float)
    reach = mid * z
    k = np.ceil((2 * reach + 1) / f).astype(int)
    k += (k % 2 == 0)
    size = k * f
    out_mid = (size - 1) / 2.0
    yy, xx = np.meshgrid((np.arange(size[0]) - out_mid[0]) / z[0] + mid[0],
                         (np.arange(size[1]) - out_mid[1]) / z[1] + mid[1], indexing="ij")
    out = ndimage.map_coordinates(img, [yy, xx], order=3, mode="constant", cval=0.0, prefilter=True)
    total = out.sum()
    return out / total if total > 0 else out


def match_pixel_scale(img: np.ndarray, header, *, image_scale: float | None, oversampling: int | None,
                      mode: str = "resample", label: str) -> tuple[np.ndarray, int, dict]:
    """(image, oversampling to bin by, record): the PSF brought to the image's pixel scale.

    The header's scale (:func:`header_pixel_scale`) times the oversampling (``oversampling``,
    else the nearest integer to image scale / PSF scale, at least 1) must equal the image's
    within 1%. Otherwise ``mode`` "resample" interpolates the PSF onto a grid of image scale /
    N (N that nearest integer) and bins it by N, with a warning; "refuse" raises an error
    naming both scales, as does a PSF coarser than the image by more than 2x (interpolation
    cannot restore the detail); "ignore" trusts ``oversampling``. Without a scale in the
    header the PSF is taken as given.
    """
    if mode not in SCALE_MODES:
        raise InputError(f"{label}: PSF scale mismatch mode must be one of {', '.join(SCALE_MODES)}, not {mode!r}")
    given = None if oversampling is None else int(oversampling)
    found = None if mode == "ignore" or image_scale is None else header_pixel_scale(header)
    if found is None:
        return img, given or 1, {"oversampling": given or 1}
    sx, sy, key = found
    scale = float(np.sqrt(sx * sy))
    nearest = max(1, int(round(image_scale / scale)))
    f = given or nearest
    record = {"file_scale_arcsec": [sx, sy], "scale_keyword": key, "image_scale_arcsec": image_scale}
    worst = max(abs(s * f / image_scale - 1) for s in (sx, sy))
    if worst <= SCALE_TOLERANCE:
        if given is None and f > 1:
            log.info("%s: PSF pixel scale %.5g arcsec (%s): oversampling %d", label, scale, key, f)
        return img, f, {**record, "oversampling": f}
    said = f" x oversampling {f} = {scale * f:.5g} arcsec" if f > 1 else ""
    what = (f"{label}: PSF pixel scale {scale:.5g} arcsec ({key}){said} differs from the image's "
            f"{image_scale:.5g} arcsec/px by {100 * worst:.1f}%")
    if mode == "refuse":
        raise InputError(f"{what}; resample the PSF, or pass --psf-scale-mismatch resample")
    if max(sx, sy) > MAX_UPSAMPLING * image_scale * (1 + SCALE_TOLERANCE):
        raise InputError(f"{what}: its pixels are more than {MAX_UPSAMPLING:g}x coarser than the image's, too coarse "
                         "to resample; give a PSF sampled at least as finely as the image")
    zoom = (sx * nearest / image_scale, sy * nearest / image_scale)
    out = resample_psf(img, zoom, oversampling=nearest)
    note = f" (not --psf-oversampling {given})" if given is not None and given != nearest else ""
    log.warning("%s; resampled by %.4g (cubic spline) to %.5g arcsec and binned by %d%s", what,
                float(np.sqrt(zoom[0] * zoom[1])), image_scale / nearest, nearest, note)
    return out, nearest, {**record, "oversampling": nearest, "resampled_zoom": [zoom[0], zoom[1]]}


def load_psf(spec, *, oversampling: int | None = None, image_scale: float | None = None,
             mismatch: str = "resample") -> tuple[np.ndarray, dict]:
    """(PSF, record) of a PSF image file, at the image's pixel scale (see :func:`match_pixel_scale`)."""
    data, header, label = read_image(spec, what="PSF")
    data, f, record = match_pixel_scale(data, header, image_scale=image_scale, oversampling=oversampling,
                                        mode=mismatch, label=label)
    return prepare_psf(data, oversampling=f, label=label), {"file": label, **record}


def gaussian_psf(fwhm_px: float, *, label: str = "PSF") -> np.ndarray:
    """Pixel-integrated circular Gaussian, +-5 sigma (at most 65x65), unit sum."""
    if not (np.isfinite(fwhm_px) and fwhm_px > 0):
        raise InputError(f"{label}: PSF FWHM must be positive, not {fwhm_px!r} px")
    sigma = fwhm_px / FWHM_PER_SIGMA
    half = int(np.clip(np.ceil(5 * sigma), 3, MAX_PSF_SIZE // 2))
    if 5 * sigma > MAX_PSF_SIZE // 2:
        log.warning("%s: Gaussian PSF of FWHM %.3g px truncated to %dx%d pixels", label, fwhm_px,
                    MAX_PSF_SIZE, MAX_PSF_SIZE)
    edges = (np.arange(-half, half + 2) - 0.5) / sigma
    g = np.diff(ndtr(edges))
    img = np.outer(g, g)
    return img / img.sum()


_FWHM_RE = re.compile(r"\s*([-+0-9.eE]+)\s*(arcsec|asec|\"|px|pix|pixels?)?\s*")


def parse_fwhm(value, *, unit: str | None = None, pixel_scale: float, label: str) -> float:
    """A FWHM given as ``'1.1arcsec'``, ``'3px'`` or a number with ``unit``; returns pixels."""
    if isinstance(value, (int, float)):
        number, u = float(value), unit
    else:
        m = _FWHM_RE.fullmatch(str(value))
        if not m:
            raise InputError(f"{label}: PSF FWHM {value!r} is not VALUE followed by arcsec or px")
        number, u = float(m.group(1)), m.group(2) or unit
    if u is None:
        raise InputError(f"{label}: PSF FWHM {value!r} needs a unit: e.g. 1.1arcsec or 3px")
    return number / pixel_scale if u in ("arcsec", "asec", '"') else number


def psf_fwhm_pixels(psf: np.ndarray) -> float:
    """FWHM from the area above half maximum (a circle of that area): sizes default footprints."""
    area = float(np.count_nonzero(psf >= 0.5 * psf.max()))
    return max(2.0 * np.sqrt(area / np.pi), 1.0)
