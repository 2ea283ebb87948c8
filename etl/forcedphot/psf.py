"""A PSF model stored as a grid of PSF images across the patch.

Evaluation at many positions at once: bilinear interpolation between the four nearest
grid nodes (clamped at the grid's edge), then a sub-pixel shift to each position by the
exact band-limited (sinc) interpolation that Rubin's lanczos5 kernel approximates: a
Fourier phase ramp, done in real space as two circulant (Dirichlet kernel) matrix products
(K is odd). The compiled kernels are in :mod:`forcedphot.kernels.psf`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PsfGrid:
    x: np.ndarray  # (nx,) node positions, tract pixels, increasing
    y: np.ndarray  # (ny,)
    images: np.ndarray  # (ny, nx, K, K), each centred on its central pixel, unit sum
    _images64: np.ndarray | None = field(default=None, repr=False)
    _moments: np.ndarray | None = field(default=None, repr=False)
    flux_in_box: np.ndarray | None = field(default=None, repr=False)  # simulator's truth: PSF flux within K x K

    def __post_init__(self):
        self.x = np.asarray(self.x, float)
        self.y = np.asarray(self.y, float)
        self.images = np.asarray(self.images)
        ny, nx, k1, k2 = self.images.shape
        if (ny, nx) != (self.y.size, self.x.size) or k1 != k2 or k1 % 2 == 0:
            raise ValueError(f"PSF grid must be (ny, nx, K, K) with odd K matching its nodes; got {self.images.shape}")

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def half(self) -> int:
        return self.size // 2

    def _weights(self, coord: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower node index and fractional weight along one axis (clamped)."""
        if nodes.size == 1:
            return np.zeros(coord.shape, int), np.zeros(coord.shape)
        c = np.clip(coord, nodes[0], nodes[-1])
        i = np.clip(np.searchsorted(nodes, c, side="right") - 1, 0, nodes.size - 2)
        t = (c - nodes[i]) / (nodes[i + 1] - nodes[i])
        return i, t

    def node_moments(self) -> np.ndarray:
        """(ny, nx, 2, 2) adaptive moments of the grid images (cached)."""
        if self._moments is None:
            from forcedphot.moments import adaptive_moments

            ny, nx, k, _ = self.images.shape
            flat = self.images.reshape(ny * nx, k, k)
            zeros = np.zeros(ny * nx)
            self._moments = adaptive_moments(flat, zeros, zeros).moments.reshape(ny, nx, 2, 2)
        return self._moments

    def moments_at(self, x, y) -> np.ndarray:
        """(N, 2, 2) PSF second moments at tract (x, y), bilinear between the grid nodes' moments."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        m = self.node_moments()
        ix, tx = self._weights(x, self.x)
        iy, ty = self._weights(y, self.y)
        ix1 = ix if self.x.size == 1 else ix + 1
        iy1 = iy if self.y.size == 1 else iy + 1
        return (((1 - tx) * (1 - ty))[:, None, None] * m[iy, ix] + (tx * (1 - ty))[:, None, None] * m[iy, ix1]
                + ((1 - tx) * ty)[:, None, None] * m[iy1, ix] + (tx * ty)[:, None, None] * m[iy1, ix1])

    def node_images(self) -> np.ndarray:
        """The node images as C-contiguous float64 (ny, nx, K, K), as the kernels read them (cached)."""
        if self._images64 is None:
            self._images64 = np.array(self.images, np.float64, order="C")
        return self._images64

    def images_at(self, x, y) -> np.ndarray:
        """PSF images (N, K, K) float64 for sources at tract pixel (x, y).

        Image pixel (i, j) of source n lies at tract pixel
        ``(round(y[n]) - K//2 + i, round(x[n]) - K//2 + j)``.
        """
        from forcedphot.kernels.psf import NO_PLANES, psf_images

        x = np.array(x, np.float64).reshape(-1)
        y = np.array(y, np.float64).reshape(-1)
        return psf_images(self.node_images(), self.x, self.y, x, y, x - np.floor(x + 0.5), y - np.floor(y + 0.5),
                          NO_PLANES)
