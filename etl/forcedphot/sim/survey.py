"""Simulate a multi-band survey tract and write it as a forcedphot repository.

Everything is deterministic from the recipe's seed. Sources are rendered analytically
(Gaussian mixtures, see :mod:`forcedphot.sim.profiles`) over the union of the patches'
outer boxes, so overlapping patches see identical pixels. Detection runs on the noiseless
multi-band image; blends are connected detections with more than one source centre, and
children's heavy footprints are the parent's pixels weighted by their true model fraction
(a perfect deblender). Reference positions and shapes are the truth; the reference model
ellipses (CModel's initial, exp and dev, ``cModel_*`` in ref) are fitted on the reference band's
noise-replaced image with each object's own heavy footprint (:mod:`forcedphot.refmodels`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from forcedphot.errors import InputError
from forcedphot.flags import MaskPlanes
from forcedphot.footprint import mask_to_spans
from forcedphot.ids import IdPacker
from forcedphot.io.coadd import Coadd, write_coadd
from forcedphot.io.parquet import write_parquet
from forcedphot import refmodels
from forcedphot.psf import PsfGrid
from forcedphot.repository import DataId, Repository
from forcedphot.repository_inputs import InputsUpdate, writing_inputs
from forcedphot.schema import load_schema
from forcedphot.sim.calibration_products import simulate_ap_corr, simulate_inputs
from forcedphot.sim.profiles import PIXEL_VARIANCE, covariance, ellipse_covariance, render_mixture, sersic_mixture
from forcedphot.sim.recipe import Recipe
from forcedphot.skymap import Box, SkyMap, TractInfo

log = logging.getLogger(__name__)

AB_NJY = 31.4  # AB magnitude of 1 nJy
COLOUR_SLOPE = {"u": 2.0, "g": 1.0, "r": 0.4, "i": 0.0, "z": -0.2, "y": -0.3}
STAMP_HALF_SIZES = np.array([8, 12, 16, 24, 32, 40])


def mag_to_njy(mag):
    return 10.0 ** (-0.4 * (np.asarray(mag) - AB_NJY))


@dataclass
class Sources:
    """The simulated universe in tract pixels."""

    x: np.ndarray
    y: np.ndarray
    is_star: np.ndarray
    flux: dict  # band -> (N,) nJy
    gal_kind: np.ndarray  # 'exp' / 'dev' / '' for stars
    gal_cov: np.ndarray  # (N, 2, 2) shape covariance in units of the mixture (r_e^2 scaled)

    def __len__(self):
        return self.x.size


class PsfField:
    """A smoothly varying double-Gaussian PSF per band."""

    def __init__(self, recipe: Recipe, band: str):
        self.sigma0 = recipe.psf_fwhm_arcsec[band] / 2.3548 / recipe.pixel_scale
        self.variation = recipe.psf_variation
        self.ell = recipe.psf_ellipticity
        self.wing_fraction = recipe.psf_wing_fraction
        self.wing_scale = recipe.psf_wing_scale
        self.cx = (recipe.tract_width - 1) / 2
        self.cy = (recipe.tract_height - 1) / 2
        self.half = max(recipe.tract_width, recipe.tract_height) / 2

    def components(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) amplitudes and (N, 2, 2, 2) covariances of the PSF at tract (x, y)."""
        u = (np.asarray(x, float) - self.cx) / self.half
        v = (np.asarray(y, float) - self.cy) / self.half
        sigma = self.sigma0 * (1 + self.variation * (0.7 * u + 0.3 * v))
        e1 = self.ell * u
        e2 = self.ell * 0.6 * v
        core = covariance(sigma, e1, e2)
        wing = core * self.wing_scale ** 2
        amps = np.broadcast_to(np.array([1 - self.wing_fraction, self.wing_fraction]), u.shape + (2,))
        return np.array(amps), np.stack([core, wing], axis=-3)

    @property
    def fwhm(self) -> float:
        return 2.3548 * self.sigma0


