"""Tiny synthetic FITS inputs for ingest tests: Gaussian stars on a TAN-WCS grid, built in tmp_path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import ndtr

from forcedphot.ingest.grid import make_tan

SHAPE = (72, 88)  # (H, W)
PIXEL_SCALE = 0.2  # arcsec
FWHM_PX = {"g": 3.2, "r": 2.8}
ZERO_POINT = {"g": 27.0, "r": 28.5}
SIGMA_SKY = 0.02  # image units: stars of >= 200 units are noiseless-ish
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def gaussian_image(shape, x, y, flux, fwhm) -> np.ndarray:
    """Pixel-integrated circular Gaussians (exact fluxes, no sampling error)."""
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    h, w = shape
    xe = (np.arange(w + 1) - 0.5)[None, :]
    ye = (np.arange(h + 1) - 0.5)[None, :]
    gx = np.diff(ndtr((xe - np.asarray(x)[:, None]) / sigma), axis=1)  # (N, W)
    gy = np.diff(ndtr((ye - np.asarray(y)[:, None]) / sigma), axis=1)  # (N, H)
    return np.einsum("n,ny,nx->yx", np.asarray(flux, float), gy, gx)


@dataclass
class Synthetic:
    root: Path
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    counts: dict  # band -> image units
    wcs: WCS
    files: dict  # band -> {"image": ..., "variance": ...}

    def njy(self, band):
        return self.counts[band] * 10 ** (-0.4 * (ZERO_POINT[band] - 31.4))


def make_synthetic(root: Path, *, seed: int = 3, n: int = 12, wcs: bool = True) -> Synthetic:
    rng = np.random.default_rng(seed)
    h, w = SHAPE
    # stars on a jittered lattice, away from the edges and from each other
    gx, gy = np.meshgrid(np.linspace(12, w - 13, 4), np.linspace(12, h - 13, 3))
    x = gx.ravel()[:n] + rng.uniform(-1.5, 1.5, n)
    y = gy.ravel()[:n] + rng.uniform(-1.5, 1.5, n)
    tan = make_tan(SHAPE, PIXEL_SCALE, ra=150.1, dec=2.2)
    ra, dec = tan.all_pix2world(x, y, 0)
    counts, files = {}, {}
    root.mkdir(parents=True, exist_ok=True)
    for band in ("g", "r"):
        counts[band] = rng.uniform(300, 3000, n)
        img = gaussian_image(SHAPE, x, y, counts[band], FWHM_PX[band])
        img += rng.normal(0, SIGMA_SKY, SHAPE)
        header = tan.to_header() if wcs else fits.Header()
        path = root / f"{band}.fits"
        fits.HDUList([fits.PrimaryHDU(img.astype(np.float32), header=header),
                      fits.ImageHDU(np.full(SHAPE, SIGMA_SKY ** 2, np.float32), name="VARIANCE")]).writeto(path)
        files[band] = {"image": f"{path}:0", "variance": f"{path}:VARIANCE"}
    return Synthetic(root, x, y, ra, dec, counts, tan, files)


def ingest_hsc_npz(npz_path, tmp_path, *, extra_args=()) -> tuple[Path, np.ndarray]:
    """Write an HSC deblender blend (grizy, inverse-variance weights, PSFs, zero point 27) as FITS
    files and ingest them with its peaks as the catalog; returns (repository root, peaks)."""
    from astropy.io import fits as _fits
    import pyarrow as _pa
    import pyarrow.csv as _pacsv

    from forcedphot.cli import main

    data = np.load(npz_path)
    images, weights, peaks, psfs = data["images"], data["weights"], data["peaks"], data["psfs"]
    root = tmp_path / "repo"
    argv = ["ingest", "fits", "--repo", str(root), "--pixel-scale", "0.168", *extra_args]
    for i, band in enumerate("grizy"):
        path = tmp_path / f"{band}.fits"
        _fits.HDUList([_fits.PrimaryHDU(images[i]), _fits.ImageHDU(weights[i], name="WEIGHT")]).writeto(path)
        _fits.writeto(tmp_path / f"psf_{band}.fits", psfs[i])
        argv += ["--band", band, "--image", str(path), "--invvar", f"{path}:WEIGHT",
                 "--psf", str(tmp_path / f"psf_{band}.fits"), "--zero-point", "27"]
    _pacsv.write_csv(_pa.table({"x": peaks[:, 0], "y": peaks[:, 1]}), tmp_path / "peaks.csv")
    assert main([*argv, "--catalog", str(tmp_path / "peaks.csv")]) == 0
    return root, peaks


def elliptical_gaussian_image(shape, x, y, flux, cov) -> np.ndarray:
    """Elliptical Gaussians of (N, 2, 2) covariances sampled at pixel centres (moments exact for sigma >~ 1.5 px)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    img = np.zeros(shape)
    for xi, yi, f, c in zip(x, y, flux, cov):
        inv = np.linalg.inv(c)
        dx, dy = xx - xi, yy - yi
        q = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
        img += f * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(c)))
    return img


def covariance(a: float, b: float, theta: float) -> np.ndarray:
    """(2, 2) moments of an ellipse of sigmas a, b (pixels), major axis at theta (radians) from +x."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([a * a, b * b]) @ rot.T
