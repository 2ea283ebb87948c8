"""PsfFlux: linear least-squares amplitude of the PSF model at the forced position.

With P the PSF image shifted to the sub-pixel position (see :mod:`forcedphot.psf`), D the
data and V the variance over the PSF box (minus off-image and bad pixels), as Rubin's
base_PsfFlux::

    F = sum(P D) / sum(P^2)       err = sqrt(sum(P^2 V)) / sum(P^2)
    chi2 = sum((D - F P)^2 / V)   area = (sum P)^2 / sum(P^2)
"""

from __future__ import annotations

import numpy as np

from forcedphot.plugins.base import Column, MeasurementContext, Plugin, flag


class PsfFlux(Plugin):
    name = "PsfFlux"

    @classmethod
    def columns(cls, config):
        return (
            Column("psfFlux", "double", "Flux from a linear least-squares fit of the PSF model at the forced position.", "nJy", "flux"),
            Column("psfFluxErr", "double", "Uncertainty of psfFlux: sqrt(sum(P^2 V)) / sum(P^2).", "nJy", "fluxErr"),
            Column("psfFlux_chi2", "float", "Chi-squared of the PSF fit: sum((D - F P)^2 / V)."),
            Column("psfFlux_npixels", "int", "Number of pixels in the PSF fit."),
            Column("psfFlux_area", "float", "Effective area of the PSF: (sum P)^2 / sum(P^2).", "pix"),
            flag("psfFlux_flag", "General failure: no usable centroid, no good pixels, a non-finite result or a clipped PSF box."),
            flag("psfFlux_flag_noGoodPixels", "No usable pixels in the PSF box."),
            flag("psfFlux_flag_edge", "The PSF box was clipped by the image edge or by bad pixels."),
        )

    def measure(self, ctx: MeasurementContext):
        n = ctx.n
        out = {c.name: np.full(n, np.nan) for c in self.columns(self.config) if c.kind != "flag"}
        out["psfFlux_npixels"] = np.zeros(n, np.int32)
        out.update({c.name: np.zeros(n, bool) for c in self.columns(self.config) if c.kind == "flag"})
        psf = ctx.coadd.psf  # the task pads the coadd by at least psf.half + 1
        bad_bits = ctx.coadd.mask_planes.bitmask(*self.config.psf_bad_mask_planes) if self.config.psf_bad_mask_planes else 0
        idx = np.flatnonzero(ctx.usable)
        ix, iy = ctx.centre_index()
        step = self.config.chunk_size
        for s in range(0, idx.size, step):
            sel = idx[s:s + step]
            p = psf.images_at(ctx.x[sel], ctx.y[sel]).reshape(sel.size, -1)
            stamps = ctx.cutouts(sel, psf.half)
            d = stamps.image.reshape(sel.size, -1)
            v = stamps.variance.reshape(sel.size, -1)
            good = (stamps.valid & (stamps.mask & bad_bits == 0)).reshape(sel.size, -1)
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
            edge = (~good).any(axis=1) & ~no_good
            out["psfFlux"][sel] = np.where(no_good, np.nan, f)
            out["psfFluxErr"][sel] = np.where(no_good, np.nan, err)
            out["psfFlux_chi2"][sel] = np.where(no_good, np.nan, chi2)
            out["psfFlux_area"][sel] = np.where(no_good, np.nan, area)
            out["psfFlux_npixels"][sel] = npix
            out["psfFlux_flag_noGoodPixels"][sel] = no_good
            out["psfFlux_flag_edge"][sel] = edge
        nonfinite = ~np.isfinite(out["psfFlux"]) | ~np.isfinite(out["psfFluxErr"])
        out["psfFlux_flag"] = ~ctx.usable | out["psfFlux_flag_noGoodPixels"] | out["psfFlux_flag_edge"] | nonfinite
        return out