class ModelPsf:
    """The deblender's model PSF: a narrow circular Gaussian, the same everywhere and in every band."""

    sigma = 0.8
    pad = 6  # morphology boxes extend the parent box by this many pixels

    def components(self, x, y):
        n = np.size(x)
        amps = np.tile([1.0, 0.0], (n, 1))
        covs = np.tile(np.eye(2) * self.sigma ** 2, (n, 2, 1, 1))
        return amps, covs


def _draw_mags(rng, lo, hi, n, slope):
    """Magnitudes with dN/dm ~ 10^(slope m) between lo and hi."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def pair_grid_sources(recipe: Recipe, rng: np.random.Generator, region: Box) -> Sources:
    """Isolated star pairs on a grid: every (separation in PSF FWHM, flux ratio) cell of the recipe's
    ``pair_grid``, ``pairs_per_cell`` times, at random orientations; for deblending validation."""
    fwhm_px = recipe.psf_fwhm_arcsec[recipe.ref_band] / recipe.pixel_scale
    cells = [(float(sep), float(ratio)) for sep, ratio in recipe.pair_grid for _ in range(recipe.pairs_per_cell)]
    spacing = recipe.pair_spacing
    nx = int((region.width - 2 * spacing) // spacing)
    if len(cells) > nx * nx:
        raise InputError(f"recipe {recipe.name!r}: {len(cells)} pairs do not fit a {nx}x{nx} grid of spacing {spacing}")
    gx = region.min_x + spacing + spacing * (np.arange(len(cells)) % nx)
    gy = region.min_y + spacing + spacing * (np.arange(len(cells)) // nx)
    sep = np.array([c[0] for c in cells]) * fwhm_px
    ratio = np.array([c[1] for c in cells])
    ang = rng.uniform(0, np.pi, len(cells))
    jitter = rng.uniform(-0.5, 0.5, (2, len(cells)))
    x = np.r_[gx + jitter[0] - 0.5 * sep * np.cos(ang), gx + jitter[0] + 0.5 * sep * np.cos(ang)]
    y = np.r_[gy + jitter[1] - 0.5 * sep * np.sin(ang), gy + jitter[1] + 0.5 * sep * np.sin(ang)]
    bright = mag_to_njy(rng.uniform(*recipe.star_mag, len(cells)))
    flux = {b: np.r_[bright, bright / ratio] for b in recipe.bands}
    n = x.size
    return Sources(x, y, np.ones(n, bool), flux, np.full(n, ""), np.zeros((n, 2, 2)))


def make_sources(recipe: Recipe, rng: np.random.Generator, region: Box) -> Sources:
    if recipe.pair_grid:
        return pair_grid_sources(recipe, rng, region)
    n_star, n_gal, n_bright = recipe.n_stars, recipe.n_galaxies, recipe.n_bright_stars
    n0 = n_star + n_gal + n_bright
    x = rng.uniform(region.min_x, region.max_x, n0)
    y = rng.uniform(region.min_y, region.max_y, n0)
    is_star = np.r_[np.ones(n_star, bool), np.zeros(n_gal, bool), np.ones(n_bright, bool)]
    mag = np.r_[_draw_mags(rng, *recipe.star_mag, n_star, 0.2),
                _draw_mags(rng, *recipe.galaxy_mag, n_gal, 0.3),
                rng.uniform(*recipe.bright_star_mag, n_bright)]
    # close pairs: a new source at 1-3 PSF FWHM from a random existing one
    n_pair = recipe.n_close_pairs
    host = rng.choice(n_star + n_gal, n_pair, replace=False)
    fwhm_px = recipe.psf_fwhm_arcsec[recipe.ref_band] / recipe.pixel_scale
    sep = rng.uniform(*recipe.pair_separation_fwhm, n_pair) * fwhm_px
    ang = rng.uniform(0, 2 * np.pi, n_pair)
    x = np.r_[x, x[host] + sep * np.cos(ang)]
    y = np.r_[y, y[host] + sep * np.sin(ang)]
    pair_star = rng.random(n_pair) < 0.5
    is_star = np.r_[is_star, pair_star]
    mag = np.r_[mag, mag[host] + rng.uniform(0.0, 2.5, n_pair)]
    n = x.size
    colour = rng.uniform(-0.3, 1.5, n)
    flux = {b: mag_to_njy(mag + COLOUR_SLOPE[b] * colour + rng.normal(0, 0.05, n)) for b in recipe.bands}
    kind = np.where(is_star, "", np.where(rng.random(n) < 0.3, "dev", "exp"))
    lo, hi = np.log(np.array(recipe.galaxy_re_arcsec) / recipe.pixel_scale)
    r_e = np.exp(rng.uniform(lo, hi, n))
    q = rng.uniform(0.35, 1.0, n)
    theta = rng.uniform(0, np.pi, n)
    gal_cov = ellipse_covariance(r_e, q, theta)
    gal_cov[is_star] = 0.0
    keep = region.contains(x, y)
    return Sources(x[keep], y[keep], is_star[keep], {b: f[keep] for b, f in flux.items()},
                   kind[keep], gal_cov[keep])


def source_mixtures(src: Sources, idx: np.ndarray, psf: PsfField, band: str):
    """Per-source (amps (n, M), covs (n, M, 2, 2)) of the PSF-convolved model in one band."""
    pamp, pcov = psf.components(src.x[idx], src.y[idx])
    exp_a, exp_v = sersic_mixture("exp")
    dev_a, dev_v = sersic_mixture("dev")
    m = max(len(exp_a), len(dev_a)) * 2
    amps = np.zeros((idx.size, m))
    covs = np.tile(np.eye(2), (idx.size, m, 1, 1))
    flux = src.flux[band][idx]
    kinds = src.gal_kind[idx]
    for kind, ga, gv in (("", np.ones(1), np.zeros(1)), ("exp", exp_a, exp_v), ("dev", dev_a, dev_v)):
        sel = kinds == kind
        if not sel.any():
            continue
        k = 0
        for a, v in zip(ga, gv):
            for p in range(2):
                amps[sel, k] = flux[sel] * a * pamp[sel, p]
                covs[sel, k] = v * src.gal_cov[idx[sel]] + pcov[sel, p]
                k += 1
    return amps, covs


def _stamp_offsets(x, y, half):
    """Integer pixel grids (n, S, S) around each centre, and offsets from the true centre."""
    ar = np.arange(-half, half + 1)
    ix = np.floor(x + 0.5).astype(np.int64)[:, None, None] + ar[None, None, :]
    iy = np.floor(y + 0.5).astype(np.int64)[:, None, None] + ar[None, :, None]
    ix, iy = np.broadcast_arrays(ix, iy)
    return ix, iy, ix - x[:, None, None], iy - y[:, None, None]


def render_band(src: Sources, psf: PsfField, band: str, region: Box, *, chunk: int = 2000) -> np.ndarray:
    """Noiseless image (nJy per pixel) of all sources over ``region``."""
    amps_all, covs_all = source_mixtures(src, np.arange(len(src)), psf, band)
    sig = np.sqrt(np.max(np.linalg.eigvalsh(covs_all), axis=-1))
    sig = np.where(amps_all > 0, sig, 0).max(axis=1)
    need = np.ceil(4.5 * sig)
    half = STAMP_HALF_SIZES[np.minimum(np.searchsorted(STAMP_HALF_SIZES, need), STAMP_HALF_SIZES.size - 1)]
    image = np.zeros(region.width * region.height)
    for (kind, h), members in _groups(src.gal_kind, half):
        used = np.flatnonzero((amps_all[members] != 0).any(axis=0))  # drop padding components
        for s in range(0, members.size, chunk):
            idx = members[s:s + chunk]
            ix, iy, dx, dy = _stamp_offsets(src.x[idx], src.y[idx], int(h))
            vals = render_mixture(dx, dy, amps_all[idx][:, used], covs_all[idx][:, used])
            lx, ly = ix - region.min_x, iy - region.min_y
            ok = (lx >= 0) & (lx < region.width) & (ly >= 0) & (ly < region.height)
            image += np.bincount((ly * region.width + lx)[ok], weights=vals[ok], minlength=image.size)
    return image.reshape(region.height, region.width)


def _groups(*keys):
    """(key tuple, member indices) for each distinct combination of the key arrays."""
    combos = np.stack([np.unique(k, return_inverse=True)[1] for k in keys], axis=1)
    uniq, inverse = np.unique(combos, axis=0, return_inverse=True)
    for g in range(len(uniq)):
        members = np.flatnonzero(inverse.ravel() == g)
        yield tuple(k[members[0]] for k in keys), members


def model_at(src: Sources, i: int, psf: PsfField, band: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """One source's noiseless model at pixel centres (xs, ys)."""
    amps, covs = source_mixtures(src, np.array([i]), psf, band)
    dx = (xs - src.x[i])[None, None, :]
    dy = (ys - src.y[i])[None, None, :]
    return render_mixture(dx, dy, amps, covs)[0, 0]


