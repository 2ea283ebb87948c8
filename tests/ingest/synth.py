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


# -- deblending validation: noiseless pairs -------------------------------------------------------
PAIR_FWHM = 3.0  # px
PAIR_CELL = 40  # px between pair centres (no two pairs' footprints or 12 px apertures meet)
PAIR_BRIGHT = 1.0e4  # image units = nJy at zero point 31.4
GALAXY = {"h": 1.0, "q": 0.6, "theta": np.deg2rad(35.0)}  # exponential: scale length (px), axis ratio, PA


def galaxy_image(shape, x, y, flux, *, profile: str = "exp", h, q, theta, fwhm, stamp: int = 64) -> np.ndarray:
    """Elliptical galaxies convolved with a Gaussian PSF and integrated over pixels, exact in Fourier space.

    FT = flux P(k) exp(-2 pi^2 sigma^2 k^2) sinc(kx) sinc(ky) times the phase ramp of the position, with
    S = h^2 R diag(1, q^2) R^T and P = (1 + 4 pi^2 k^T S k)^(-3/2) for an exponential of scale length h
    (``profile="exp"``), or P = exp(-2 pi^2 k^T 3S k) for a Gaussian of the same second moments
    (``"gauss"``); a ``stamp``-pixel box each.
    """
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = h * h * rot @ np.diag([1.0, q * q]) @ rot.T
    fy = np.fft.fftfreq(stamp)[:, None]
    fx = np.fft.rfftfreq(stamp)[None, :]
    ksk = cov[0, 0] * fx * fx + 2 * cov[0, 1] * fx * fy + cov[1, 1] * fy * fy
    if profile == "exp":
        shape_ft = (1 + 4 * np.pi ** 2 * ksk) ** -1.5
    elif profile == "gauss":
        shape_ft = np.exp(-2 * np.pi ** 2 * 3 * ksk)
    else:
        raise ValueError(profile)
    base = shape_ft * np.exp(-2 * np.pi ** 2 * sigma ** 2 * (fx * fx + fy * fy)) * np.sinc(fx) * np.sinc(fy)
    h_img, w_img = shape
    out = np.zeros((h_img + 2 * stamp, w_img + 2 * stamp))  # padded: stamps may reach past the image
    half = stamp // 2
    for xi, yi, f in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux)):
        x0, y0 = int(np.floor(xi)) - half, int(np.floor(yi)) - half
        ramp = np.exp(-2j * np.pi * (fx * (xi - x0) + fy * (yi - y0)))
        out[y0 + stamp:y0 + 2 * stamp, x0 + stamp:x0 + 2 * stamp] += f * np.fft.irfft2(base * ramp, s=(stamp, stamp))
    return out[stamp:stamp + h_img, stamp:stamp + w_img]


def galaxy_moments(*, h, q, theta, fwhm) -> np.ndarray:
    """(2, 2) second moments of the pixel-integrated, PSF-convolved galaxy (moments add; exponential: 3 h^2 per axis)."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    return 3 * h * h * rot @ np.diag([1.0, q * q]) @ rot.T + np.eye(2) * (sigma ** 2 + 1 / 12)


@dataclass
class PairScene:
    """One noiseless FITS scene of pairs (bright member first), one per separation, and the truth."""

    band: "object"  # BandSpec
    catalog: "object"  # CatalogSpec
    seps: np.ndarray  # (P,) separations in FWHM
    x: np.ndarray  # (P, 2) bright, faint
    y: np.ndarray
    galaxy: np.ndarray  # (P, 2) bool
    flux: np.ndarray  # (P, 2) total flux (nJy)
    alone: np.ndarray  # (P, 2, H, W) each member alone (for aperture truths)


def make_pair_scene(root: Path, kind: str, ratio: float, seps, *, fwhm: float = PAIR_FWHM,
                    profile: str = "exp") -> PairScene:
    """``kind``: 'star-star', 'star-galaxy' (bright star, faint galaxy) or 'galaxy-star'; faint = bright / ratio;
    ``profile``: the galaxies' ('exp' or 'gauss', the same second moments).

    Pair p sits in cell p along x at a fixed angle, at sub-pixel positions; galaxies carry their
    (PSF-convolved) second moments in the catalog, stars NaN shapes. No noise is added.
    """
    from forcedphot.ingest import BandSpec, CatalogSpec
    from astropy.table import Table

    seps = np.asarray(seps, float)
    n = seps.size
    shape = (PAIR_CELL, PAIR_CELL * n)
    angle = np.deg2rad(20.0)
    cx = PAIR_CELL * (np.arange(n) + 0.5) + 0.23
    cy = np.full(n, PAIR_CELL / 2 + 0.37)
    d = seps * fwhm / 2
    x = np.stack([cx - d * np.cos(angle), cx + d * np.cos(angle)], 1)
    y = np.stack([cy - d * np.sin(angle), cy + d * np.sin(angle)], 1)
    first_gal = kind == "galaxy-star"
    second_gal = kind == "star-galaxy"
    if kind not in ("star-star", "star-galaxy", "galaxy-star"):
        raise ValueError(kind)
    galaxy = np.tile([first_gal, second_gal], (n, 1))
    flux = np.tile([PAIR_BRIGHT, PAIR_BRIGHT / ratio], (n, 1))
    alone = np.zeros((n, 2) + shape)
    for p in range(n):
        for m in range(2):
            if galaxy[p, m]:
                alone[p, m] = galaxy_image(shape, x[p, m], y[p, m], flux[p, m], profile=profile, fwhm=fwhm, **GALAXY)
            else:
                alone[p, m] = gaussian_image(shape, [x[p, m]], [y[p, m]], [flux[p, m]], fwhm)
    image = alone.sum(axis=(0, 1))
    root.mkdir(parents=True, exist_ok=True)
    tan = make_tan(shape, PIXEL_SCALE, ra=150.1, dec=2.2)
    path = root / "r.fits"
    fits.writeto(path, image.astype(np.float32), header=tan.to_header())
    ra, dec = tan.all_pix2world(x.ravel(), y.ravel(), 0)
    mom = np.where(galaxy.ravel()[:, None, None], galaxy_moments(fwhm=fwhm, **GALAXY), np.nan)
    Table({"id": np.arange(1, 2 * n + 1), "ra": ra, "dec": dec, "shape_xx": mom[:, 0, 0], "shape_yy": mom[:, 1, 1],
           "shape_xy": mom[:, 0, 1]}).write(root / "cat.fits")
    band = BandSpec(name="r", image=path, sigma=1e-3, psf_fwhm=f"{fwhm}px", zero_point=31.4)
    return PairScene(band, CatalogSpec(path=root / "cat.fits"), seps, x, y, galaxy, flux, alone)
