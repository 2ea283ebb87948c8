"""Reference measurements at ingest: adaptive shapes and Kron radii on the reference band.

Rubin's reference catalog carries the reference band's SdssShape moments and Kron radius, which
forced GaussianFlux and KronFlux need in every band. A catalog without them (positions only,
or shapes without Kron radii) gets them here, measured on the reference band's image as Rubin's
unforced plugins do, for the rows that lack them (catalog values are kept):

- shape: SDSS adaptive moments (the compiled SdssShape kernel; Rubin's controls), observed
  (PSF-convolved) moments as Rubin's slot_Shape. Where the iteration fails (unweighted fallback,
  a shift beyond 2 px, no positive-definite result) the shape is the PSF's moments and
  ``shape_flag`` is set.
- Kron radius: R_K = sum(r I)/sum(I) over the ellipse of 6 times the shape
  (:mod:`forcedphot.kernels.kron_radius`). As Rubin: a bad integral (sum <= 0) or R_K above 200 px
  falls back to the PSF's Kron radius sqrt(pi/2) sigma_PSF, and so does a radius below it
  (enforceMinimumRadius); an ellipse reaching off the image leaves no radius (Rubin's flag_edge);
  a shape that failed (the PSF's used) flags the radius too. ``kron_radius_flag`` is set for all
  but the minimum-radius case. Unlike Rubin, a first moment below the adaptive size does not
  leave the 6-sigma ellipse as the radius (the measured R_K is kept, then the minimum applied).

Each object is measured on the image as it is (no deblending: a blended neighbour's light enters).
The ref flags are null for rows whose values came from the catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from forcedphot.flags import MaskPlanes
from forcedphot.ingest.catalog import RefObjects
from forcedphot.ingest.planes import BandData

log = logging.getLogger(__name__)

BAND_PRIORITY = ("i", "r", "z", "y", "g", "u")  # Rubin's mergeMeasurements priorityList
N_SIGMA_FOR_RADIUS = 6.0  # Rubin KronFluxControl
MAX_RADIUS = 200.0


def default_reference_band(names: list[str]) -> str:
    """Rubin's choice: the first of i, r, z, y, g, u among the bands, else the first band given."""
    return next((b for b in BAND_PRIORITY if b in names), names[0])


@dataclass
class RefMeasurements:
    """What was measured at ingest, per catalog row: ``measured`` rows carry a flag (others: null)."""

    shape_measured: np.ndarray  # bool
    shape_flag: np.ndarray  # bool: adaptive moments failed, the PSF's moments used
    kron_measured: np.ndarray
    kron_flag: np.ndarray  # bool: no usable first moment (edge, bad integral, too large, bad shape)

    @classmethod
    def none(cls, n: int) -> "RefMeasurements":
        z = np.zeros(n, bool)
        return cls(z, z.copy(), z.copy(), z.copy())

    def rows(self, rows: np.ndarray) -> "RefMeasurements":
        return RefMeasurements(*(getattr(self, f)[rows] for f in ("shape_measured", "shape_flag", "kron_measured",
                                                                   "kron_flag")))


def _planes(band: BandData):
    from forcedphot.kernels.footprints import valid_pixels
    from forcedphot.kernels.moments import read_only

    no_data = MaskPlanes().bitmask("NO_DATA")
    image = np.ascontiguousarray(band.image, np.float32)
    variance = np.ascontiguousarray(band.variance, np.float32)
    valid = valid_pixels(image, variance, np.ascontiguousarray(band.mask, np.int32), np.int32(no_data))
    return read_only(image, variance, valid)