def _node_mixtures(grid: PsfGrid) -> tuple:
    """The grid nodes' PSF mixtures (amp, centre, cov), row-major, as CModel uses them."""
    fit = grid.node_mixtures()
    m = fit.amp.shape[-1]
    return fit.amp.reshape(-1, m), fit.centre.reshape(-1, 2), fit.cov.reshape(-1, m, 3)


def psf_grid(psf: PsfField, box: Box, recipe: Recipe) -> PsfGrid:
    nx = max(2, int(np.ceil(box.width / recipe.psf_grid_spacing)) + 1)
    ny = max(2, int(np.ceil(box.height / recipe.psf_grid_spacing)) + 1)
    gx = np.linspace(box.min_x, box.max_x, nx)
    gy = np.linspace(box.min_y, box.max_y, ny)
    xx, yy = np.meshgrid(gx, gy)
    xs, ys = xx.ravel(), yy.ravel()
    pamp, pcov = psf.components(xs, ys)
    k = recipe.psf_size
    ar = np.arange(k) - k // 2
    dx = np.broadcast_to(ar[None, None, :], (xs.size, k, k)).astype(float)
    dy = np.broadcast_to(ar[None, :, None], (xs.size, k, k)).astype(float)
    img = render_mixture(dx, dy, pamp, pcov)
    in_box = img.sum(axis=(1, 2))  # the PSF's flux inside the K x K box (wings beyond it are lost)
    img /= in_box[:, None, None]
    grid = PsfGrid(gx, gy, img.reshape(ny, nx, k, k))
    grid.flux_in_box = in_box.reshape(ny, nx)
    return grid


