"""The PSF grid: sub-pixel Fourier shifts and bilinear interpolation between nodes."""

import numpy as np

from forcedphot.psf import PsfGrid
from forcedphot.sim.profiles import covariance, render_mixture


def _gauss(k, sigma, dx=0.0, dy=0.0):
    ar = np.arange(k) - k // 2
    xx = np.broadcast_to(ar[None, None, :], (1, k, k)) - dx
    yy = np.broadcast_to(ar[None, :, None], (1, k, k)) - dy
    img = render_mixture(xx, yy, np.ones((1, 1)), covariance(np.array([[sigma]]), 0.05, 0.02))[0]
    return img


def test_fourier_shift_reproduces_an_offset_gaussian():
    k, sigma = 33, 1.6
    centred = _gauss(k, sigma)
    grid = PsfGrid([500.0], [700.0], (centred / centred.sum())[None, None])
    for dx, dy in ((0.3, -0.2), (-0.5, 0.5), (0.11, 0.49)):
        x, y = 500.0 + dx, 700.0 + dy
        got = grid.images_at(np.array([x]), np.array([y]))[0]
        # image pixels are relative to the nearest pixel floor(x + 0.5)
        want = _gauss(k, sigma, x - np.floor(x + 0.5), y - np.floor(y + 0.5)) / centred.sum()
        assert np.abs(got - want).max() < 1e-6 * want.max()
        assert abs(got.sum() - 1) < 1e-9


def test_grid_nodes_and_bilinear_interpolation():
    k = 15
    a, b = _gauss(k, 1.5), _gauss(k, 2.0)
    a, b = a / a.sum(), b / b.sum()
    images = np.stack([np.stack([a, b]), np.stack([a, b])])  # (ny=2, nx=2, k, k): varies along x only
    grid = PsfGrid([0.0, 100.0], [0.0, 100.0], images)
    at_nodes = grid.images_at(np.array([0.0, 100.0]), np.array([0.0, 100.0]))
    np.testing.assert_allclose(at_nodes[0], a, atol=1e-12)
    np.testing.assert_allclose(at_nodes[1], b, atol=1e-12)
    mid = grid.images_at(np.array([25.0]), np.array([60.0]))[0]
    np.testing.assert_allclose(mid, 0.75 * a + 0.25 * b, atol=1e-12)
    # clamped outside the grid
    np.testing.assert_allclose(grid.images_at(np.array([-50.0]), np.array([0.0]))[0], a, atol=1e-12)