def adaptive_shapes(image, variance, valid, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((n, 2, 2) adaptive moments, failed (n,)) at image pixels (x, y): the SdssShape kernel, no footprints."""
    from forcedphot.kernels.moments import sdss_shape, spatial_order
    from forcedphot.kernels.pixels import no_footprints
    from forcedphot.moments import positive_definite
    from forcedphot.plugins.sdss_shape import INITIAL, MAX_HALF, MAX_ITER, MAX_SHIFT, TOL1, TOL2

    cx = np.floor(x + 0.5).astype(np.int64)
    cy = np.floor(y + 0.5).astype(np.int64)
    m, _, _, _, f, _ = sdss_shape(image, variance, valid, no_footprints(x.size), cx, cy, x - cx, y - cy,
                                  np.ones(x.size, np.uint8), spatial_order(cx, cy), MAX_HALF, MAX_ITER, TOL1, TOL2,
                                  MAX_SHIFT, INITIAL)
    out = np.empty((x.size, 2, 2))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = m[:, 0], m[:, 1], m[:, 1], m[:, 2]
    failed = (f[:, 0] != 0) | (f[:, 2] != 0) | ~positive_definite(out)  # unweighted, shift, unusable
    return out, failed


def measure_references(objects: RefObjects, band: BandData) -> tuple[RefObjects, RefMeasurements]:
    """``objects`` with missing shapes and Kron radii measured on ``band`` (the reference band), and the flags."""
    from forcedphot.ingest.deblend import psf_moments
    from forcedphot.kernels.kron_radius import BAD, EDGE, kron_radii
    from forcedphot.moments import positive_definite

    n = len(objects)
    need_shape = np.ones(n, bool) if objects.shape is None else ~np.all(np.isfinite(objects.shape), axis=(1, 2))
    need_kron = np.ones(n, bool) if objects.kron is None else ~np.isfinite(objects.kron)
    out = RefMeasurements.none(n)
    if not (need_shape.any() or need_kron.any()):
        return objects, out
    image, variance, valid = _planes(band)
    psf = psf_moments(band.psf, band.psf_fwhm)
    shape = np.full((n, 2, 2), np.nan) if objects.shape is None else objects.shape.copy()
    if need_shape.any():
        rows = np.flatnonzero(need_shape)
        m, failed = adaptive_shapes(image, variance, valid, objects.x[rows], objects.y[rows])
        m[failed] = psf
        shape[rows] = m
        out.shape_measured[rows] = True
        out.shape_flag[rows] = failed
    kron = np.full(n, np.nan) if objects.kron is None else np.asarray(objects.kron, float).copy()
    n_edge = n_bad = n_min = 0
    if need_kron.any():
        rows = np.flatnonzero(need_kron)
        s = shape[rows]
        bad_shape = ~positive_definite(s) | out.shape_flag[rows]
        s[~positive_definite(s)] = psf  # Rubin's BAD_SHAPE: the PSF shape
        r, status = kron_radii(image, valid, objects.x[rows], objects.y[rows], s, n_sigma=N_SIGMA_FOR_RADIUS)
        r_psf = np.sqrt(np.pi / 2) * np.linalg.det(psf) ** 0.25
        bad = (status == BAD) | ((status == 0) & (r > MAX_RADIUS))
        edge = status == EDGE
        small = (status == 0) & ~bad & (r < r_psf)
        r = np.where(bad | small, r_psf, np.where(edge, np.nan, r))
        kron[rows] = r
        out.kron_measured[rows] = True
        out.kron_flag[rows] = bad | edge | bad_shape
        n_edge, n_bad, n_min = int(edge.sum()), int(bad.sum()), int(small.sum())
    parts = []
    if need_shape.any():
        parts.append(f"shapes (adaptive moments) for {int(need_shape.sum())} rows, "
                     f"{int(out.shape_flag.sum())} failed (PSF shape used, shape_flag)")
    if need_kron.any():
        parts.append(f"Kron radii for {int(need_kron.sum())} rows, {n_edge + n_bad} failed ({n_edge} at the image "
                     f"edge: no radius; {n_bad} with no positive first moment or R_K > {MAX_RADIUS:g} px: PSF radius; "
                     f"kron_radius_flag), {n_min} raised to the PSF's Kron radius")
    # a warning (shown by default): the catalog lacked columns the forced Gaussian and Kron fluxes need
    log.warning("%s: measured on reference band %s: %s", objects.label, band.name, "; ".join(parts))
    return replace(objects, shape=shape, kron=kron), out