def _moments(src: Sources, idx, psf: PsfField, band: str):
    """Flux, PSF-convolved second moments and Kron radius (analytic) of sources ``idx``.

    The Kron radius (first moment of the radius) of a circular Gaussian of width s is
    s sqrt(pi / 2); for a mixture it is the flux-weighted sum over components, with s the
    determinant radius of each component (exact for circular components).
    """
    amps, covs = source_mixtures(src, idx, psf, band)
    f = amps.sum(axis=1)
    norm = np.where(f > 0, f, 1)
    m = (amps[:, :, None, None] * covs).sum(axis=1) / norm[:, None, None]
    det = covs[..., 0, 0] * covs[..., 1, 1] - covs[..., 0, 1] ** 2
    kron = np.sqrt(np.pi / 2) * (amps * np.maximum(det, 0) ** 0.25).sum(axis=1) / norm
    return f, m, kron


def simulate(recipe: Recipe, repo_root, *, progress: bool = True, overwrite: bool = True) -> Repository:
    """Simulate ``recipe`` into the repository at ``repo_root`` (see :func:`simulate_into`)."""
    simulate_into(recipe, repo_root, progress=progress, overwrite=overwrite)
    return Repository(repo_root)


def simulate_into(recipe: Recipe, repo_root, *, progress: bool = True, overwrite: bool = True) -> InputsUpdate:
    """Simulate ``recipe`` into a new repository at ``repo_root``, or into the inputs of the repository there.

    The survey is assembled in a temporary folder next to ``repo_root``. A new repository is
    that folder renamed into place (a killed simulation leaves none). Into an existing one
    (``overwrite``), only the input files whose bytes changed are replaced: its outputs and run
    history are kept, and the next run re-measures exactly the quanta whose inputs changed (none
    for the same recipe and seed); see :mod:`forcedphot.repository_inputs`. A folder holding
    anything forcedphot did not write is refused (InputError) and left as it was.
    """
    with writing_inputs(repo_root, overwrite=overwrite, command="forcedphot simulate",
                        exists="repository exists; pass --overwrite to simulate into it again") as update:
        _simulate_into(recipe, update.staging, progress=progress)
    return update


