"""Slow reference (tests only) for GaapFlux: an independent path through the same definitions.

Per source, in numpy: the 15 basis images as explicit 2-D arrays (Gaussian x monomials of degree
<= 4 in (u/h, v/h)), each convolved with the PSF image by ``scipy.signal.convolve2d`` (over the
PSF's box, mode "same"); the
kernel K from ``np.linalg.lstsq`` on the zero-sum reparametrisation K = B0 / sum B0 + sum c_k
(B_k - sum B_k B0 / sum B0) (so sum K = 1); the stamp image convolved with K by
``scipy.signal.fftconvolve`` and weighted by the aperture Gaussian; the error from the effective
weight K~ (x) w made by ``scipy.signal.correlate2d``.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import convolve2d, correlate2d, fftconvolve

from forcedphot.kernels.gaap import MAX_Q
from forcedphot.kernels.psf import NO_PLANES, psf_images
from forcedphot.plugins.gaap import APERTURES, GaapFlux, base_name

SUB = (np.arange(4) - 1.5) / 4


def basis_images(sigk: float, hk: int) -> list[np.ndarray]:
    u = np.arange(-hk, hk + 1, dtype=float)
    vv, uu = np.meshgrid(u, u, indexing="ij")  # (row = v, column = u)
    gauss = np.exp(-0.5 * (uu ** 2 + vv ** 2) / sigk ** 2)
    out = []
    for n in range(5):
        for a in range(n, -1, -1):
            b = n - a
            img = gauss * (uu / hk) ** a * (vv / hk) ** b
            out.append(img / np.sqrt((img ** 2).sum()))
    return out


def target(p: float, half: int) -> np.ndarray:
    r = np.arange(-half, half + 1, dtype=float)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    return np.exp(-0.5 * (xx ** 2 + yy ** 2) / p ** 2) / (2 * np.pi * p ** 2)


def gaussianization_kernel(psf: np.ndarray, p: float, sigk: float, hk: int) -> tuple[np.ndarray, float]:
    """(K (2hk+1, 2hk+1), ||T - K (x) P|| / ||T||)."""
    basis = basis_images(sigk, hk)
    conv = [convolve2d(psf, b, mode="same") for b in basis]  # the fit runs over the PSF's own box
    t = target(p, conv[0].shape[0] // 2)
    s = np.array([b.sum() for b in basis])
    b0 = basis[0] / s[0]
    c0 = conv[0] / s[0]
    design = np.stack([(c - si * c0).ravel() for c, si in zip(conv[1:], s[1:])], axis=1)
    coef, *_ = np.linalg.lstsq(design, (t - c0).ravel(), rcond=None)
    kernel = b0 + sum(ci * (b - si * b0) for ci, b, si in zip(coef, basis[1:], s[1:]))
    resid = t - convolve2d(psf, kernel, mode="same")
    return kernel, float(np.sqrt((resid ** 2).sum() / (t ** 2).sum()))


def aperture_weight(qinv: np.ndarray, fx: float, fy: float, rw: int, small: bool) -> np.ndarray:
    r = np.arange(-rw, rw + 1, dtype=float)
    dy, dx = np.meshgrid(r - fy, r - fx, indexing="ij")

    def w(ex, ey):
        q = qinv[0, 0] * ex * ex + 2 * qinv[0, 1] * ex * ey + qinv[1, 1] * ey * ey
        if qinv[0, 1] == 0:  # axis-aligned: the kernel's separable weight, cut by its box only
            return np.exp(-0.5 * q)
        return np.where(q <= MAX_Q, np.exp(-0.5 * q), 0.0)

    if not small:
        return w(dx, dy)
    return sum(w(dx + a, dy + b) for a in SUB for b in SUB) / SUB.size ** 2


class ReferenceGaapFlux(GaapFlux):
    """GaapFlux.measure with the kernel call replaced by the numpy path above (``rows``: the sources measured)."""

    rows: np.ndarray | None = None

    def measure(self, ctx):
        from forcedphot.kernels import gaap as kernel

        calls = {}

        def spy(*args):
            calls["args"] = args
            n, na = args[21].shape
            return (np.full((n, na), np.nan), np.full((n, na), np.nan), np.zeros((n, na), np.uint8),
                    np.zeros((n, na), np.uint8), np.zeros(n, np.uint8), np.full(n, np.nan))

        real = kernel.gaap_flux
        kernel.gaap_flux = spy  # the plugin's geometry (apertures, sizes) with the kernel's work done here
        try:
            GaapFlux.measure(self, ctx)
        finally:
            kernel.gaap_flux = real
        (_, _, _, _, nodes, node_x, node_y, x, y, _, _, _, _, fx, fy, p, sigk, hk, ia, ib, ic, rw, small, _,
         _) = calls["args"]
        # each source's PSF image from the grid (bilinear between nodes), centred (the kernel fit's) and at
        # its sub-pixel position (the normalisation's)
        zero = np.zeros_like(x)
        psf = psf_images(nodes, node_x, node_y, x, y, zero, zero, NO_PLANES)
        shifted = psf_images(nodes, node_x, node_y, x, y, x - np.floor(x + 0.5), y - np.floor(y + 0.5), NO_PLANES)
        n, na = rw.shape
        flux = np.full((n, na), np.nan)
        err = np.full((n, na), np.nan)
        invalid = np.zeros((n, na), np.uint8)
        edge = np.zeros(n, np.uint8)
        residual = np.full(n, np.nan)
        rows = np.arange(n) if self.rows is None else self.rows
        for s in rows:
            if hk[s] < 0:
                continue
            kimg, residual[s] = gaussianization_kernel(psf[s], p[s], sigk[s], int(hk[s]))
            h = int(hk[s])
            if not (rw[s] >= 0).any():
                continue
            hmax = int(rw[s].max()) + h
            stamp = ctx.cutouts(np.array([s]), hmax)
            img = np.where(stamp.valid[0], stamp.image[0].astype(float), 0.0)
            var = np.where(stamp.valid[0], stamp.variance[0].astype(float), 0.0)
            conv = fftconvolve(img, kimg, mode="same")  # the Gaussianized image
            for k in range(na):
                r = int(rw[s, k])
                if r < 0:
                    continue
                qinv = np.array([[ia[s, k], ib[s, k]], [ib[s, k], ic[s, k]]])
                w = aperture_weight(qinv, fx[s], fy[s], r, bool(small[s, k]))
                c = slice(hmax - r, hmax + r + 1)
                # a point source's response: the PSF image at the source's position, Gaussianized, in w
                kp = shifted.shape[1] // 2
                star = np.zeros((2 * r + 1, 2 * r + 1))
                big = convolve2d(shifted[s], kimg, mode="full")  # centred on (kp + h, kp + h)
                c0 = kp + h
                lo = max(0, r - c0)
                hi = min(2 * r + 1, r + c0 + 1)
                star[lo:hi, lo:hi] = big[c0 - r + lo:c0 - r + hi, c0 - r + lo:c0 - r + hi]
                norm = (w * star).sum()
                flux[s, k] = (w * conv[c, c]).sum() / norm
                wp = correlate2d(w, kimg, mode="full")  # K~ (x) w on the (2(r + h) + 1)^2 box
                o = slice(hmax - r - h, hmax + r + h + 1)
                err[s, k] = np.sqrt((wp ** 2 * var[o, o]).sum()) / norm
                aw = np.abs(wp)
                invalid[s, k] = (aw * ~stamp.valid[0][o, o]).sum() > 1e-3 * aw.sum()
                ix, iy = ctx.centre_index()
                pad = ctx.padded.pad
                x0, y0 = ix[s] - pad - r - h, iy[s] - pad - r - h  # coadd-local corner of W''s box
                h_img, w_img = ctx.coadd.image.shape
                yy, xx = np.meshgrid(np.arange(y0, y0 + wp.shape[0]), np.arange(x0, x0 + wp.shape[1]), indexing="ij")
                off = (xx < 0) | (yy < 0) | (xx >= w_img) | (yy >= h_img)
                if (aw * off).sum() > 0:
                    edge[s] = 1
        self.raw = {"flux": flux, "err": err, "invalid": invalid, "edge": edge, "residual": residual}
        out = {}
        for k, ap in enumerate(APERTURES):
            out[base_name(ap)] = flux[:, k]
            out[f"{base_name(ap)}Err"] = err[:, k]
        return out
