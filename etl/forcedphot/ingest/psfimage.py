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


def load_psf(spec, *, oversampling: int = 1) -> np.ndarray:
    data, _, label = read_image(spec, what="PSF")
    return prepare_psf(data, oversampling=oversampling, label=label)


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