def _simulate_into(recipe: Recipe, repo_root, *, progress: bool) -> Repository:
    rng = np.random.default_rng(recipe.seed)
    repo = Repository(repo_root).create(description=f"simulated survey, recipe {recipe.name!r}, seed {recipe.seed}")
    tract = TractInfo(0, recipe.ra, recipe.dec, recipe.pixel_scale, recipe.patch_inner, recipe.patch_border,
                      recipe.n_patch_x, recipe.n_patch_y)
    skymap = SkyMap(f"sim-{recipe.name}", (tract,))
    repo.write_skymap(skymap)
    packer = IdPacker(skymap.n_tracts, skymap.n_patches)
    patches = tract.patches()
    region = Box(min(p.outer.min_x for p in patches), min(p.outer.min_y for p in patches),
                 max(p.outer.max_x for p in patches), max(p.outer.max_y for p in patches))
    src = make_sources(recipe, rng, region)
    inputs = simulate_inputs(region, np.random.default_rng([recipe.seed, 1]))
    planes = MaskPlanes()
    psfs = {b: PsfField(recipe, b) for b in recipe.bands}

    bar = tqdm(total=2 * len(recipe.bands) + len(patches), desc=f"simulate {recipe.name}", disable=not progress,
               unit="step")
    models, images, variances, masks = {}, {}, {}, {}
    for band in recipe.bands:
        models[band] = render_band(src, psfs[band], band, region)
        bar.update()
    # detection on the noiseless multi-band SNR image
    det = sum(models[b] / recipe.sky_sigma_njy[b] for b in recipe.bands)
    labels, n_comp = ndimage.label(det > recipe.detection_threshold)
    yy, xx = np.mgrid[region.min_y:region.max_y + 1, region.min_x:region.max_x + 1]
    no_data = np.zeros(labels.shape, bool)
    for x0, y0, x1, y1 in recipe.no_data_boxes:
        no_data[max(y0 - region.min_y, 0):max(y1 - region.min_y + 1, 0),
                max(x0 - region.min_x, 0):max(x1 - region.min_x + 1, 0)] = True
    edge = ndimage.binary_dilation(no_data, iterations=recipe.edge_width) & ~no_data
    ew = recipe.edge_width
    edge[:ew] = edge[-ew:] = True
    edge[:, :ew] = edge[:, -ew:] = True
    bad = np.isin(xx, np.array(recipe.bad_columns))
    for band in recipe.bands:
        calib = mag_to_njy(recipe.zero_point[band])  # nJy per count
        model = models[band]
        var_njy = recipe.sky_sigma_njy[band] ** 2 + np.maximum(model, 0) * recipe.poisson_njy
        # pixel noise has its own stream: a noiseless twin (noise = false) has identical sources and artefacts
        noise_rng = np.random.default_rng([recipe.seed, 3, recipe.bands.index(band)])
        img = model + (noise_rng.standard_normal(model.shape) * np.sqrt(var_njy) if recipe.noise else 0.0)
        mask = np.zeros(model.shape, np.int32)
        sat = model > recipe.saturation_njy
        img[sat] = recipe.saturation_njy
        img[bad] += 30 * recipe.sky_sigma_njy[band] * rng.standard_normal(int(bad.sum()))
        mask |= np.where(sat, planes.bitmask("SAT"), 0).astype(np.int32)
        mask |= np.where(bad, planes.bitmask("BAD"), 0).astype(np.int32)
        mask |= np.where(labels > 0, planes.bitmask("DETECTED"), 0).astype(np.int32)
        mask |= np.where(edge, planes.bitmask("EDGE"), 0).astype(np.int32)
        mask |= np.where(no_data, planes.bitmask("NO_DATA"), 0).astype(np.int32)
        img[no_data] = np.nan
        var_njy = np.where(no_data, np.nan, var_njy)
        images[band] = (img / calib).astype(np.float32)
        variances[band] = (var_njy / calib ** 2).astype(np.float32)
        masks[band] = mask
        bar.update()

    # group source centres into detected components (isolated objects and blends)
    sx = np.floor(src.x + 0.5).astype(int) - region.min_x
    sy = np.floor(src.y + 0.5).astype(int) - region.min_y
    comp_of = labels[sy, sx]
    detected = np.flatnonzero(comp_of > 0)
    order = detected[np.argsort(comp_of[detected], kind="stable")]
    comps = np.split(order, np.flatnonzero(np.diff(comp_of[order])) + 1) if order.size else []
    slices = ndimage.find_objects(labels)
    tree = cKDTree(np.c_[src.x, src.y])
    n_neigh = np.array([len(v) - 1 for v in tree.query_ball_point(np.c_[src.x, src.y], recipe.isolation_radius)])
    ref_psf = psfs[recipe.ref_band]
    flux_ref, mom, kron = _moments(src, np.arange(len(src)), ref_psf, recipe.ref_band)
    # the reference band as deblended measurements see it: every detection replaced by noise
    ref_base = refmodels.noise_replaced(images[recipe.ref_band], variances[recipe.ref_band], labels > 0,
                                        [recipe.seed, 4])

    for p in patches:
        _write_patch(repo, recipe, tract, p, packer, src, comps, labels, slices, region, images, variances,
                     masks, models, psfs, planes, flux_ref, mom, kron, n_neigh, inputs, ref_base)
        bar.update()
    bar.close()
    return repo


