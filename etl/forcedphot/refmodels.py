"""Reference model fits for forced CModel: the half-light ellipses of Rubin's initial, exp and dev
profiles and the fit region, fitted on the reference band (unforced) and stored in ``ref``.

:func:`fit_reference_models` is the one entry point simulate, ingest and tests use (through
:func:`fit_on_planes` and :func:`fit_with_footprints` on coadd-like planes); the compiled fit is
:mod:`forcedphot.kernels.model_fit` (its docstring has the formulas, bounds and flags).
:func:`sky_ellipses_to_pixels` turns a user catalog's Rubin-style columns (semi-axes in arcsec,
position angle in degrees east of north) into ellipses in pixels.
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels import model_fit as mf
from forcedphot.profiles import DEV, EXP, INITIAL

STAGES = ("initial", "exp", "dev")
ELLIPSE_COLUMNS = [f"cModel_{s}_{c}" for s in (*STAGES, "region") for c in ("xx", "yy", "xy")]
FLAG_COLUMNS = [f"cModel_{s}_flag" for s in (*STAGES, "region")] + ["cModel_ref_flag"]
# informative (ref 1.5.0): the stage's stored ellipse is the other profile's (the kernel's shared-ellipse rule)
SHARED_COLUMNS = ["cModel_exp_sharedEllipse", "cModel_dev_sharedEllipse"]
BOOL_COLUMNS = FLAG_COLUMNS + SHARED_COLUMNS  # nullable booleans (object arrays, None = null, where no fit was made)
REF_COLUMNS = ELLIPSE_COLUMNS + FLAG_COLUMNS + SHARED_COLUMNS
BAD_MASK_PLANES = ("EDGE", "SAT", "BAD", "NO_DATA")  # Rubin's PixelFitRegion badMaskPlanes
STAGE_FAILED = mf.FAILED | mf.MAX_ITER  # a stage's flag column: no fit, or the iteration limit
REGION_FAILED = mf.BAD_PIXELS | mf.NO_PSF  # the region's flag column: no usable region
PROFILES = [(p.weights, p.variances) for p in (INITIAL, EXP, DEV)]  # Rubin's stage mixtures


def usable_pixels(image, variance, mask, mask_planes=None) -> np.ndarray:
    """(H, W) bool: finite image, finite positive variance, none of BAD_MASK_PLANES set (those
    of ``mask_planes`` a :class:`forcedphot.flags.MaskPlanes`; the default planes without one)."""
    from forcedphot.flags import MaskPlanes

    planes = mask_planes or MaskPlanes()
    bits = planes.bitmask(*(p for p in BAD_MASK_PLANES if p in planes.bits))
    with np.errstate(invalid="ignore"):
        return (np.isfinite(image) & np.isfinite(variance) & (variance > 0)
                & ((np.asarray(mask, np.int64) & bits) == 0))


def _psf_arrays(psf_mixtures):
    if hasattr(psf_mixtures, "amp"):
        return psf_mixtures.amp, psf_mixtures.centre, psf_mixtures.cov
    amp, centre, cov = psf_mixtures
    return amp, centre, cov


def fit_reference_models(image, variance, mask_valid, psf_mixtures, x, y, shape, kron_radius,
                         footprint_area=None, *, footprints=None, details: bool = False) -> dict:
    """Fit the initial (lux K3), exp (lux K6) and dev (luv K8) profiles, convolved with each source's
    PSF mixture, centroid fixed, to each source's pixels of the reference-band image.

    image, variance: (H, W) planes (image units); mask_valid: (H, W) bool, the pixels the fit may use
    (see :func:`usable_pixels`: no EDGE, SAT, BAD, NO_DATA, finite values); psf_mixtures: a
    :class:`forcedphot.stages.PsfMixtures` or (amp (N, M), centre (N, M, 2) offsets from the
    centroid, cov (N, M, 3)); x, y: (N,) centroids in the image's pixels (0-based pixel centres,
    x along columns); shape: (N, 3) (xx, yy, xy) or (N, 2, 2) reference moments, pixels^2 (NaN:
    none); kron_radius: (N,) pixels (NaN: none); footprint_area: (N,) pixels (None or NaN: none);
    footprints: the ``fp`` tuple of :mod:`forcedphot.kernels.pixels` to measure each source on
    the noise-replaced image with its own footprint put back (None: the image as it is).

    Returns a dict of the ``ref`` columns (:data:`REF_COLUMNS`), (N,) arrays: the half-light
    ellipses ``cModel_{initial,exp,dev}_{xx,yy,xy}`` and the final fit region
    ``cModel_region_{xx,yy,xy}`` (pixels^2, centred on the centroid; NaN = null where there is no
    fit; where exp or dev fits worse than the other by more than ``SHARE_DCHI2``, its ellipse is the
    other's: the kernel's shared-ellipse rule), ``cModel_{initial,exp,dev,region}_flag`` (the stage
    failed or hit its iteration limit; no usable region) and ``cModel_ref_flag`` (any of them); ``cModel_{exp,dev}_sharedEllipse`` (informative: that stage stores the other
    profile's ellipse). With ``details`` also ``flux`` (N, 3)
    (the fitted total fluxes), ``chi2`` (N, 3), ``iterations`` (N, 3), ``stage_flags`` (N, 3) and
    ``region_flags`` (N,) (the kernel's bits; ``SHARED`` marks a stage that took the other's ellipse).
    """
    from forcedphot.kernels.pixels import no_footprints

    x = np.asarray(x, np.float64).reshape(-1)
    n = x.size
    s = np.asarray(shape, np.float64)
    if s.ndim == 3:
        s = np.stack([s[:, 0, 0], s[:, 1, 1], s[:, 0, 1]], axis=-1)
    s = s.reshape(n, 3)
    area = np.full(n, np.nan) if footprint_area is None else np.asarray(footprint_area, np.float64)
    fp = no_footprints(n) if footprints is None else footprints
    amp, centre, cov = _psf_arrays(psf_mixtures)
    ell, region, flux, chi2, iters, sflags, rflags = mf.fit_models(
        image, variance, np.asarray(mask_valid).astype(np.uint8), fp, x, y, s, kron_radius, area, amp, centre, cov,
        PROFILES)
    out = {}
    for k, st in enumerate(STAGES):
        for c, comp in enumerate(("xx", "yy", "xy")):
            out[f"cModel_{st}_{comp}"] = ell[:, k, c]
    for c, comp in enumerate(("xx", "yy", "xy")):
        out[f"cModel_region_{comp}"] = region[:, c]
    for k, st in enumerate(STAGES):
        out[f"cModel_{st}_flag"] = (sflags[:, k] & STAGE_FAILED) != 0
    out["cModel_region_flag"] = ((rflags & REGION_FAILED) != 0) | ~np.isfinite(region[:, 0])
    out["cModel_ref_flag"] = out["cModel_region_flag"] | np.any((sflags & STAGE_FAILED) != 0, axis=1)
    out["cModel_exp_sharedEllipse"] = (sflags[:, 1] & mf.SHARED) != 0
    out["cModel_dev_sharedEllipse"] = (sflags[:, 2] & mf.SHARED) != 0
    if details:
        out.update(flux=flux, chi2=chi2, iterations=iters, stage_flags=sflags, region_flags=rflags)
    return out


def null_columns(n: int) -> dict:
    """The ref columns of ``n`` objects without reference models (NaN ellipses, null flags: None)."""
    out = {c: np.full(n, np.nan) for c in ELLIPSE_COLUMNS}
    out.update({c: np.full(n, None, object) for c in BOOL_COLUMNS})
    return out


def footprint_tuple(spans_values, min_x: int = 0, min_y: int = 0) -> tuple:
    """The ``fp`` tuple (:mod:`forcedphot.kernels.pixels`) of N sources, source i measured with its own
    heavy footprint ``spans_values[i] = (span_y, span_x0, span_x1, values)`` (tract pixels, values in span
    order), in image pixels of an image whose first pixel is tract (min_x, min_y)."""
    n = len(spans_values)
    lengths = [len(sv[0]) for sv in spans_values]
    span_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cat = lambda i, dt: (np.concatenate([np.asarray(sv[i]) for sv in spans_values]).astype(dt)  # noqa: E731
                         if n else np.zeros(0, dt))
    values = [np.asarray(sv[3], np.float32) for sv in spans_values]
    val_off = np.concatenate([[0], np.cumsum([v.size for v in values])]).astype(np.int64)
    return (np.arange(n, dtype=np.int64), span_off, cat(0, np.int32) - np.int32(min_y),
            cat(1, np.int32) - np.int32(min_x), cat(2, np.int32) - np.int32(min_x), val_off,
            np.concatenate(values) if n else np.zeros(0, np.float32))


def noise_replaced(image, variance, replace, seed) -> np.ndarray:
    """The noise image B of noise replacement: ``image`` with the ``replace`` pixels (every footprint)
    drawn from N(0, variance) (a seeded stream), as plugins see the deblended image outside a
    source's own footprint."""
    out = np.array(image, np.float32, copy=True)
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.where(np.isfinite(variance) & (variance > 0), variance, 0.0))
    out[replace] = (rng.standard_normal(int(replace.sum())) * sigma[replace]).astype(np.float32)
    return out


