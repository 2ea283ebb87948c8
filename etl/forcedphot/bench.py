"""``forcedphot bench``: our kernels and a whole quantum against SEP and photutils, side by side.

On the ``bench`` recipe (one 4096 x 4096 patch, ~20,000 objects), in one process, on the same
image and positions: SEP ``sum_circle`` (exact, ``subpix=0``, with variance) at r = 3, 6, 12
against our exact apertures; photutils ``PSFPhotometry`` with fixed positions on a subset,
scaled to all sources, against our PSF flux; and the whole quantum (read, every default
plugin, write) against SEP's three apertures. Prints a table; nothing here is a test.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forcedphot.errors import ForcedPhotError

TARGETS = {"exact apertures r=3,6,12": ("SEP / ours >= 2", lambda r: r >= 2.0),
           "PSF flux": ("photutils / ours >= 1000", lambda r: r >= 1000.0),
           "whole quantum": ("ours <= 2 x SEP", lambda r: r <= 2.0)}


@dataclass
class Row:
    what: str
    ours_s: float
    peer_s: float
    peer: str

    @property
    def ratio(self) -> float:
        # for the whole quantum the target is on ours / SEP; for kernels on peer / ours
        return self.ours_s / self.peer_s if self.what == "whole quantum" else self.peer_s / self.ours_s


def _best(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_bench(repo_root: str | Path, *, band: str = "i", psf_subset: int = 200, repeat: int = 3,
              progress: bool = True) -> list[Row]:
    try:
        import sep
        from astropy.table import Table
        from photutils.psf import ImagePSF, PSFPhotometry
    except ImportError as exc:
        raise ForcedPhotError(f"bench needs SEP and photutils: pip install 'forcedphot[bench]' ({exc})") from exc
    from forcedphot.cutouts import PaddedCoadd
    from forcedphot.plan import plan_quanta
    from forcedphot.plugins import MeasurementContext
    from forcedphot.plugins.aperture_exact import exact_aperture_sums
    from forcedphot.plugins.centroid import TransformedCentroid
    from forcedphot.plugins.psf_flux import PsfFlux
    from forcedphot.quantum import load_quantum
    from forcedphot.repository import Repository
    from forcedphot.sim import load_recipe, simulate
    from forcedphot.task import ForcedPhotCoaddTask

    repo = Repository(repo_root)
    if not repo.exists():
        simulate(load_recipe("bench"), repo.root, progress=progress)
    quanta = [q for q in plan_quanta(repo, bands=[band]) if q.ready]
    if not quanta:
        raise ForcedPhotError(f"{repo.root}: no ready quantum in band {band}")
    quantum = quanta[0]
    inputs = load_quantum(quantum)
    coadd = inputs.coadd
    task = ForcedPhotCoaddTask(repo)
    ctx = MeasurementContext(coadd, PaddedCoadd(coadd, 40), task.config, inputs.ref)
    TransformedCentroid(task.config).measure(ctx)
    sel = np.flatnonzero(ctx.usable)
    x = ctx.x[sel] - coadd.bbox.min_x
    y = ctx.y[sel] - coadd.bbox.min_y
    n = sel.size
    image = np.ascontiguousarray(np.where(np.isfinite(coadd.image), coadd.image, 0), dtype=np.float32)
    var = np.ascontiguousarray(np.where(np.isfinite(coadd.variance), coadd.variance, 0), dtype=np.float32)
    radii = (3.0, 6.0, 12.0)
    rows = []

    def sep_apertures():
        return [sep.sum_circle(image, x, y, r, var=var, subpix=0) for r in radii]

    def our_apertures():
        padded = PaddedCoadd(coadd, 16)
        ix = np.floor(x + 0.5).astype(np.int64) + padded.pad
        iy = np.floor(y + 0.5).astype(np.int64) + padded.pad
        fx, fy = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
        out = []
        for r in radii:
            parts = [exact_aperture_sums(padded, ix[s:s + 4096], iy[s:s + 4096], fx[s:s + 4096], fy[s:s + 4096], r)
                     for s in range(0, n, 4096)]
            out.append(np.concatenate([p[0] for p in parts]))
        return out

    t_sep, sep_out = _best(sep_apertures, repeat)
    t_ours, our_out = _best(our_apertures, repeat)
    worst = max(float(np.nanmax(np.abs(o - s[0]) / np.maximum(np.abs(s[0]), 1e-3))) for o, s in zip(our_out, sep_out))
    rows.append(Row("exact apertures r=3,6,12", t_ours, t_sep, f"SEP {sep.__version__} (max rel diff {worst:.1e})"))

    # PSF flux: ours over all sources vs photutils on a subset with the same per-source PSF images
    def our_psf():
        pctx = MeasurementContext(coadd, PaddedCoadd(coadd, coadd.psf.half + 1), task.config, inputs.ref)
        TransformedCentroid(task.config).measure(pctx)
        return PsfFlux(task.config).measure(pctx)

    t_psf, _ = _best(our_psf, repeat)
    rng = np.random.default_rng(0)
    subset = rng.choice(n, min(psf_subset, n), replace=False)
    k = coadd.psf.size
    ix = np.floor(x[subset] + 0.5).astype(int)
    iy = np.floor(y[subset] + 0.5).astype(int)
    psf_images = coadd.psf.images_at(x[subset] + coadd.bbox.min_x, y[subset] + coadd.bbox.min_y)
    data64 = image.astype(np.float64)
    t0 = time.perf_counter()
    for i in range(subset.size):
        model = ImagePSF(psf_images[i], flux=1.0, x_0=ix[i], y_0=iy[i], origin=(k // 2, k // 2))
        model.x_0.fixed = model.y_0.fixed = True
        PSFPhotometry(model, (k, k))(data64, init_params=Table({"x": [ix[i]], "y": [iy[i]], "flux": [1000.0]}))
    t_phot = (time.perf_counter() - t0) * n / subset.size
    import photutils

    rows.append(Row("PSF flux", t_psf, t_phot, f"photutils {photutils.__version__} PSFPhotometry "
                                               f"({subset.size} sources, scaled to {n})"))

    # the whole quantum: read, every default plugin, write
    t_quantum, res = _best(lambda: task.run_quantum(quantum), 1)
    rows.append(Row("whole quantum", t_quantum, t_sep, "SEP three apertures"))
    return rows, n, res.timings


def format_table(rows: list[Row], n: int) -> str:
    lines = [f"{'measurement':28s} {'ours (s)':>9s} {'peer (s)':>9s} {'ratio':>8s}  {'target':26s} {'met':4s}  peer",
             "-" * 110]
    for r in rows:
        label, ok = TARGETS[r.what]
        lines.append(f"{r.what:28s} {r.ours_s:9.3f} {r.peer_s:9.3f} {r.ratio:8.2f}  {label:26s} "
                     f"{'yes' if ok(r.ratio) else 'NO':4s}  {r.peer}")
    lines.append(f"({n} sources in one 4096x4096 quantum)")
    return "\n".join(lines)


def main_bench(repo_root, *, band="i", psf_subset=200, repeat=3, progress=True, json_out=None) -> str:
    rows, n, timings = run_bench(repo_root, band=band, psf_subset=psf_subset, repeat=repeat, progress=progress)
    text = format_table(rows, n)
    text += "\nwhole-quantum stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
    if json_out:
        Path(json_out).write_text(json.dumps({"n_sources": n, "rows": [r.__dict__ | {"ratio": r.ratio} for r in rows],
                                              "stages": timings}, indent=1))
    return text