def _write_patch(repo, recipe, tract, p, packer, src, comps, labels, slices, region, images, variances, masks,
                 models, psfs, planes, flux_ref, mom, kron, n_neigh, inputs, ref_base):
    ref_rows, truth_rows = [], []
    fp_rows = {b: [] for b in recipe.bands}
    blend_rows, source_rows = [], []
    model_psf = ModelPsf()
    counter = 0
    for members in comps:
        label = labels[int(np.floor(src.y[members[0]] + 0.5)) - region.min_y,
                       int(np.floor(src.x[members[0]] + 0.5)) - region.min_x]
        f = flux_ref[members]
        cx = float(np.sum(f * src.x[members]) / f.sum())
        cy = float(np.sum(f * src.y[members]) / f.sum())
        if not p.outer.contains(cx, cy):
            continue
        sl = slices[label - 1]
        comp_mask = labels[sl] == label
        # clip the footprint to the patch outer box
        y0, x0 = sl[0].start + region.min_y, sl[1].start + region.min_x
        oy0, oy1 = max(y0, p.outer.min_y), min(y0 + comp_mask.shape[0] - 1, p.outer.max_y)
        ox0, ox1 = max(x0, p.outer.min_x), min(x0 + comp_mask.shape[1] - 1, p.outer.max_x)
        comp_mask = comp_mask[oy0 - y0:oy1 - y0 + 1, ox0 - x0:ox1 - x0 + 1]
        spans = mask_to_spans(comp_mask, ox0, oy0)
        pys, pxs = np.nonzero(comp_mask)
        pys, pxs = pys + oy0, pxs + ox0
        pix = (pys - region.min_y, pxs - region.min_x)
        blended = members.size > 1
        ids = packer.make_ids(tract.tract, p.patch, np.arange(counter + 1, counter + 1 + members.size + blended))
        counter += members.size + blended
        parent_id = int(ids[0]) if blended else 0
        child_ids = ids[1:] if blended else ids
        if blended:
            d = np.c_[src.x[members] - cx, src.y[members] - cy]
            shape = (f[:, None, None] * (mom[members] + d[:, :, None] * d[:, None, :])).sum(0) / f.sum()
            det = shape[0, 0] * shape[1, 1] - shape[0, 1] ** 2
            ref_rows.append(_ref_row(parent_id, 0, tract, p, cx, cy, shape, members.size, False, recipe,
                                     kron_radius=np.sqrt(np.pi / 2) * det ** 0.25))
        for cid, i in zip(child_ids, members):
            inner = bool(p.inner.contains(src.x[i], src.y[i]))
            ref_rows.append(_ref_row(int(cid), parent_id, tract, p, src.x[i], src.y[i], mom[i], 0, inner, recipe,
                                     kron_radius=kron[i]))
            for b in recipe.bands:
                truth_rows.append({"id": int(cid), "tract": tract.tract, "patch": p.patch, "band": b,
                                   "source_id": int(i), "is_star": bool(src.is_star[i]),
                                   "flux": float(src.flux[b][i]), "x": float(src.x[i]), "y": float(src.y[i]),
                                   "n_neighbours": int(n_neigh[i])})
        bbox = (int(ox0), int(oy0), int(ox1), int(oy1))
        blend_rows.append({"id": parent_id if blended else int(child_ids[0]), "tract": tract.tract, "patch": p.patch,
                           "bands": ",".join(recipe.bands),
                           # morphologies are point samples of profile x model PSF x pixel (variance 1/12)
                           "model_psf_sigma": float(np.sqrt(ModelPsf.sigma ** 2 + PIXEL_VARIANCE)),
                           "bbox_min_x": bbox[0], "bbox_min_y": bbox[1], "bbox_max_x": bbox[2], "bbox_max_y": bbox[3],
                           "span_y": spans[0], "span_x0": spans[1], "span_x1": spans[2]})
        if blended:  # morphologies at the model PSF over the parent box (padded), spectra in image units
            mx0, my0 = bbox[0] - ModelPsf.pad, bbox[1] - ModelPsf.pad
            mw, mh = bbox[2] - bbox[0] + 1 + 2 * ModelPsf.pad, bbox[3] - bbox[1] + 1 + 2 * ModelPsf.pad
            gy, gx = np.mgrid[my0:my0 + mh, mx0:mx0 + mw]
            for cid, i in zip(child_ids, members):
                morph = model_at(src, i, model_psf, recipe.ref_band, gx.ravel().astype(float), gy.ravel().astype(float))
                total = morph.sum()
                spectrum = [float(src.flux[b][i] / mag_to_njy(recipe.zero_point[b]) * total / src.flux[recipe.ref_band][i])
                            for b in recipe.bands]
                source_rows.append({"id": int(cid), "parent": parent_id, "tract": tract.tract, "patch": p.patch,
                                    "origin_x": int(mx0), "origin_y": int(my0), "width": int(mw), "height": int(mh),
                                    "spectrum": spectrum, "morph": (morph / total).astype(np.float32)})
        for b in recipe.bands:
            values = images[b][pix]
            if blended:
                fp_rows[b].append(_fp_row(parent_id, 0, tract, p, b, bbox, spans, values))
                per = np.array([model_at(src, i, psfs[b], b, pxs.astype(float), pys.astype(float)) for i in members])
                per = np.abs(per)
                total = per.sum(axis=0)
                ratio = np.divide(per, total, out=np.zeros_like(per), where=total > 0)
                ratio = np.minimum(ratio, 1.0)
                for cid, r in zip(child_ids, ratio):
                    fp_rows[b].append(_fp_row(int(cid), parent_id, tract, p, b, bbox, spans,
                                              (r * values).astype(np.float32)))
            else:
                fp_rows[b].append(_fp_row(int(child_ids[0]), 0, tract, p, b, bbox, spans, values))

    _add_reference_models(ref_rows, fp_rows[recipe.ref_band], ref_base, variances[recipe.ref_band],
                          masks[recipe.ref_band], planes, psf_grid(psfs[recipe.ref_band], p.outer, recipe), region)
    write_parquet(pa.Table.from_pylist(ref_rows), repo.ref_path(tract.tract, p.patch), load_schema("ref"))
    write_parquet(pa.Table.from_pylist(truth_rows), repo.truth_path(tract.tract, p.patch), load_schema("truth"))
    for table, rows in (("blends", blend_rows), ("sources", source_rows)):
        schema = load_schema("scarlet_models", table)
        write_parquet(pa.Table.from_pylist(rows, schema=schema.arrow_schema()), repo.scarlet_path(tract.tract, p.patch, table),
                      schema)
    oy = slice(p.outer.min_y - region.min_y, p.outer.max_y - region.min_y + 1)
    ox = slice(p.outer.min_x - region.min_x, p.outer.max_x - region.min_x + 1)
    for b in recipe.bands:
        data_id = DataId(tract.tract, p.patch, b)
        fp_schema = load_schema("footprints")  # columns the simulator does not fill (deblend_zeroFlux) are null
        write_parquet(pa.Table.from_pylist(fp_rows[b], schema=fp_schema.arrow_schema()), repo.footprints_path(data_id),
                      fp_schema)
        grid = psf_grid(psfs[b], p.outer, recipe)
        ap_corr = simulate_ap_corr(psfs[b], psfs[recipe.ref_band], p.outer, grid.x, grid.y,
                                   np.random.default_rng([recipe.seed, 2, p.patch, recipe.bands.index(b)]),
                                   psf_fraction=grid.flux_in_box.ravel(), psf_mixtures=_node_mixtures(grid))
        coadd = Coadd(tract=tract.tract, patch=p.patch, band=b, bbox=p.outer,
                      image=images[b][oy, ox], mask=masks[b][oy, ox], variance=variances[b][oy, ox],
                      wcs=tract.wcs, psf=grid, photo_calib=float(mag_to_njy(recipe.zero_point[b])), mask_planes=planes,
                      ap_corr=ap_corr, inputs=inputs)
        write_coadd(coadd, repo.coadd_path(data_id))


