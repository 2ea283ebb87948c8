"""Heavy footprints derived from scarlet-style model data, by flux redistribution.

As Rubin's ``updateCatalogFootprints`` with ``conserve_flux``: in each blend every source's
model (spectrum[band] x morphology, at a Gaussian model PSF) is convolved to the band's
observed PSF with the difference kernel FFT(psf_obs) / FFT(psf_model); then
ratio_i = |m_i| / |sum_j m_j| (0 where the sum is 0, clipped to 1) and the child's heavy is
ratio_i x image over the parent footprint, so the children's heavies add up to the parent's
pixels. Parents and isolated objects get the original pixels. The observed PSF is the
coadd's PSF model at the blend's centre. One FFT convolution per blend and band.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from forcedphot.footprint import spans_to_pixels
from forcedphot.io.coadd import Coadd


def _kernel_spectrum(psf_image: np.ndarray, shape: tuple[int, int], model_sigma: float) -> np.ndarray:
    """rfft2 of the difference kernel psf_obs / model (Gaussian of model_sigma) on a canvas ``shape``."""
    h, w = shape
    k = psf_image.shape[0]
    canvas = np.zeros(shape)
    canvas[:k, :k] = psf_image
    canvas = np.roll(canvas, (-(k // 2), -(k // 2)), axis=(0, 1))  # PSF centre at [0, 0]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    model = np.exp(-2 * np.pi ** 2 * model_sigma ** 2 * (kx * kx + ky * ky))
    return np.fft.rfft2(canvas) / model


def derive_footprints(blends: pa.Table, sources: pa.Table, coadd: Coadd, band: str) -> pa.Table:
    """Per-band heavy footprints (columns of schemas/footprints.yaml) from model data and the coadd image."""
    rows = []
    box = coadd.bbox
    image = coadd.image
    by_parent: dict[int, list[dict]] = {}
    for s in sources.to_pylist():
        by_parent.setdefault(s["parent"], []).append(s)
    for b in blends.to_pylist():
        ys, xs = spans_to_pixels(np.array(b["span_y"]), np.array(b["span_x0"]), np.array(b["span_x1"]))
        on = (xs >= box.min_x) & (xs <= box.max_x) & (ys >= box.min_y) & (ys <= box.max_y)
        values = np.zeros(xs.size, np.float32)
        values[on] = image[ys[on] - box.min_y, xs[on] - box.min_x]
        values = np.nan_to_num(values)
        common = {"tract": b["tract"], "patch": b["patch"], "band": band, "bbox_min_x": b["bbox_min_x"],
                  "bbox_min_y": b["bbox_min_y"], "bbox_max_x": b["bbox_max_x"], "bbox_max_y": b["bbox_max_y"],
                  "span_y": b["span_y"], "span_x0": b["span_x0"], "span_x1": b["span_x1"]}
        rows.append({"id": b["id"], "parent": 0, **common, "values": values})
        children = by_parent.get(b["id"], [])
        if not children:
            continue
        band_index = b["bands"].split(",").index(band)
        psf = coadd.psf
        # a canvas holding every morphology and the parent footprint, padded against wrap-around
        x0 = min(min(c["origin_x"] for c in children), b["bbox_min_x"]) - psf.half
        y0 = min(min(c["origin_y"] for c in children), b["bbox_min_y"]) - psf.half
        x1 = max(max(c["origin_x"] + c["width"] for c in children), b["bbox_max_x"] + 1) + psf.half
        y1 = max(max(c["origin_y"] + c["height"] for c in children), b["bbox_max_y"] + 1) + psf.half
        shape = (y1 - y0, x1 - x0)
        models = np.zeros((len(children),) + shape)
        for i, c in enumerate(children):
            morph = np.asarray(c["morph"], float).reshape(c["height"], c["width"])
            oy, ox = c["origin_y"] - y0, c["origin_x"] - x0
            models[i, oy:oy + c["height"], ox:ox + c["width"]] = c["spectrum"][band_index] * morph
        cx = np.clip(0.5 * (b["bbox_min_x"] + b["bbox_max_x"]), box.min_x, box.max_x)
        cy = np.clip(0.5 * (b["bbox_min_y"] + b["bbox_max_y"]), box.min_y, box.max_y)
        psf_image = psf.images_at(np.array([np.floor(cx + 0.5)]), np.array([np.floor(cy + 0.5)]))[0]
        kernel = _kernel_spectrum(psf_image, shape, b["model_psf_sigma"])
        convolved = np.abs(np.fft.irfft2(np.fft.rfft2(models) * kernel[None], s=shape))
        m = convolved[:, ys - y0, xs - x0]
        total = m.sum(axis=0)
        ratio = np.minimum(np.divide(m, total, out=np.zeros_like(m), where=total > 0), 1.0)
        for c, r in zip(children, ratio):
            rows.append({"id": c["id"], "parent": b["id"], **common, "values": (r * values).astype(np.float32)})
    return pa.Table.from_pylist(rows)