def fit_on_planes(image, variance, mask, psf_grid, x, y, shape, kron_radius, *, min_x: int = 0, min_y: int = 0,
                  mask_planes=None, footprints=None, footprint_area=None) -> dict:
    """:func:`fit_reference_models` on coadd-like planes whose first pixel is tract (min_x, min_y): the
    usable pixels from the mask (:func:`usable_pixels`), each source's PSF mixture from ``psf_grid`` (a
    :class:`forcedphot.psf.PsfGrid`) at its tract position (x, y)."""
    from forcedphot.stages import PsfMixtures

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mix = PsfMixtures.build(psf_grid, x, y, np.isfinite(x) & np.isfinite(y))
    return fit_reference_models(image, variance, usable_pixels(image, variance, mask, mask_planes), mix,
                                x - min_x, y - min_y, shape, kron_radius, footprint_area, footprints=footprints)


def sky_ellipses_to_pixels(wcs, x, y, r_major, r_minor, theta_deg, *, step: float = 0.5) -> np.ndarray:
    """(N, 3) ellipses (Qxx, Qyy, Qxy) in pixels^2 of sky ellipses at pixel (x, y): semi-axes in arcsec,
    position angle theta in degrees east of north, through the local Jacobian of ``wcs`` (an astropy
    WCS; central differences of +-``step`` px): Q = J^-1 Q_sky J^-T with J = d(xi, eta)/d(x, y) in
    arcsec per pixel (xi towards east, eta towards north)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)

    def sky(dx, dy):
        ra, dec = wcs.all_pix2world(x + dx, y + dy, 0)
        return np.asarray(ra, float), np.asarray(dec, float)

    _, dec0 = sky(0.0, 0.0)
    cosd = np.cos(np.deg2rad(dec0))
    j = np.empty((x.size, 2, 2))
    for col, (dx, dy) in enumerate(((step, 0.0), (0.0, step))):
        ra_p, dec_p = sky(dx, dy)
        ra_m, dec_m = sky(-dx, -dy)
        dra = (ra_p - ra_m + 180.0) % 360.0 - 180.0
        j[:, 0, col] = dra * cosd * 3600.0 / (2 * step)
        j[:, 1, col] = (dec_p - dec_m) * 3600.0 / (2 * step)
    t = np.deg2rad(np.asarray(theta_deg, np.float64))
    u = np.stack([np.sin(t), np.cos(t)], -1)  # the major axis: east of north
    v = np.stack([np.cos(t), -np.sin(t)], -1)
    a2 = np.asarray(r_major, np.float64)[:, None, None] ** 2
    b2 = np.asarray(r_minor, np.float64)[:, None, None] ** 2
    q_sky = a2 * u[:, :, None] * u[:, None, :] + b2 * v[:, :, None] * v[:, None, :]
    with np.errstate(invalid="ignore"):
        ji = np.linalg.inv(np.where(np.isfinite(j), j, np.nan))
        q = ji @ q_sky @ np.swapaxes(ji, 1, 2)
    return np.stack([q[:, 0, 0], q[:, 1, 1], q[:, 0, 1]], -1)


def regions_from(d, shape, kron_radius, psf_mixtures, footprint_area=None) -> np.ndarray:
    """(N, 3) final fit regions E1 = alpha^2 D + 4P (the kernel's rules) for given half-light ellipses D
    (N, 3) (e.g. a catalog's exp ellipses, standing in for the initial fit); NaN where D or the PSF is
    unusable."""
    amp, centre, cov = (np.asarray(a, np.float64) for a in _psf_arrays(psf_mixtures))
    d = np.asarray(d, np.float64).reshape(-1, 3)
    n = d.shape[0]
    s = np.asarray(shape, np.float64).reshape(n, 3)
    kron = np.asarray(kron_radius, np.float64).reshape(n)
    area = np.full(n, np.nan) if footprint_area is None else np.asarray(footprint_area, np.float64).reshape(n)
    out = np.full((n, 3), np.nan)
    pm, e0, e1 = np.empty(3), np.empty(3), np.empty(3)
    for i in range(n):
        det = d[i, 0] * d[i, 1] - d[i, 2] ** 2
        if not (det > 0 and d[i, 0] > 0) or not mf.psf_moments(amp[i], centre[i], cov[i], amp.shape[1], pm):
            continue
        mf.initial_region(s[i], kron[i], area[i], pm, e0)
        mf.final_region(d[i], pm, e0, e1)
        out[i] = e1
    return out


def ingest_reference_models(objects, band) -> dict:
    """The ref columns of every catalog row of ``objects`` (:class:`forcedphot.ingest.catalog.RefObjects`,
    shapes and Kron radii already measured where the catalog lacked them) on the reference band ``band``
    (:class:`forcedphot.ingest.planes.BandData`, its PSF image as the PSF everywhere).

    Without catalog model ellipses: fitted (:func:`fit_on_planes`) on the image as it is (no noise
    replacement; ingest itself fits per patch on the deblended image, :func:`fit_with_footprints`).
    With them (``objects.model_ellipses``): the catalog's exp and dev ellipses, no initial one, the
    region from the exp ellipse, flags null (no fit made) and ``cModel_ref_flag`` where an ellipse
    is missing. Flags are object arrays (None = null)."""
    from forcedphot.psf import PsfGrid
    from forcedphot.stages import PsfMixtures

    n = len(objects)
    h, w = band.image.shape
    grid = PsfGrid(np.array([(w - 1) / 2]), np.array([(h - 1) / 2]), np.asarray(band.psf, np.float64)[None, None])
    shape = (np.full((n, 3), np.nan) if objects.shape is None else
             np.stack([objects.shape[:, 0, 0], objects.shape[:, 1, 1], objects.shape[:, 0, 1]], -1))
    kron = np.full(n, np.nan) if objects.kron is None else np.asarray(objects.kron, np.float64)
    if objects.model_ellipses is None:
        cols = fit_on_planes(band.image, band.variance, band.mask, grid, objects.x, objects.y, shape, kron)
        return {c: (np.asarray(v, object) if c in BOOL_COLUMNS else v) for c, v in cols.items()}
    out = null_columns(n)
    mix = PsfMixtures.build(grid, objects.x, objects.y, np.ones(n, bool))
    region = regions_from(objects.model_ellipses["exp"], shape, kron, mix)
    for stage in ("exp", "dev"):
        for c, comp in enumerate(("xx", "yy", "xy")):
            out[f"cModel_{stage}_{comp}"] = objects.model_ellipses[stage][:, c]
    for c, comp in enumerate(("xx", "yy", "xy")):
        out[f"cModel_region_{comp}"] = region[:, c]
    missing = ~np.all(np.isfinite(np.c_[objects.model_ellipses["exp"], objects.model_ellipses["dev"], region]), axis=1)
    out["cModel_ref_flag"] = missing.astype(object)
    return out


def fit_with_footprints(image, variance, mask, psf_grid, x, y, shape, kron_radius, spans, value_offsets, values, *,
                        min_x: int, min_y: int, seed) -> dict:
    """:func:`fit_on_planes` of N objects on the noise-replaced image: every footprint's pixels drawn
    from N(0, variance) (:func:`noise_replaced`, stream ``seed``), each object's own heavy values put
    back. spans = (offsets (N + 1,), y, x0, x1) in tract pixels (row i's spans offsets[i]:offsets[i + 1]),
    value_offsets (N + 1,) and values: the heavy values in span order; the planes' first pixel is tract
    (min_x, min_y). The footprint's area is the region's fallback."""
    from forcedphot.footprint import spans_to_pixels

    offsets, sy, sx0, sx1 = (np.asarray(a) for a in spans)
    n = offsets.size - 1
    ys, xs = spans_to_pixels(sy, sx0, sx1)
    h, w = np.shape(image)
    inside = (ys >= min_y) & (ys < min_y + h) & (xs >= min_x) & (xs < min_x + w)
    replace = np.zeros((h, w), bool)
    replace[ys[inside] - min_y, xs[inside] - min_x] = True
    base = noise_replaced(image, variance, replace, seed)
    fp = (np.arange(n, dtype=np.int64), offsets.astype(np.int64), (sy - min_y).astype(np.int32),
          (sx0 - min_x).astype(np.int32), (sx1 - min_x).astype(np.int32), np.asarray(value_offsets, np.int64),
          np.asarray(values, np.float32))
    npix = np.add.reduceat(np.r_[sx1.astype(np.int64) - sx0 + 1, 0], offsets[:-1]) if n else np.zeros(0)
    area = np.where(np.diff(offsets) > 0, npix, np.nan).astype(np.float64)
    return fit_on_planes(base, variance, mask, psf_grid, x, y, shape, kron_radius, min_x=min_x, min_y=min_y,
                         footprints=fp, footprint_area=area)
