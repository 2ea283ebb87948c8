"""Background, noise and PSF estimated from the image (``--background/--sigma/--psf estimate``).

For coadds that come without a background, a noise plane or a PSF model:

* **Background** (SExtractor-like): photutils ``Background2D`` statistics of boxes of ``box``
  pixels, 3-sigma clipped, SExtractor's mode estimate (2.5 median - 1.5 mean); outlying
  boxes replaced by their 3x3 median and a bicubic spline through the box centres
  (:func:`mesh_to_image`). Sources are masked in two passes, as SExtractor does: a first
  estimate on all pixels, then the pixels 2 sigma above it (photutils ``detect_sources``, at
  least 5 connected pixels) dilated by a disc of one PSF FWHM, plus a disc of 2 FWHM around
  every catalog position.
* **Noise**: the same boxes' clipped standard deviation (``background_rms``) divided by the
  factor by which iterative 3-sigma clipping shrinks a Gaussian's (0.985): the background
  noise only, without the sources' own Poisson noise (bright objects' errors are too small).
* **PSF**: photutils ``EPSFBuilder`` on bright, isolated, unmasked catalog stars of a common
  size, then sampled at whole-pixel offsets from its centre (an effective PSF already holds
  the pixel response, so it is sampled, not binned).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from forcedphot.errors import InputError

log = logging.getLogger(__name__)

ESTIMATE = "estimate"
CLIP_SIGMA = 3.0  # Background2D's sigma clipping
DETECT_SIGMA = 2.0  # source mask: pixels this many sigma above the first background ...
DETECT_NPIXELS = 5  # ... in groups of at least this many connected pixels
CATALOG_MASK_FWHM = 2.0  # radius (in FWHM) of the disc masked around each catalog position
MIN_BOX, MAX_BOX = 16, 64  # default box: 10 FWHM within these (SExtractor's BACK_SIZE default is 64)
MIN_STARS = 10  # --psf estimate needs at least this many stars ...
MAX_STARS = 100  # ... and uses the brightest this many that qualify
MIN_PEAK_SNR = 20.0  # a PSF star's peak, in background sigmas
NEIGHBOUR_FRACTION = 0.1  # a pixel beyond 2 FWHM above this fraction of the peak: a neighbour
SIZE_TOLERANCE = 0.2  # PSF stars' adaptive-moment size within 20% of the candidates' median
EPSF_OVERSAMPLING = 4  # photutils' default; its quartic smoothing kernel is made for it
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def is_estimate(value) -> bool:
    """Whether an option asks for an estimate (``--sigma estimate`` ...)."""
    return isinstance(value, str) and value.strip().lower() == ESTIMATE


def _need_photutils(what: str) -> None:
    try:
        import photutils  # noqa: F401
    except ImportError:  # an optional dependency (extra "estimate")
        raise InputError(f"{what} estimate needs photutils; install it with pip install 'photutils>=2.0'") from None


def clipped_std_factor(k: float = CLIP_SIGMA) -> float:
    """Std of a Gaussian after iterative k-sigma clipping about its centre, over its true std.

    Each pass keeps |x| < k s and measures the std of a truncated normal: the fixed point of
    s = sqrt(1 - 2 c phi(c) / (2 Phi(c) - 1)) with c = k s (0.985 for k = 3).
    """
    s = 1.0
    for _ in range(200):
        c = k * s
        phi = np.exp(-0.5 * c * c) / np.sqrt(2 * np.pi)
        s = float(np.sqrt(1.0 - 2.0 * c * phi / (2.0 * ndtr(c) - 1.0)))
    return s


def default_box(shape, fwhm: float) -> int:
    """Background box: 10 PSF FWHM, within 16..64 pixels and at most a third of the image's short side."""
    box = int(np.clip(round(10 * fwhm), MIN_BOX, MAX_BOX))
    return int(max(8, min(box, min(shape) // 3)))


def discs(shape, x, y, radius: float) -> np.ndarray:
    """Boolean mask of discs of ``radius`` pixels around positions (x, y)."""
    out = np.zeros(shape, bool)
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    ix, iy = np.floor(x[keep] + 0.5).astype(np.int64), np.floor(y[keep] + 0.5).astype(np.int64)
    r = int(np.ceil(radius))
    h, w = shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            px, py = ix + dx, iy + dy
            ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            out[py[ok], px[ok]] = True
    return out


@dataclass
class BackgroundEstimate:
    background: np.ndarray  # (H, W) float32, image units
    rms: np.ndarray  # (H, W) float32: the clipped RMS corrected to a Gaussian sigma
    box: int  # pixels
    masked: float  # fraction of usable pixels masked as sources
    exclude_percentile: float  # boxes with more masked pixels than this are interpolated over

    def record(self) -> dict:
        return {"method": "photutils.Background2D", "box": self.box, "filter": "3x3 median of outlying boxes",
                "interpolation": "bicubic spline", "sigma_clip": CLIP_SIGMA,
                "estimator": "SExtractorBackground", "rms": "StdBackgroundRMS",
                "rms_clip_correction": round(1.0 / clipped_std_factor(), 6),
                "source_mask_fraction": round(self.masked, 4), "exclude_percentile": self.exclude_percentile,
                "median_background": float(np.nanmedian(self.background)),
                "median_sigma": float(np.nanmedian(self.rms))}


def _background2d(data, box: tuple[int, int], mask, label: str):
    """photutils Background2D box statistics (no median filter: :func:`mesh_to_image` filters and interpolates)."""
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, SExtractorBackground, StdBackgroundRMS

    last = None
    for percentile in (90.0, 99.0):  # a box counts with >= 10% (crowded fields: 1%) of its pixels unmasked
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bkg = Background2D(data, box, mask=mask, filter_size=1, exclude_percentile=percentile,
                                   sigma_clip=SigmaClip(sigma=CLIP_SIGMA, maxiters=10),
                                   bkg_estimator=SExtractorBackground(), bkg_rms_estimator=StdBackgroundRMS())
                return bkg.background_mesh, bkg.background_rms_mesh, percentile
        except ValueError as exc:
            last = exc
    raise InputError(f"{label}: cannot estimate the background in {box[1]}x{box[0]} px boxes: too few unmasked "
                     f"pixels ({' '.join(str(last).split())[:120]}); try a larger --background-box")


def _ghosts(m: np.ndarray, c: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """One extra row of boxes at each end of axis 0, extrapolated linearly (constant for a single box)."""
    lo, hi = (2 * m[0] - m[1], 2 * m[-1] - m[-2]) if m.shape[0] > 1 else (m[0], m[0])
    return np.vstack([lo, m, hi]), np.r_[c[0] - step, c, c[-1] + step]


def mesh_to_image(mesh: np.ndarray, box: tuple[int, int], shape) -> np.ndarray:
    """Full-size plane from box values: outliers median-filtered, a bicubic spline through the box centres.

    Only whole boxes are used (photutils' partial edge boxes are left out) and the spline
    reaches the image edges through a ring of linearly extrapolated boxes, so a gradient
    stays a gradient to the edges. A box is replaced by its 3x3 median (edges replicated)
    only when it differs from it by more than 3 robust sigmas of all such differences, as
    SExtractor's filter threshold (the median is of the residuals from a fitted plane): a
    plain median filter bends gradients at the edges and flattens curvature.
    """
    from scipy.interpolate import RectBivariateSpline
    from scipy.ndimage import median_filter

    h, w = shape
    ny, nx = h // box[0], w // box[1]
    m = np.asarray(mesh, float)[:ny, :nx]
    cy = np.arange(ny) * box[0] + (box[0] - 1) / 2
    cx = np.arange(nx) * box[1] + (box[1] - 1) / 2
    # outliers: against the 3x3 median of the residuals from a plane, so gradients are not bent at the edges
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    design = np.c_[np.ones(m.size), gy.ravel(), gx.ravel()]
    plane = (design @ np.linalg.lstsq(design, m.ravel(), rcond=None)[0]).reshape(m.shape)
    med = median_filter(m - plane, size=3, mode="nearest")
    d = m - plane - med
    spread = 1.4826 * np.median(np.abs(d - np.median(d)))
    if spread > 0:
        m = np.where(np.abs(d) > 3 * spread, plane + med, m)
    m, cy = _ghosts(m, cy, box[0])
    m, cx = _ghosts(m.T, cx, box[1])
    spline = RectBivariateSpline(cy, cx, m.T, kx=min(3, cy.size - 1), ky=min(3, cx.size - 1))
    return spline(np.arange(h), np.arange(w))


def estimate_background(image: np.ndarray, bad: np.ndarray, *, fwhm: float, x=None, y=None, box: int | None = None,
                        label: str) -> BackgroundEstimate:
    """Background and background-noise planes of ``image`` (pixels ``bad`` ignored), sources masked."""
    _need_photutils("background/noise")
    from photutils.segmentation import detect_sources
    from photutils.utils import circular_footprint

    shape = image.shape
    if box is None:
        box = default_box(shape, fwhm)
    elif not (isinstance(box, (int, np.integer)) and 4 <= box <= max(shape)):
        raise InputError(f"{label}: --background-box {box!r} must be an integer from 4 to {max(shape)} pixels")
    box = int(box)
    boxes = (min(box, shape[0]), min(box, shape[1]))
    bad = np.asarray(bad, bool) | ~np.isfinite(image)
    if bad.all():
        raise InputError(f"{label}: no usable pixel to estimate the background from")
    data = np.where(bad, 0.0, image).astype(np.float64)
    mesh, rms_mesh, _ = _background2d(data, boxes, bad, label)
    first = mesh_to_image(mesh, boxes, shape)
    first_rms = mesh_to_image(rms_mesh, boxes, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = detect_sources(data - first, DETECT_SIGMA * first_rms, DETECT_NPIXELS, mask=bad)
    sources = np.zeros(shape, bool)
    if seg is not None:
        sources = seg.make_source_mask(footprint=circular_footprint(max(1, int(round(fwhm)))))
    if x is not None and len(x):
        sources |= discs(shape, x, y, CATALOG_MASK_FWHM * fwhm)
    mesh, _, percentile = _background2d(data, boxes, bad | sources, label)
    background = mesh_to_image(mesh, boxes, shape)
    # the noise from the residuals: a box's raw RMS would include the background's own variation across it
    _, rms_mesh, _ = _background2d(data - background, boxes, bad | sources, label)
    rms = mesh_to_image(rms_mesh, boxes, shape) / clipped_std_factor()
    masked = float((sources & ~bad).sum() / max(1, (~bad).sum()))
    return BackgroundEstimate(background.astype(np.float32), rms.astype(np.float32), box, masked, percentile)


# -- PSF ----------------------------------------------------------------------------------
def _stamps(image: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int) -> np.ndarray:
    """(N, 2h+1, 2h+1) cutouts centred on pixels (ix, iy), which must lie >= half from the edges."""
    o = np.arange(-half, half + 1)
    return image[(iy[:, None] + o)[:, :, None], (ix[:, None] + o)[:, None, :]]


def _sizes(stamps: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """Adaptive-moment sigma det(M)^(1/4) of each stamp, NaN where the moments fail."""
    from forcedphot.moments import adaptive_moments

    if stamps.shape[0] == 0:
        return np.zeros(0)
    m = adaptive_moments(stamps, fx, fy)
    with np.errstate(invalid="ignore"):
        det = m.moments[:, 0, 0] * m.moments[:, 1, 1] - m.moments[:, 0, 1] ** 2
        size = det ** 0.25
    return np.where(m.flag_unweighted | m.flag_unweighted_bad | m.flag_shift | ~(det > 0), np.nan, size)


def _inside(ix, iy, shape, half) -> np.ndarray:
    h, w = shape
    return (ix >= half) & (ix < w - half) & (iy >= half) & (iy < h - half)


def rough_fwhm(image: np.ndarray, bad: np.ndarray, x, y, *, label: str) -> float:
    """A first PSF FWHM (pixels) from the adaptive moments of the brightest catalog objects.

    Only sizes the cutouts and boxes of the real estimate; a pixelated Gaussian's moments
    include the pixel, which is what the cutouts need.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ix, iy = np.floor(x + 0.5).astype(np.int64), np.floor(np.asarray(y) + 0.5).astype(np.int64)
    data = np.where(bad, np.nan, image)
    fwhm = 3.0
    for _ in range(3):
        half = int(np.clip(np.ceil(4 * fwhm), 5, 32))
        ok = np.flatnonzero(_inside(ix, iy, image.shape, half))
        stamps = _stamps(data, ix[ok], iy[ok], half)
        clean = np.isfinite(stamps).all(axis=(1, 2))
        ok, stamps = ok[clean], stamps[clean]
        if ok.size == 0:
            raise InputError(f"{label}: no catalog object is far enough from the edges and masked pixels to "
                             "measure the PSF size; give a first guess with --psf-fwhm")
        border = np.concatenate([stamps[:, 0], stamps[:, -1], stamps[:, :, 0], stamps[:, :, -1]], axis=1)
        stamps = stamps - np.median(border, axis=1)[:, None, None]
        brightest = np.argsort(-stamps[:, half, half])[:30]
        sizes = _sizes(stamps[brightest], (x[ok] - ix[ok])[brightest], (y[ok] - iy[ok])[brightest])
        if not np.isfinite(sizes).any():
            raise InputError(f"{label}: cannot measure the PSF size on the brightest catalog objects; give a first "
                             "guess with --psf-fwhm")
        new = float(FWHM_PER_SIGMA * np.nanmedian(sizes))
        converged = abs(new - fwhm) < 0.05 * fwhm
        fwhm = new
        if converged:
            break
    return fwhm


@dataclass
class PsfEstimate:
    psf: np.ndarray  # (K, K) float64 unit sum, image pixels, centred
    epsf: np.ndarray  # the oversampled ePSF as photutils built it
    oversampling: int
    n_stars: int
    n_candidates: int
    size: int  # star cutout, pixels
    fwhm: float  # pixels, of psf (area above half maximum)
    fwhm_guess: float
    offset: tuple[float, float]  # median (fitted centre - catalog position), pixels
    iterations: int = 0
    reasons: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"method": "photutils.EPSFBuilder", "stars": self.n_stars, "candidates": self.n_candidates,
                "rejected": self.reasons, "oversampling": self.oversampling, "cutout": self.size,
                "fwhm_px": round(self.fwhm, 4), "fwhm_guess_px": round(self.fwhm_guess, 4),
                "iterations": self.iterations,
                "catalog_offset_px": [round(self.offset[0], 4), round(self.offset[1], 4)]}


def select_stars(image: np.ndarray, bad: np.ndarray, sigma: np.ndarray, x, y, *, fwhm: float,
                 half: int) -> tuple[np.ndarray, dict]:
    """Rows of the catalog positions fit to build a PSF from, brightest first, and why the others were not.

    Each rejected row is counted under its first failed test: near an edge (the cutout leaves
    the image), masked (a masked or unusable pixel in the cutout), crowded (another catalog
    position within the cutout plus one FWHM), faint (peak under 20 sigma), contaminated (a
    pixel beyond 2 FWHM above a tenth of the peak and 5 sigma: an uncatalogued neighbour) and
    size (adaptive-moment size more than 20% from the median: galaxies, blends, saturated cores).
    """
    from scipy.spatial import cKDTree

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    ix, iy = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    reasons = {}
    alive = np.ones(n, bool)

    def reject(name, failed):
        failed = failed & alive
        reasons[name] = int(failed.sum())
        alive[failed] = False

    reject("near an edge", ~_inside(ix, iy, image.shape, half + 1))
    # masked pixels in the cutout: a summed-area table of the bad mask
    sat = np.pad(np.cumsum(np.cumsum(bad, axis=0), axis=1), ((1, 0), (1, 0)))
    a = np.flatnonzero(alive)
    y0, y1, x0, x1 = iy[a] - half, iy[a] + half + 1, ix[a] - half, ix[a] + half + 1
    n_bad = np.zeros(n, np.int64)
    n_bad[a] = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    reject("masked pixels", n_bad > 0)
    crowded = np.zeros(n, bool)
    if n > 1:
        pairs = cKDTree(np.c_[x, y]).query_pairs(half + fwhm, p=np.inf, output_type="ndarray")
        crowded[pairs.ravel()] = True
    reject("a catalog neighbour", crowded)
    a = np.flatnonzero(alive)
    stamps = _stamps(image, ix[a], iy[a], half).astype(np.float64)
    noise = _stamps(sigma, ix[a], iy[a], half).astype(np.float64)
    peak = np.full(n, -np.inf)
    peak[a] = stamps[:, half - 1:half + 2, half - 1:half + 2].max(axis=(1, 2))
    snr = np.zeros(n)
    snr[a] = peak[a] / noise[:, half, half]
    reject("fainter than 20 sigma", ~(snr >= MIN_PEAK_SNR))
    keep = alive[a]
    a, stamps, noise = a[keep], stamps[keep], noise[keep]
    o = np.arange(-half, half + 1)
    r = np.hypot(o[None, :, None] + (iy[a] - y[a])[:, None, None], o[None, None, :] + (ix[a] - x[a])[:, None, None])
    limit = np.maximum(NEIGHBOUR_FRACTION * peak[a], 5 * noise[:, half, half])[:, None, None]
    contaminated = np.zeros(n, bool)
    contaminated[a] = ((r > 2 * fwhm) & (stamps > limit)).any(axis=(1, 2))
    reject("a neighbour in the image", contaminated)
    a = np.flatnonzero(alive)
    sizes = np.full(n, np.nan)
    sizes[a] = _sizes(_stamps(image, ix[a], iy[a], half).astype(np.float64), x[a] - ix[a], y[a] - iy[a])
    median = np.nanmedian(sizes[a]) if np.isfinite(sizes[a]).any() else np.nan
    with np.errstate(invalid="ignore"):
        reject("a deviant size", ~(np.abs(sizes / median - 1) <= SIZE_TOLERANCE))
    rows = np.flatnonzero(alive)
    rows = rows[np.argsort(-peak[rows], kind="stable")]
    if rows.size > MAX_STARS:
        reasons[f"beyond the brightest {MAX_STARS}"] = int(rows.size - MAX_STARS)
        rows = rows[:MAX_STARS]
    return rows, reasons


def estimate_psf(image: np.ndarray, bad: np.ndarray, sigma: np.ndarray, x, y, *, fwhm_guess: float,
                 label: str) -> PsfEstimate:
    """An effective PSF from the catalog's bright isolated stars (photutils EPSFBuilder).

    ``image`` is background-subtracted, ``sigma`` its per-pixel noise; ``bad`` marks masked or
    unusable pixels. The ePSF is sampled at whole-pixel offsets from its centre, so it is the
    pixel-integrated PSF that forced PSF photometry needs.
    """
    _need_photutils("PSF")
    from astropy.stats import sigma_clipped_stats
    from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars
    from scipy.spatial import cKDTree

    from forcedphot.ingest.psfimage import prepare_psf, psf_fwhm_pixels

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    half = int(np.clip(np.ceil(4 * fwhm_guess), 5, 32))
    bad = np.asarray(bad, bool) | ~np.isfinite(image) | ~np.isfinite(sigma)
    rows, reasons = select_stars(image, bad, sigma, x, y, fwhm=fwhm_guess, half=half)
    if rows.size < MIN_STARS:
        why = ", ".join(f"{v} {k}" for k, v in reasons.items() if v) or "none rejected"
        raise InputError(f"{label}: --psf estimate needs at least {MIN_STARS} bright isolated stars; {rows.size} of "
                         f"{x.size} catalog objects qualified ({why}; cutout {2 * half + 1} px, FWHM guess "
                         f"{fwhm_guess:.2f} px); give a PSF image (--psf FILE) or --psf-fwhm")
    size = 2 * half + 1
    ix, iy = np.floor(x[rows] + 0.5).astype(np.int64), np.floor(y[rows] + 0.5).astype(np.int64)
    cutouts = _stamps(image, ix, iy, half).astype(np.float64)
    ring = np.ones((size, size), bool)
    ring[2:-2, 2:-2] = False  # the cutout's outer two pixels: the star's local background
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = sigma_clipped_stats(cutouts[:, ring], axis=1, sigma=CLIP_SIGMA)[1]
        stars = EPSFStars([EPSFStar(c - b, cutout_center=(xc - i + half, yc - j + half), origin=(i - half, j - half))
                           for c, b, xc, yc, i, j in zip(cutouts, local, x[rows], y[rows], ix, iy)])
        result = EPSFBuilder(oversampling=EPSF_OVERSAMPLING, maxiters=10, progress_bar=False)(stars)
    epsf = result.epsf
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    sampled = np.asarray(epsf.evaluate(xx, yy, 1.0, 0.0, 0.0), float)
    psf = prepare_psf(sampled, label=f"{label} (estimated PSF)")
    centres = np.array([s.center for s in result.fitted_stars.all_stars], float).reshape(-1, 2)
    _, nearest = cKDTree(np.c_[x[rows], y[rows]]).query(centres)
    dx, dy = np.median(centres - np.c_[x[rows], y[rows]][nearest], axis=0) if centres.size else (np.nan, np.nan)
    return PsfEstimate(psf, np.asarray(epsf.data, float), EPSF_OVERSAMPLING, int(rows.size), int(x.size), size,
                       psf_fwhm_pixels(psf), float(fwhm_guess), (float(dx), float(dy)), int(result.iterations),
                       reasons)


def write_psf_fits(path, est: PsfEstimate, *, band: str, label: str) -> None:
    """The estimated PSF as FITS, for inspection: the PSF the coadds use, then the oversampled ePSF."""
    from astropy.io import fits

    h = fits.Header()
    h["BAND"] = (band, "forcedphot band")
    h["IMAGE"] = (str(label)[-68:], "image the PSF was built from")
    h["METHOD"] = ("photutils.EPSFBuilder", "sampled at whole pixels")
    h["NSTARS"] = (est.n_stars, "stars used")
    h["NCANDS"] = (est.n_candidates, "catalog objects considered")
    h["CUTSIZE"] = (est.size, "star cutout size, pixels")
    h["FWHM"] = (round(est.fwhm, 4), "FWHM of this PSF, pixels (area above half maximum)")
    h["CATDX"] = (round(est.offset[0], 4), "median star centre - catalog x, pixels")
    h["CATDY"] = (round(est.offset[1], 4), "median star centre - catalog y, pixels")
    e = fits.Header()
    e["OVERSAMP"] = (est.oversampling, "oversampling of the ePSF")
    fits.HDUList([fits.PrimaryHDU(est.psf.astype(np.float32), header=h),
                  fits.ImageHDU(est.epsf.astype(np.float32), header=e, name="EPSF")]).writeto(path, overwrite=True)
