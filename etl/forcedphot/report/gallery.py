"""Cutouts of the most-flagged objects: data, PSF model and residual around the forced position.

data: the coadd image (``io.coadd.read_coadd``, memory-mapped) around the forced position, NaN off the
coadd; model: the PSF model at the forced position (``PsfGrid.images_at``: interpolated between the
grid's nodes and shifted to the sub-pixel position, as PsfFlux fits it) scaled by the measured psfFlux;
residual: data - model. The fit itself sees the noise-replaced image (neighbours replaced by noise)
and masks bad pixels, so a neighbour or an artefact shows in the residual here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from matplotlib.colors import AsinhNorm
from matplotlib.figure import Figure

from forcedphot.io.coadd import Coadd, read_coadd
from forcedphot.repository import DataId, Repository
from forcedphot.report.figures import new_figure

MARGIN = 4  # pixels shown beyond the PSF box on each side


@dataclass
class Cutouts:
    data: np.ndarray  # image units (nJy = value x photo_calib)
    model: np.ndarray
    residual: np.ndarray
    model_note: str  # why the model is empty, if it is


def cut(image: np.ndarray, coadd: Coadd, cx: int, cy: int, half: int) -> np.ndarray:
    """(2 half + 1)^2 pixels of a coadd plane centred on tract pixel (cx, cy); NaN off the coadd."""
    out = np.full((2 * half + 1, 2 * half + 1), np.nan)
    b = coadd.bbox
    y0, y1 = max(cy - half, b.min_y), min(cy + half, b.max_y)
    x0, x1 = max(cx - half, b.min_x), min(cx + half, b.max_x)
    if y0 <= y1 and x0 <= x1:
        out[y0 - cy + half:y1 - cy + half + 1, x0 - cx + half:x1 - cx + half + 1] = \
            image[y0 - b.min_y:y1 - b.min_y + 1, x0 - b.min_x:x1 - b.min_x + 1]
    return out


def cutouts(coadd: Coadd, x: float, y: float, psf_flux: float) -> Cutouts:
    """Data, model (PSF x psfFlux) and residual around the forced position (x, y) in tract pixels."""
    k = coadd.psf.size
    half = k // 2 + MARGIN
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    data = cut(coadd.image, coadd, cx, cy, half)
    model = np.zeros_like(data)
    note = ""
    if np.isfinite(psf_flux):
        psf = coadd.psf.images_at([x], [y])[0]  # pixel (i, j) at tract (cy - k//2 + i, cx - k//2 + j)
        model[MARGIN:MARGIN + k, MARGIN:MARGIN + k] = psf * (psf_flux / coadd.photo_calib)
    else:
        note = "no model: psfFlux is not finite"
    model[np.isnan(data)] = np.nan
    return Cutouts(data, model, data - model, note)


def gallery_figure(c: Cutouts, title: str) -> Figure:
    """Data, model and residual side by side on one asinh grey scale (so the residual compares with the data;
    no colour bar: the page says the scale), no data (NaN, or off the coadd) white."""
    fig = new_figure(6.6, 2.5, layout=None)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.04)
    finite = c.data[np.isfinite(c.data)]
    lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (-1.0, 1.0))
    span = max(hi - lo, 1e-6)
    norm = AsinhNorm(linear_width=0.05 * span, vmin=lo - 0.1 * span, vmax=hi)
    for ax, plane, name in zip(fig.subplots(1, 3), (c.data, c.model, c.residual),
                               ("data", "model (PSF × psfFlux)", "residual")):
        ax.imshow(plane, origin="lower", cmap="gray_r", norm=norm, interpolation="nearest")
        ax.set_title(name if not (name.startswith("model") and c.model_note) else c.model_note, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return fig


class CoaddCache:
    """read_coadd once per quantum shown in the gallery (they are memory-mapped: cheap to keep)."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self._get = lru_cache(maxsize=None)(self._read)

    def _read(self, tract: int, patch: int, band: str) -> Coadd:
        return read_coadd(self.repo.coadd_path(DataId(tract, patch, band)))

    def __call__(self, tract: int, patch: int, band: str) -> Coadd:
        return self._get(tract, patch, band)