def _add_reference_models(ref_rows, fp_rows, base, variance, mask, planes, grid, region):
    """The ref rows' cModel_* columns: fitted on the noise-replaced reference band with each row's own
    heavy footprint (fp_rows are in ref-row order), the footprint's area for the region's fallback."""
    if not ref_rows:
        return
    assert [r["id"] for r in ref_rows] == [r["id"] for r in fp_rows]
    fp = refmodels.footprint_tuple([(r["span_y"], r["span_x0"], r["span_x1"], r["values"]) for r in fp_rows],
                                   region.min_x, region.min_y)
    area = np.array([np.sum(np.asarray(r["span_x1"]) - np.asarray(r["span_x0"]) + 1) for r in fp_rows], float)
    x = np.array([r["centroid_x"] for r in ref_rows])
    y = np.array([r["centroid_y"] for r in ref_rows])
    shape = np.array([[r["shape_xx"], r["shape_yy"], r["shape_xy"]] for r in ref_rows])
    kron = np.array([np.nan if r["kron_radius"] is None else r["kron_radius"] for r in ref_rows])
    cols = refmodels.fit_on_planes(base, variance, mask, grid, x, y, shape, kron, min_x=region.min_x,
                                   min_y=region.min_y, mask_planes=planes, footprints=fp, footprint_area=area)
    for i, row in enumerate(ref_rows):
        for c in refmodels.REF_COLUMNS:
            v = cols[c][i]
            row[c] = bool(v) if v.dtype == bool else (float(v) if np.isfinite(v) else None)


