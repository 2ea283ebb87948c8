"""PsfFlux: linear least-squares amplitude of the PSF model at the forced position.

With P the PSF image shifted to the sub-pixel position (see :mod:`forcedphot.psf`), D the
data and V the variance over the PSF box (minus off-image and invalid pixels and those in
``psf_bad_mask_planes``, as Rubin's badMaskPlanes), as Rubin's base_PsfFlux::

    F = sum(P D) / sum(P^2)       err = sqrt(sum(P^2 V)) / sum(P^2)
    chi2 = sum((D - F P)^2 / V)   area = (sum P)^2 / sum(P^2)

Leaving masked pixels out keeps the fit unbiased (a zeroed bad column through a star's centre
would otherwise take ~30% of its flux) at the cost of a larger error; ``_flag_badPixels`` says
some were left out, and the general flag is set when they carry more than
``psf_max_bad_weight_fraction`` of the box's sum(P^2) (the fraction of the flux a zeroed
masked region would have cost, and of the fit's information lost).

One compiled pass (:func:`forcedphot.kernels.psf.psf_flux`) builds each source's PSF image once
and fits it to the noise-replaced image with the source's own footprint and, when the task
asks for the undeblended copy (``ctx.undeblended``), to the original image.

The general flag is also set centrally (:mod:`forcedphot.validity`, applied by
``ForcedPhotCoaddTask.run`` after all measurement plugins and again after calibration) wherever
psfFlux or psfFluxErr is not finite or psfFluxErr <= 0 (deblended and undeblended); this plugin
sets its specific flags.
"""

from __future__ import annotations

import numpy as np

from forcedphot.layout import UNDEBLENDED
from forcedphot.plugins.base import Column, MeasurementContext, Plugin, excluded_bits, flag, register
from forcedphot.stages import SourcePixels


@register
class PsfFlux(Plugin):
    name = "PsfFlux"
    kernel_modules = ("forcedphot.kernels.psf",)
    measures_undeblended = True  # one kernel pass: each PSF image fits the deblended and the original image

    @classmethod
    def columns(cls, config):
        return (
            Column("psfFlux", "double", "Flux from a linear least-squares fit of the PSF model at the forced position.", "nJy", "flux"),
            Column("psfFluxErr", "double", "Uncertainty of psfFlux: sqrt(sum(P^2 V)) / sum(P^2).", "nJy", "fluxErr"),
            Column("psfFlux_chi2", "float", "Chi-squared of the PSF fit: sum((D - F P)^2 / V)."),
            Column("psfFlux_npixels", "int", "Number of pixels in the PSF fit."),
            Column("psfFlux_area", "float", "Effective area of the PSF: (sum P)^2 / sum(P^2).", "pix"),
            flag("psfFlux_flag", "General failure: no usable centroid, no good pixels, a non-finite result, a clipped PSF box, or more than psf_max_bad_weight_fraction of sum(P^2) on pixels left out for psf_bad_mask_planes."),
            flag("psfFlux_flag_noGoodPixels", "No usable pixels in the PSF box."),
            flag("psfFlux_flag_edge", "The PSF box was clipped by the image edge or by invalid (NO_DATA, non-finite or non-positive-variance) pixels."),
            flag("psfFlux_flag_badPixels", "Pixels of the PSF box in psf_bad_mask_planes (e.g. BAD, SAT) were left out of the fit."),
        )

    def measure(self, ctx: MeasurementContext):
        from forcedphot.kernels.psf import frozen, psf_flux

        pixels = ctx.pixels if ctx.pixels is not None else SourcePixels.build(ctx.coadd, ctx.n)
        image, variance, mask, valid, fp = pixels.planes()
        good = pixels.classes(excluded_bits(ctx.coadd, self.config))  # made once per quantum, shared by the chunks
        c = ctx.centres()
        psf = ctx.coadd.psf
        both = self.name in ctx.undeblended
        res = psf_flux(psf.node_images(), psf.x, psf.y, np.where(ctx.usable, ctx.x, 0.0), np.where(ctx.usable, ctx.y, 0.0),
                       c.cx, c.cy, c.fx, c.fy, c.usable, frozen(image), frozen(pixels.original), frozen(variance),
                       frozen(good), fp, both, float(self.config.psf_max_bad_weight_fraction))
        out = {}
        for a, prefix in enumerate(("", UNDEBLENDED) if both else ("",)):
            flux, err, chi2, area, npix, no_good, edge, failed, bad_pixels = (r[a] for r in res)
            out.update({f"{prefix}psfFlux": flux, f"{prefix}psfFluxErr": err, f"{prefix}psfFlux_chi2": chi2,
                        f"{prefix}psfFlux_npixels": npix, f"{prefix}psfFlux_area": area,
                        f"{prefix}psfFlux_flag": failed, f"{prefix}psfFlux_flag_noGoodPixels": no_good,
                        f"{prefix}psfFlux_flag_edge": edge, f"{prefix}psfFlux_flag_badPixels": bad_pixels})
        return out
