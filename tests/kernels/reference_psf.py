"""The numpy PSF images and PsfFlux the compiled kernels replaced: slow, batched, obviously correct.

``reference_images_at`` shifts by a Fourier phase ramp on the grid's FFTs (batched irfft2);
``ReferencePsfFlux`` fits whole-chunk stamp tensors gathered from the padded planes, with the
NoiseReplacer's corrections (``ctx.cutouts``). Use it on a context from
:func:`tests.kernels.context.quantum_context` (``ctx`` deblended, ``plain`` undeblended).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from forcedphot.plugins.base import MeasurementContext
from forcedphot.plugins.psf_flux import PsfFlux


def reference_images_at(grid, x, y, *, chunk: int = 4096) -> np.ndarray:
    """PSF images (N, K, K) float64 at tract pixel (x, y): bilinear on the node FFTs, then a phase ramp."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    g = np.fft.rfft2(grid.images.astype(np.float64), axes=(-2, -1))
    out = np.empty((x.size, grid.size, grid.size))
    for s in range(0, x.size, chunk):
        out[s:s + chunk] = _images_at(grid, g, x[s:s + chunk], y[s:s + chunk])
    return out


def _images_at(grid, g, x, y):
    k = grid.size
    ix, tx = grid._weights(x, grid.x)
    iy, ty = grid._weights(y, grid.y)
    ix1 = ix if grid.x.size == 1 else ix + 1
    iy1 = iy if grid.y.size == 1 else iy + 1
    f = (((1 - tx) * (1 - ty))[:, None, None] * g[iy, ix]
         + (tx * (1 - ty))[:, None, None] * g[iy, ix1]
         + ((1 - tx) * ty)[:, None, None] * g[iy1, ix]
         + (tx * ty)[:, None, None] * g[iy1, ix1])
    dx = x - np.floor(x + 0.5)
    dy = y - np.floor(y + 0.5)
    f *= np.exp(-2j * np.pi * np.fft.fftfreq(k)[None, :] * dy[:, None])[:, :, None]  # separable phase ramp
    f *= np.exp(-2j * np.pi * np.fft.rfftfreq(k)[None, :] * dx[:, None])[:, None, :]
    return scipy.fft.irfft2(f, s=(k, k), axes=(-2, -1), workers=2)


class ReferencePsfFlux(PsfFlux):
    """The numpy PsfFlux: same columns; measures ``ctx`` only (run it on ``plain`` for the undeblended copy).

    ``invalid_reads_zero=False`` is the old code exactly: the NoiseReplacer added heavy - noise to
    the zeroed invalid pixels of a footprint, so a NaN heavy value there (a footprint over NaN
    pixels) made the whole fit NaN although the pixel has no weight. The kernels read invalid
    pixels as 0 (the default here).
    """

    measures_undeblended = False

    def __init__(self, config, *, invalid_reads_zero: bool = True):
        super().__init__(config)
        self.invalid_reads_zero = invalid_reads_zero

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        out = {c.name: np.full(n, np.nan) for c in self.columns(self.config) if c.kind != "flag"}
        out["psfFlux_npixels"] = np.zeros(n, np.int32)
        out.update({c.name: np.zeros(n, bool) for c in self.columns(self.config) if c.kind == "flag"})
        psf = ctx.coadd.psf  # the padded planes need at least psf.half + 1
        bad_bits = ctx.coadd.mask_planes.bitmask(*self.config.psf_bad_mask_planes) if self.config.psf_bad_mask_planes else 0
        idx = np.flatnonzero(ctx.usable)
        step = self.config.chunk_size
        for s in range(0, idx.size, step):
            sel = idx[s:s + step]
            p = reference_images_at(psf, ctx.x[sel], ctx.y[sel]).reshape(sel.size, -1)
            stamps = ctx.cutouts(sel, psf.half)
            d = stamps.image.reshape(sel.size, -1)
            if self.invalid_reads_zero:
                d = np.where(stamps.valid.reshape(sel.size, -1), d, 0)
            v = stamps.variance.reshape(sel.size, -1)
            valid = stamps.valid.reshape(sel.size, -1)
            good = (stamps.valid & (stamps.mask & bad_bits == 0)).reshape(sel.size, -1)
            excluded = valid & ~good  # valid pixels of a bad mask plane, left out
            excluded_pp = np.einsum("ij,ij->i", np.where(excluded, p, 0.0), np.where(excluded, p, 0.0))
            pg = p if good.all() else np.where(good, p, 0.0)
            inv_v = np.divide(1.0, v, out=np.zeros(v.shape), where=good & (v > 0))
            # every sum in one pass; chi2 = sum(d^2/v) - 2 F sum(p d/v) + F^2 sum(p^2/v)
            a = np.einsum("ij,ij->i", pg, pg)
            with np.errstate(invalid="ignore", divide="ignore"):
                f = np.einsum("ij,ij->i", pg, d) / a
                err = np.sqrt(np.einsum("ij,ij,ij->i", pg, pg, v)) / a
                chi2 = (np.einsum("ij,ij,ij->i", d, d, inv_v) - 2 * f * np.einsum("ij,ij,ij->i", pg, d, inv_v)
                        + f * f * np.einsum("ij,ij,ij->i", pg, pg, inv_v))
                area = pg.sum(axis=1) ** 2 / a
            npix = good.sum(axis=1)
            no_good = npix == 0
            edge = (~valid).any(axis=1) & ~no_good  # off-image or invalid pixels
            too_masked = excluded_pp > self.config.psf_max_bad_weight_fraction * (a + excluded_pp)
            out["psfFlux"][sel] = np.where(no_good, np.nan, f)
            out["psfFluxErr"][sel] = np.where(no_good, np.nan, err)
            out["psfFlux_chi2"][sel] = np.where(no_good, np.nan, chi2)
            out["psfFlux_area"][sel] = np.where(no_good, np.nan, area)
            out["psfFlux_npixels"][sel] = npix
            out["psfFlux_flag_noGoodPixels"][sel] = no_good
            out["psfFlux_flag_edge"][sel] = edge
            out["psfFlux_flag_badPixels"][sel] = excluded.any(axis=1)
            out["psfFlux_flag"][sel] = too_masked
        nonfinite = ~np.isfinite(out["psfFlux"]) | ~np.isfinite(out["psfFluxErr"])
        out["psfFlux_flag"] |= ~ctx.usable | out["psfFlux_flag_noGoodPixels"] | out["psfFlux_flag_edge"] | nonfinite
        return out