def _ref_row(oid, parent, tract, p, x, y, shape, n_child, inner, recipe, *, kron_radius=None):
    ra, dec = tract.pixel_to_sky(x, y)
    return {"id": oid, "parent": parent, "externalId": None, "tract": tract.tract, "patch": p.patch,
            "coord_ra": float(ra), "coord_dec": float(dec), "centroid_x": float(x), "centroid_y": float(y),
            "shape_xx": float(shape[0, 0]), "shape_yy": float(shape[1, 1]), "shape_xy": float(shape[0, 1]),
            "kron_radius": None if kron_radius is None else float(kron_radius),
            "shape_flag": None, "kron_radius_flag": None,  # measured by the simulator, not at ingest
            "deblend_nChild": int(n_child), "detect_isPrimary": bool(inner and n_child == 0),
            "detect_isPatchInner": bool(p.inner.contains(x, y)), "detect_isDuplicate": None,  # no catalog to check
            "refBand": recipe.ref_band}


def _fp_row(oid, parent, tract, p, band, bbox, spans, values):
    return {"id": oid, "parent": parent, "tract": tract.tract, "patch": p.patch, "band": band,
            "bbox_min_x": bbox[0], "bbox_min_y": bbox[1], "bbox_max_x": bbox[2], "bbox_max_y": bbox[3],
            "span_y": spans[0], "span_x0": spans[1], "span_x1": spans[2],
            "values": np.asarray(values, np.float32)}
