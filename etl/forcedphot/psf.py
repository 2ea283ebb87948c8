"""A PSF model stored as a grid of PSF images across the patch.

Evaluation at many positions at once: bilinear interpolation between the four nearest
grid nodes (clamped at the grid's edge), then a sub-pixel shift to each position by the
exact band-limited (sinc) interpolation that Rubin's lanczos5 kernel approximates: a
Fourier phase ramp, done in real space as two circulant (Dirichlet kernel) matrix products
(K is odd). The compiled kernels are in :mod:`forcedphot.kernels.psf`.

Each node image also has a Gaussian-mixture approximation (:meth:`PsfGrid.node_mixtures`, the
role of Rubin's DoubleShapeletPsfApprox), interpolated to sources so that each component's flux
and first and second moments are the bilinear interpolation of the nodes' (:meth:`PsfGrid.mixtures_at`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_COMPONENTS = 3  # Gaussians per PSF mixture
# a node's mixture is flagged POOR when sum|mixture - image| > this fraction of sum|image|
MAX_RESIDUAL = 0.02
MIXTURE_FAILED, MIXTURE_MAX_ITER, MIXTURE_POOR = 1, 2, 4  # flag bits (the first two from the fit kernel)


@dataclass(frozen=True)
class PsfMixtureFit:
    """Gaussian mixtures fitted to each node image (:func:`forcedphot.kernels.mixtures.fit_psf_mixtures`)."""

    amp: np.ndarray  # (ny, nx, M) component fluxes (the node image sums to 1), smallest component first
    centre: np.ndarray  # (ny, nx, 2) shared centre (x, y), offset from the image's central pixel
    cov: np.ndarray  # (ny, nx, M, 3) covariances (xx, yy, xy), pixels^2
    residual: np.ndarray  # (ny, nx) sum|mixture - image| / sum|image|
    iterations: np.ndarray  # (ny, nx)
    flags: np.ndarray  # (ny, nx) int32: MIXTURE_FAILED, MIXTURE_MAX_ITER, MIXTURE_POOR bits


@dataclass
class PsfGrid:
    x: np.ndarray  # (nx,) node positions, tract pixels, increasing
    y: np.ndarray  # (ny,)
    images: np.ndarray  # (ny, nx, K, K), each centred on its central pixel, unit sum
    _images64: np.ndarray | None = field(default=None, repr=False)
    _moments: np.ndarray | None = field(default=None, repr=False)
    flux_in_box: np.ndarray | None = field(default=None, repr=False)  # simulator's truth: PSF flux within K x K
    _mixtures: dict = field(default_factory=dict, repr=False, compare=False)  # (M, max residual) -> PsfMixtureFit

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

    def node_mixtures(self, n_components: int = N_COMPONENTS, *, max_residual: float = MAX_RESIDUAL) -> PsfMixtureFit:
        """Each node image fitted with ``n_components`` Gaussians (cached), POOR above ``max_residual``."""
        key = (int(n_components), float(max_residual))
        if key not in self._mixtures:
            from forcedphot.kernels.mixtures import FLOAT32_ROUNDING, fit_psf_mixtures

            ny, nx, k, _ = self.images.shape
            rounding = FLOAT32_ROUNDING if self.images.dtype == np.float32 else 0.0  # as the coadd stores them
            amp, centre, cov, residual, _, iterations, status = fit_psf_mixtures(
                self.node_images().reshape(ny * nx, k, k), key[0], rounding=rounding)
            flags = status | np.where(~(residual <= max_residual) & (status != MIXTURE_FAILED), MIXTURE_POOR, 0)
            m = key[0]
            self._mixtures[key] = PsfMixtureFit(amp.reshape(ny, nx, m), centre.reshape(ny, nx, 2),
                                                cov.reshape(ny, nx, m, 3), residual.reshape(ny, nx),
                                                iterations.reshape(ny, nx), flags.astype(np.int32).reshape(ny, nx))
        return self._mixtures[key]

    def mixtures_at(self, x, y, n_components: int = N_COMPONENTS, *, max_residual: float = MAX_RESIDUAL) -> tuple:
        """The PSF mixture at tract (x, y): (amp (N, M), centre (N, M, 2) offsets from (x, y), cov (N, M, 3),
        residual (N,), flags (N,)).

        Component m is the bilinear blend of the four nearest nodes' component m (clamped as the images
        are) that keeps its moments: with node weights t_n, a = sum t_n a_n, a mu = sum t_n a_n mu_n and
        a (C + mu mu^T) = sum t_n a_n (C_n + mu_n mu_n^T). So each component's flux, centroid and second
        moments, hence the mixture's, are those of the bilinearly interpolated node images' mixtures,
        and a blend of positive-definite covariances with positive fluxes stays positive definite.
        residual and flags: the largest residual and the OR of the flags of the nodes with weight > 0.
        """
        fit = self.node_mixtures(n_components, max_residual=max_residual)
        x = np.asarray(x, float).reshape(-1)
        y = np.asarray(y, float).reshape(-1)
        ix, tx = self._weights(x, self.x)
        iy, ty = self._weights(y, self.y)
        ix1 = ix if self.x.size == 1 else ix + 1
        iy1 = iy if self.y.size == 1 else iy + 1
        m = fit.amp.shape[-1]
        a = np.zeros((x.size, m))
        m1 = np.zeros((x.size, m, 2))
        m2 = np.zeros((x.size, m, 3))
        plain = np.zeros((x.size, m, 5))  # the weights' blend of (mu_x, mu_y, Cxx, Cyy, Cxy), for a zero flux
        residual = np.zeros(x.size)
        flags = np.zeros(x.size, np.int32)
        for jy, jx, t in ((iy, ix, (1 - tx) * (1 - ty)), (iy, ix1, tx * (1 - ty)), (iy1, ix, (1 - tx) * ty),
                          (iy1, ix1, tx * ty)):
            wa = t[:, None] * fit.amp[jy, jx]  # (N, M)
            mu = fit.centre[jy, jx][:, None, :]  # (N, 1, 2): one centre per node
            c = fit.cov[jy, jx]
            a += wa
            m1 += wa[..., None] * mu
            m2[..., 0] += wa * (c[..., 0] + mu[..., 0] ** 2)
            m2[..., 1] += wa * (c[..., 1] + mu[..., 1] ** 2)
            m2[..., 2] += wa * (c[..., 2] + mu[..., 0] * mu[..., 1])
            plain += t[:, None, None] * np.concatenate([np.broadcast_to(mu, c.shape[:-1] + (2,)), c], axis=-1)
            used = t > 0
            residual = np.where(used, np.fmax(residual, fit.residual[jy, jx]), residual)
            residual = np.where(used & np.isnan(fit.residual[jy, jx]), np.nan, residual)
            flags |= np.where(used, fit.flags[jy, jx], 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            centre = m1 / a[..., None]
            cov = np.stack([m2[..., 0] / a - centre[..., 0] ** 2, m2[..., 1] / a - centre[..., 1] ** 2,
                            m2[..., 2] / a - centre[..., 0] * centre[..., 1]], axis=-1)
        zero = (a == 0)[..., None]  # a component whose flux underflowed at every node it blends
        return a, np.where(zero, plain[..., :2], centre), np.where(zero, plain[..., 2:], cov), residual, flags
