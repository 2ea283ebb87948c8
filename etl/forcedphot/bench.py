"""``forcedphot bench``: our kernels and a whole quantum against SEP and photutils, growth and scaling.

Three modes, each printing a table (``--json`` writes every figure; nothing here is a test):

* the side-by-side table (default, or ``--table``), on the ``bench`` recipe (one 4096 x 4096
  patch, ~20,000 objects), in one process, on the same image and positions: SEP ``sum_circle``
  (exact, ``subpix=0``, with variance) at r = 3, 6, 12 against our exact apertures; photutils
  ``PSFPhotometry`` called once over all sources (or a ``--psf-subset``, scaled) with a
  ``GriddedPSFModel`` of the coadd's PSF grid, fixed positions (fluxes only), against our PSF
  flux, whose fluxes it is checked to reproduce; the whole quantum (read, every default plugin,
  write) against SEP's three apertures, with each plugin's and stage's seconds. Each of our rows
  runs at every ``--threads`` count; compilation is excluded (kernels are warmed up first, one
  module at a time, and every timed function is called once untimed) and reported apart.
* ``--growth``: the bench sky simulated at several object counts; one whole quantum per size in
  a child process: wall time, peak and baseline RSS, memory per byte of coadd planes, and the
  exponent a of time ~ N^a.
* ``--scaling``: the 8 quanta of the ``scaling`` recipe end to end with ``run_all`` (each call
  from a fresh interpreter): one process at 1 thread (the reference) and at every core, 2 worker
  processes, a local Dask cluster of 2 workers started by the run, and one started before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from forcedphot.errors import ForcedPhotError

APERTURES = "exact apertures r=3,6,12"
PSF = "PSF flux"
QUANTUM = "whole quantum"
# floors by thread count (the entry for the largest count <= the row's applies; None: any count)
TARGETS = {
    APERTURES: {1: ("SEP / ours >= 1.8", ">=", 1.8), 2: ("SEP / ours >= 3", ">=", 3.0)},
    # photutils called once over all sources (issue 21: the floor is stated for 2 threads; 1 thread is
    # held to it too). The per-source form it replaced was ~5x slower per source (floor 1000 then).
    PSF: {None: ("photutils / ours >= 500", ">=", 500.0)},
    # with CModel, GAaP and ConvolvedFlux in the default set (issue 21; 15 before them)
    QUANTUM: {None: ("ours / SEP <= 20", "<=", 20.0)},
}
MEMORY_FLOOR = 3.0  # --growth: (peak - baseline RSS) / plane bytes at the largest size
PSF_SUBSET = 2000  # sources photutils fits in its one call (0: all), its time scaled to all
PSF_SN_MIN = 20.0  # photutils vs psfFlux: the flux ratio is taken over sources above this S/N
SCALING_FLOOR = 1.8  # speed-up of 2 processes (or 2 Dask workers) over one
GROWTH_SIZES = (5000, 20000, 80000)
CHILD_TAG = "FORCEDPHOT_BENCH_CHILD "


@dataclass
class Row:
    what: str
    threads: int
    ours_s: float
    peer_s: float
    peer: str
    first_s: float = float("nan")  # the untimed first call (compilation or cache load included)

    @property
    def ratio(self) -> float:
        # for the whole quantum the target is on ours / SEP; for kernels on peer / ours
        return self.ours_s / self.peer_s if self.what == QUANTUM else self.peer_s / self.ours_s

    def target(self) -> tuple[str, bool]:
        label, op, floor = target_for(self.what, self.threads)
        return label, bool(self.ratio >= floor if op == ">=" else self.ratio <= floor)

    def as_dict(self) -> dict:
        label, met = self.target()
        return asdict(self) | {"ratio": self.ratio, "target": label, "met": met}


def target_for(what: str, threads: int) -> tuple[str, str, float]:
    spec = TARGETS[what]
    counts = sorted(k for k in spec if k is not None)
    if not counts:
        return spec[None]
    below = [k for k in counts if k <= threads]
    return spec[below[-1] if below else counts[0]]


def _best(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _cpu(fn) -> float:
    """CPU seconds of this process (every thread) spent in ``fn()``."""
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


# -- kernels -------------------------------------------------------------------------------------

def compile_report() -> dict:
    """Warm the kernels up in this process, one module at a time: the cache state before, the
    seconds it took (in all and per module), and each module's cold compile as last recorded on
    this machine (the CPU seconds of its ``WARMUP`` entries, :class:`forcedphot.compile.WarmUpRecord`)."""
    from forcedphot.compile import cache_status, is_warm, kernel_modules, read_record, warm_up
    from forcedphot.config import ForcedPhotConfig
    from forcedphot.task import kernel_modules as run_modules

    modules = kernel_modules()[0]
    default = set(run_modules(ForcedPhotConfig()))
    before = cache_status(modules)
    per_module, seconds = [], 0.0
    for mod in modules:
        mine = [k for k in before if k.name.rsplit(".", 1)[0] == mod.__name__]
        s = warm_up([mod])
        seconds += s
        record = read_record(mod)
        per_module.append({"module": mod.__name__, "kernels": len(mine),
                           "warm_before": sum(k.state == "warm" for k in mine), "warm_up_s": s,
                           "compile_cpu_s": sum(record.cpu_seconds) if record is not None else None,
                           "default_run": mod.__name__ in default})
    after = cache_status(modules)
    return {"warm_before": is_warm(before), "warm_up_s": seconds, "warm_after": is_warm(after),
            "kernels": len(after), "warm_kernels_before": sum(k.state == "warm" for k in before),
            "cold_after": [k.name for k in after if k.counted and k.state != "warm"], "modules": per_module}


def aperture_kernel():
    """(name, fn(image, variance, valid, cx, cy, fx, fy, radii, squared_errors) -> (flux, var, invalid) (N, R)).

    ``forcedphot.kernels.apertures.exact_apertures`` when present, else the numpy
    ``plugins.aperture_exact.exact_aperture_sums`` over a padded copy (made once, outside the timing).
    """
    try:
        from forcedphot.kernels.apertures import exact_apertures

        return "kernels.apertures.exact_apertures", exact_apertures
    except ImportError:
        pass
    from forcedphot.cutouts import PaddedCoadd
    from forcedphot.plugins.aperture_exact import exact_aperture_sums

    padded_for = {}

    def fallback(image, variance, valid, cx, cy, fx, fy, radii, squared_errors, *, coadd=None):
        pad = int(np.ceil(max(radii))) + 3
        key = (id(coadd), pad)
        if key not in padded_for:  # the task makes its padded copy once per quantum
            padded_for.clear()
            padded_for[key] = PaddedCoadd(coadd, pad)
        padded = padded_for[key]
        out = np.zeros((3, cx.size, len(radii)))
        for k, r in enumerate(radii):
            for s in range(0, cx.size, 4096):
                sl = slice(s, s + 4096)
                parts = exact_aperture_sums(padded, cx[sl] + pad, cy[sl] + pad, fx[sl], fy[sl], float(r),
                                            squared_errors=squared_errors)
                for j in range(3):
                    out[j, sl, k] = parts[j]
        return out[0], out[1], out[2]

    fallback.needs_coadd = True
    return "plugins.aperture_exact.exact_aperture_sums (numpy)", fallback


def photutils_model(psf, bbox):
    """The coadd's PSF grid (:class:`forcedphot.psf.PsfGrid`) as a photutils ``GriddedPSFModel`` in
    coadd-local pixels: the node images (unit sum, pixel-integrated: ePSFs at oversampling 1) at
    their node positions, interpolated bilinearly between the four nearest nodes as ours are;
    positions fixed (forced photometry: the flux is the only free parameter)."""
    from astropy.nddata import NDData
    from photutils.psf import GriddedPSFModel

    gx, gy = np.meshgrid(psf.x - bbox.min_x, psf.y - bbox.min_y)
    nodes = np.column_stack([gx.ravel(), gy.ravel()])  # (x, y) of images[iy, ix], row-major as the images
    model = GriddedPSFModel(NDData(psf.node_images().reshape(-1, psf.size, psf.size),
                                   meta={"grid_xypos": nodes, "oversampling": 1}))
    model.x_0.fixed = model.y_0.fixed = True
    return model


def photutils_psf_fluxes(psf, bbox, image, mask, x, y) -> tuple[float, np.ndarray, np.ndarray]:
    """photutils ``PSFPhotometry`` over every (x, y) (coadd-local pixels) in one call: (seconds, flux, flags).

    The way its users run it at its fastest: one call over all sources with a ``GriddedPSFModel``
    of the PSF grid (:func:`photutils_model`, built inside the timing; its spline cache fills during
    the call), ``fit_shape`` the PSF box (K x K), fixed positions, default fitter (``TRFLSQFitter``,
    ``fitter_maxiters=100``), no grouper (each source fitted alone, as ours), no local background,
    no ``error`` array (an unweighted fit: the estimator of our ``psfFlux``), ``mask`` the pixels
    our fit leaves out; ``n_threads=1``: photutils' threads help only on a free-threaded Python
    (with the GIL it warns and fits in one thread).
    """
    import warnings

    from astropy.table import Table
    from photutils.psf import PSFPhotometry

    k = psf.size
    t0 = time.perf_counter()
    phot = PSFPhotometry(photutils_model(psf, bbox), (k, k))
    init = Table({"x": x, "y": y, "flux": np.full(x.size, 1000.0)})
    with warnings.catch_warnings():  # "some sources were flagged" (clipped boxes): read from the flags
        warnings.simplefilter("ignore")
        res = phot(image, mask=mask, init_params=init)
    seconds = time.perf_counter() - t0
    return seconds, np.asarray(res["flux_fit"], float), np.asarray(res["flags"], int)


def psf_agreement(phot_flux, phot_flags, flux, err, flag, *, sn_min: float = PSF_SN_MIN) -> dict:
    """photutils' fluxes against our psfFlux for the same sources: the sources neither flags, the
    median and robust scatter (1.4826 MAD) of photutils / ours above ``sn_min``, its largest
    deviation from 1, and |photutils - ours| / psfFluxErr (median, 99th percentile, max) over all."""
    phot_flux, flux, err = (np.asarray(a, float) for a in (phot_flux, flux, err))
    ok = (np.asarray(phot_flags) == 0) & ~np.asarray(flag, bool) & np.isfinite(phot_flux) & np.isfinite(flux)
    ok &= np.isfinite(err) & (err > 0)
    hi = ok & (flux > sn_min * err)
    r = phot_flux[hi] / flux[hi]
    d = np.abs(phot_flux[ok] - flux[ok]) / err[ok]
    nan = float("nan")
    med = float(np.median(r)) if r.size else nan
    return {"compared": int(ok.sum()), "sn_min": sn_min, "ratio_sources": int(r.size), "ratio_median": med,
            "ratio_scatter": float(1.4826 * np.median(np.abs(r - med))) if r.size else nan,
            "ratio_max_dev": float(np.max(np.abs(r - 1))) if r.size else nan,
            "diff_over_err_median": float(np.median(d)) if d.size else nan,
            "diff_over_err_p99": float(np.percentile(d, 99)) if d.size else nan,
            "diff_over_err_max": float(np.max(d)) if d.size else nan}


def _thread_counts(threads) -> list[int]:
    from forcedphot.threads import available_cores

    counts = sorted({int(t) for t in (threads or (1, 2))})
    return [t for t in counts if t <= available_cores()] or [1]


def run_bench(repo_root: str | Path, *, band: str = "i", psf_subset: int = PSF_SUBSET, repeat: int = 3,
              threads=(1, 2), progress: bool = True) -> dict:
    """Every figure of the side-by-side table (see :func:`format_table`)."""
    try:
        import photutils
        import sep
    except ImportError as exc:
        raise ForcedPhotError(f"bench needs SEP and photutils: pip install 'forcedphot[bench]' ({exc})") from exc
    from forcedphot import threads as pools
    from forcedphot.plan import plan_quanta
    from forcedphot.plugins import MeasurementContext
    from forcedphot.plugins.base import excluded_bits
    from forcedphot.plugins.centroid import TransformedCentroid
    from forcedphot.plugins.psf_flux import PsfFlux
    from forcedphot.repository import Repository
    from forcedphot.sim import load_recipe, simulate
    from forcedphot.stages import ForcedCentres, SourcePixels
    from forcedphot.task import ForcedPhotCoaddTask

    counts = _thread_counts(threads)
    compiled = compile_report()
    repo = Repository(repo_root)
    if not repo.exists():
        simulate(load_recipe("bench"), repo.root, progress=progress)
    quanta = [q for q in plan_quanta(repo, bands=[band]) if q.ready]
    if not quanta:
        raise ForcedPhotError(f"{repo.root}: no ready quantum in band {band}")
    quantum = quanta[0]
    task = ForcedPhotCoaddTask(repo)
    inputs = task.attach_footprints(quantum)
    coadd = inputs.coadd
    # the context as the task builds it, without noise replacement (SEP and photutils see the coadd)
    pixels = SourcePixels.build(coadd, inputs.n)
    ctx = MeasurementContext(coadd, task.config, inputs.ref, ref_wcs=task._ref_wcs(inputs), pixels=pixels)
    ctx.values.update(TransformedCentroid(task.config).measure(ctx))
    sel = np.flatnonzero(ctx.usable)
    x = ctx.x[sel] - coadd.bbox.min_x
    y = ctx.y[sel] - coadd.bbox.min_y
    n = sel.size
    c = ForcedCentres.build(ctx.x[sel], ctx.y[sel], np.ones(n, bool), coadd.bbox.min_x, coadd.bbox.min_y)
    image = np.ascontiguousarray(np.where(np.isfinite(coadd.image), coadd.image, 0), dtype=np.float32)
    var = np.ascontiguousarray(np.where(np.isfinite(coadd.variance), coadd.variance, 0), dtype=np.float32)
    radii = np.array([3.0, 6.0, 12.0])
    rows: list[Row] = []

    def sep_apertures():
        return [sep.sum_circle(image, x, y, r, var=var, subpix=0) for r in radii]

    kernel_name, kernel = aperture_kernel()
    extra = {"coadd": coadd} if getattr(kernel, "needs_coadd", False) else {}

    def our_apertures():  # linear error weights, as SEP's
        return kernel(pixels.image, pixels.variance, pixels.valid, c.cx, c.cy, c.fx, c.fy, radii, False, **extra)

    # first calls (a kernel load), then ``repeat`` rounds of SEP and ours at each thread count in
    # turn, best of each kept: a slower spell of the machine (~30% here) falls on both, as for the
    # whole quantum below
    firsts, outs = {}, {}
    for nt in counts:
        pools.configure(nt)
        firsts[nt], outs[nt] = _timed(our_apertures)
    t_sep, t_ours = np.inf, dict.fromkeys(counts, np.inf)
    for _ in range(max(1, repeat)):
        pools.configure(1)
        t, sep_out = _timed(sep_apertures)
        t_sep = min(t_sep, t)
        for nt in counts:
            pools.configure(nt)
            t_ours[nt] = min(t_ours[nt], _timed(our_apertures)[0])
    flux, vr = np.asarray(outs[counts[0]][0]), np.asarray(outs[counts[0]][1])
    rel = [np.abs(flux[:, k] - s[0]) / np.maximum(np.abs(s[0]), 1e-3) for k, s in enumerate(sep_out)]
    rel_err = [np.abs(np.sqrt(vr[:, k]) - s[1]) / np.maximum(np.abs(s[1]), 1e-12) for k, s in enumerate(sep_out)]
    agreement = {"kernel": kernel_name, "flux_max_rel_diff": float(max(np.nanmax(r) for r in rel)),
                 "err_max_rel_diff": float(max(np.nanmax(r) for r in rel_err))}
    for nt in counts:
        rows.append(Row(APERTURES, nt, t_ours[nt], t_sep, f"SEP {sep.__version__} (max rel diff "
                        f"{agreement['flux_max_rel_diff']:.1e}), timed in turn with ours", firsts[nt]))

    # PSF flux: ours over all sources vs photutils over all of them (or a subset, scaled) in one call
    def our_psf():  # the plugin's whole cost: nothing cached from an earlier call
        ctx.cache.clear()
        return PsfFlux(task.config).measure(ctx)

    pools.configure(1)
    subset = np.arange(n)
    if 0 < psf_subset < n:
        subset = np.sort(np.random.default_rng(0).choice(n, psf_subset, replace=False))
    data64 = image.astype(np.float64)
    mask = ~pixels.valid.astype(bool)  # the pixels our fit leaves out: invalid, and psf_bad_mask_planes
    bad_bits = excluded_bits(coadd, task.config)
    if bad_bits:
        mask |= (coadd.mask & bad_bits) != 0
    # CPU seconds at 1 thread beside the walls: on a machine others load, a single-threaded run's
    # wall stretches with the load while its CPU seconds do not (both sides timed the same way)
    cpu = {}
    cpu0 = time.process_time()  # photutils runs in this one thread: its CPU seconds show how loaded the machine was
    t_sub, phot_flux, phot_flags = photutils_psf_fluxes(coadd.psf, coadd.bbox, data64, mask, x[subset], y[subset])
    cpu_sub = time.process_time() - cpu0
    t_phot = t_sub * n / subset.size
    cpu["psf_photutils_s"] = cpu_sub * n / subset.size
    del data64, mask
    psf_rows = []
    for nt in counts:
        pools.configure(nt)
        first, ours_psf = _timed(our_psf)
        t_psf, _ = _best(our_psf, repeat)
        psf_rows.append((nt, t_psf, first))
        if nt == 1:
            cpu["psf_ours_s"] = min(_cpu(our_psf) for _ in range(max(1, repeat)))
    src = sel[subset]
    psf_agree = psf_agreement(phot_flux, phot_flags, ours_psf["psfFlux"][src], ours_psf["psfFluxErr"][src],
                              ours_psf["psfFlux_flag"][src])
    agreement["photutils"] = psf_agree | {"sources": int(subset.size), "seconds": t_sub, "cpu_seconds": cpu_sub,
                                          "ms_per_source": 1e3 * t_sub / max(subset.size, 1),
                                          "cpu_ms_per_source": 1e3 * cpu_sub / max(subset.size, 1)}
    scaled = f"{subset.size} sources, scaled to {n}" if subset.size < n else f"all {n} sources"
    for nt, t_psf, first in psf_rows:
        rows.append(Row(PSF, nt, t_psf, t_phot, f"photutils {photutils.__version__} PSFPhotometry, one call "
                                                 f"({scaled}; flux ratio {psf_agree['ratio_median']:.4f})", first))

    # the whole quantum: read, every default plugin, write; a first run compiles what warm_up() did not
    pools.configure(max(counts))
    first_quantum, _ = _timed(lambda: task.run_quantum(quantum))
    stages, plugins, plugins_cpu = {}, {}, {}
    for nt in counts:
        # best of ``repeat``, as SEP's time it is divided by (one run varies by up to ~30% here); SEP
        # runs again before each of ours, so both are timed in the same spell of the machine
        t_quantum, t_sep_here, res, each, each_cpu = np.inf, np.inf, None, {}, {}
        for _ in range(max(1, repeat)):
            pools.configure(1)
            c0 = time.process_time()
            t_sep_here = min(t_sep_here, _timed(sep_apertures)[0])
            c1 = time.process_time()
            pools.configure(nt)
            t, out = _timed(lambda: ForcedPhotCoaddTask(repo).run_quantum(quantum))
            if nt == 1:  # the same runs' CPU seconds
                cpu["sep_s"] = min(cpu.get("sep_s", np.inf), c1 - c0)
                cpu["quantum_ours_s"] = min(cpu.get("quantum_ours_s", np.inf), time.process_time() - c1)
            for name, sec in out.timings.items():  # each plugin's and stage's best over the runs
                each[name] = min(each.get(name, np.inf), sec)
            for name, sec in out.cpu_timings.items():
                each_cpu[name] = min(each_cpu.get(name, np.inf), sec)
            if t < t_quantum:  # the stages of the best run are shown
                t_quantum, res = t, out
        rows.append(Row(QUANTUM, nt, t_quantum, t_sep_here, "SEP three apertures, timed in turn with ours",
                        first_quantum))
        stages[nt] = res.timings
        plugins[nt] = each
        plugins_cpu[nt] = each_cpu
    pools.configure(None)
    compiled["first_quantum_s"] = first_quantum
    if "psf_ours_s" in cpu:
        cpu["psf_ratio"] = cpu["psf_photutils_s"] / cpu["psf_ours_s"]
    if "quantum_ours_s" in cpu:
        cpu["quantum_ratio"] = cpu["quantum_ours_s"] / cpu["sep_s"]
    return {"n_sources": int(n), "rows": rows, "stages": stages, "plugins": plugins, "plugins_cpu": plugins_cpu,
            "cpu": cpu, "compile": compiled,
            "agreement": agreement, "environment": _environment(counts)}


def _environment(counts) -> dict:
    import numba

    from forcedphot.threads import available_cores

    return {"cores": available_cores(), "numba": numba.__version__, "threads": list(counts),
            "numba_max_threads": numba.config.NUMBA_NUM_THREADS, "python": sys.version.split()[0]}


def format_table(rows: list[Row], n: int) -> str:
    lines = [f"{'measurement':26s} {'thr':>3s} {'ours (s)':>9s} {'peer (s)':>9s} {'ratio':>8s}  "
             f"{'target':26s} {'met':4s}  peer", "-" * 112]
    for r in rows:
        label, ok = r.target()
        lines.append(f"{r.what:26s} {r.threads:3d} {r.ours_s:9.3f} {r.peer_s:9.3f} {r.ratio:8.2f}  {label:26s} "
                     f"{'yes' if ok else 'NO':4s}  {r.peer}")
    lines.append(f"({n} sources in one 4096x4096 quantum)")
    return "\n".join(lines)


def format_compile(compiled: dict, rows: list[Row]) -> str:
    state = "warm" if compiled["warm_before"] else "cold"
    text = (f"kernel cache {state} ({compiled['warm_kernels_before']} of {compiled['kernels']} kernels warm); "
            f"warm_up() {compiled['warm_up_s']:.2f} s")
    firsts = [f"{r.what} {r.threads} thr +{r.first_s - r.ours_s:.2f} s" for r in rows if r.what != QUANTUM]
    if firsts:
        text += "; first calls over best: " + ", ".join(firsts)
    if "first_quantum_s" in compiled:
        text += f"; first whole quantum {compiled['first_quantum_s']:.2f} s"
    return text


def timing_kind(name: str) -> str:
    """What a key of the task's timings is: a ``plugin`` (or its undeblended copy), a shared ``stage``
    (``MeasurementContext.stage``: charged apart from the plugin that first asks for it), or ``task``
    (loading, noise replacement, pixel chunks, calibration, writing, the total)."""
    from forcedphot.layout import UNDEBLENDED
    from forcedphot.plugins import PLUGINS

    if name.startswith("stage_"):
        return "stage"
    if name in PLUGINS or (name.startswith(UNDEBLENDED) and name[len(UNDEBLENDED):] in PLUGINS):
        return "plugin"
    return "task"


def format_plugins(plugins: dict, cpu: dict | None = None) -> str:
    """Each plugin's, stage's and task step's seconds in the whole quantum at every thread count
    (``{threads: {name: seconds}}``, in run order), the speed-up of the most threads over the
    fewest and each one's share of the total at the most threads; with ``cpu`` (the same for CPU
    seconds), a last column of the CPU seconds at the fewest threads (at 1 thread: the cost, which
    a loaded machine does not stretch)."""
    counts = sorted(plugins)
    cpu_lo = (cpu or {}).get(counts[0]) or None
    names = list(dict.fromkeys(k for nt in counts for k in plugins[nt] if k != "total"))
    lo, hi = counts[0], counts[-1]
    total_hi = plugins[hi].get("total", float("nan"))
    head = " ".join(f"{f'{nt} thr (s)':>10s}" for nt in counts)
    cpu_head = f" {f'{lo} thr CPU':>10s}" if cpu_lo else ""
    lines = [f"{'whole quantum: plugin / stage':34s} {'kind':6s} {head} {f'{lo}/{hi} thr':>8s} "
             f"{f'% of {hi} thr':>9s}{cpu_head}", "-" * (62 + 11 * len(counts) + len(cpu_head))]

    def line(label, kind, values, cpu_value=float("nan")):
        cells = " ".join(f"{v:10.3f}" if np.isfinite(v) else f"{'':10s}" for v in values)
        a, b = values[0], values[-1]
        speed = f"{a / b:8.2f}" if len(values) > 1 and b > 0 and np.isfinite(a / b) else f"{'':8s}"
        share = f"{100 * b / total_hi:9.1f}" if total_hi > 0 and np.isfinite(b) else f"{'':9s}"
        extra = (f" {cpu_value:10.3f}" if np.isfinite(cpu_value) else f" {'':10s}") if cpu_lo else ""
        return f"{label:34s} {kind:6s} {cells} {speed} {share}{extra}".rstrip()

    nan = float("nan")

    def summed(timings, kind):
        return sum(v for k, v in timings.items() if k != "total" and timing_kind(k) == kind)

    for name in names:
        lines.append(line(name, timing_kind(name), [plugins[nt].get(name, nan) for nt in counts],
                          cpu_lo.get(name, nan) if cpu_lo else nan))
    for kind in ("plugin", "stage"):
        lines.append(line(f"sum of {kind}s", "", [summed(plugins[nt], kind) for nt in counts],
                          summed(cpu_lo, kind) if cpu_lo else nan))
    lines.append(line("total", "", [plugins[nt].get("total", nan) for nt in counts],
                      cpu_lo.get("total", nan) if cpu_lo else nan))
    lines.append("(each figure the best of the runs at that thread count; a plugin's seconds exclude the shared "
                 "stages it asks for first, which are shown as stage_<name>; chunked plugins summed over chunks"
                 + (f"; CPU: the process's CPU seconds at {lo} thread(s), every thread counted)" if cpu_lo else ")"))
    return "\n".join(lines)


def format_compile_modules(modules: list[dict]) -> str:
    """Per kernel module: its kernels, how many were warm, the seconds warm_up() took for it here (a
    cache load when warm) and its cold compile as last recorded on this machine (CPU seconds)."""
    lines = [f"{'kernel module':36s} {'kernels':>7s} {'warm':>5s} {'warm_up (s)':>11s} {'cold compile (CPU s)':>21s}  "
             "default run", "-" * 96]
    for m in modules:
        cold = f"{m['compile_cpu_s']:21.1f}" if m.get("compile_cpu_s") is not None else f"{'(not recorded)':>21s}"
        lines.append(f"{m['module']:36s} {m['kernels']:7d} {m['warm_before']:5d} {m['warm_up_s']:11.2f} {cold}  "
                     f"{'yes' if m.get('default_run') else ''}".rstrip())
    recorded = [m["compile_cpu_s"] for m in modules if m.get("compile_cpu_s") is not None and m.get("default_run")]
    lines.append(f"(cold compile: the CPU seconds of the module's WARMUP entries when last compiled on this machine; "
                 f"{sum(recorded):.1f} s for the modules a default run uses)")
    return "\n".join(lines)


def format_psf_agreement(a: dict) -> str:
    cpu = f", {a['cpu_ms_per_source']:.2f} ms of CPU" if "cpu_ms_per_source" in a else ""
    return (f"photutils vs psfFlux ({a['sources']} sources, {a['ms_per_source']:.2f} ms each in one call{cpu}; "
            f"{a['compared']} flagged by neither): photutils / ours median {a['ratio_median']:.4f}, "
            f"scatter (1.4826 MAD) {a['ratio_scatter']:.4f}, max |ratio - 1| {a['ratio_max_dev']:.4f} over "
            f"{a['ratio_sources']} sources at S/N > {a['sn_min']:g}; |difference| / psfFluxErr median "
            f"{a['diff_over_err_median']:.3f}, 99th percentile {a['diff_over_err_p99']:.3f}")


def main_bench(repo_root, *, band="i", psf_subset=PSF_SUBSET, repeat=3, progress=True, json_out=None,
               threads=(1, 2), table=None, growth=False, growth_sizes=GROWTH_SIZES, growth_rss_limit_gb=None,
               scaling=False, cluster=None) -> str:
    """Run the selected modes (the table when neither growth nor scaling is asked for); returns the text."""
    table = (not growth and not scaling) if table is None else table
    parts, figures = [], {}
    if table:
        res = run_bench(repo_root, band=band, psf_subset=psf_subset, repeat=repeat, threads=threads,
                        progress=progress)
        text = format_table(res["rows"], res["n_sources"])
        ag = res["agreement"]
        text += (f"\napertures: {ag['kernel']}; vs SEP max rel diff flux {ag['flux_max_rel_diff']:.1e}, "
                 f"error {ag['err_max_rel_diff']:.1e}")
        if "photutils" in ag:
            text += "\n" + format_psf_agreement(ag["photutils"])
        if res.get("cpu", {}).get("psf_ratio") is not None:
            c = res["cpu"]
            text += (f"\nCPU seconds at 1 thread (a loaded machine stretches walls, not these): PSF flux photutils "
                     f"{c['psf_photutils_s']:.1f} / ours {c['psf_ours_s']:.3f} = {c['psf_ratio']:.0f}x"
                     + (f"; whole quantum {c['quantum_ours_s']:.2f} / SEP {c['sep_s']:.3f} = {c['quantum_ratio']:.2f}x"
                        if "quantum_ratio" in c else ""))
        text += "\n" + format_compile(res["compile"], res["rows"])
        if res["compile"].get("modules"):
            text += "\n\n" + format_compile_modules(res["compile"]["modules"])
        text += "\n\n" + format_plugins(res.get("plugins") or res["stages"], res.get("plugins_cpu"))
        parts.append(text)
        figures["bench"] = res | {"rows": [r.as_dict() for r in res["rows"]],
                                  "stages": {str(k): v for k, v in res["stages"].items()},
                                  "plugins": {str(k): v for k, v in (res.get("plugins") or {}).items()},
                                  "plugins_cpu": {str(k): v for k, v in (res.get("plugins_cpu") or {}).items()}}
    if growth:
        g = run_growth(repo_root, sizes=growth_sizes, band=band, threads=max(_thread_counts(threads)),
                       progress=progress, rss_limit_gb=growth_rss_limit_gb)
        parts.append(format_growth(g))
        figures["growth"] = g
    if scaling and not cluster:
        s = run_scaling(Path(repo_root) / "scaling", repeat=repeat, progress=progress)
        parts.append(format_scaling(s))
        figures["scaling"] = s
    if scaling and cluster:
        c = run_cluster_scaling(Path(repo_root) / f"scaling-cluster-{cluster}", repeat=repeat, progress=progress,
                                recipe=cluster)
        parts.append(format_cluster_scaling(c))
        figures["scaling_cluster"] = c
    if json_out:
        Path(json_out).write_text(json.dumps(figures, indent=1, default=_json_default))
    return "\n\n".join(parts)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# -- growth: one whole quantum per size, each in a child process ---------------------------------

def growth_recipe_counts(n_objects: int, base: dict) -> dict:
    """Star, galaxy and close-pair counts of the bench recipe scaled to ``n_objects`` (bright stars kept)."""
    total = base["n_stars"] + base["n_galaxies"] + base["n_close_pairs"]
    f = n_objects / total
    counts = {k: max(1, int(round(base[k] * f))) for k in ("n_stars", "n_galaxies", "n_close_pairs")}
    counts["n_stars"] += n_objects - sum(counts.values())  # exactly n_objects
    return counts


def growth_repo(repo_root: str | Path, n_objects: int, *, progress: bool = True) -> Path:
    """The bench sky with ``n_objects`` objects: ``repo_root`` itself at the bench recipe's own count,
    else ``repo_root/growth-<n>`` (simulated when missing)."""
    from forcedphot.repository import Repository
    from forcedphot.sim import load_recipe, simulate

    bench = load_recipe("bench")
    base = {k: getattr(bench, k) for k in ("n_stars", "n_galaxies", "n_close_pairs")}
    counts = growth_recipe_counts(n_objects, base)
    root = Path(repo_root) if counts == base else Path(repo_root) / f"growth-{n_objects}"
    if not Repository(root).exists():
        simulate(load_recipe("bench", **counts), root, progress=progress)
    return root


def fit_exponent(n, t) -> tuple[float, list[float]]:
    """a of t ~ N^a: least squares on log-log over all points, and log(t2/t1)/log(N2/N1) per step."""
    n, t = np.asarray(n, float), np.asarray(t, float)
    if n.size < 2:
        return float("nan"), []
    a = float(np.polyfit(np.log(n), np.log(t), 1)[0])
    steps = [float(np.log(t[i + 1] / t[i]) / np.log(n[i + 1] / n[i])) for i in range(n.size - 1)]
    return a, steps


def _status_bytes(key: str, pid: int | str = "self") -> int:
    """A memory line of /proc/PID/status in bytes (Linux; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (Linux /proc; 0 where unavailable)."""
    return _status_bytes("VmRSS", pid)


def _peak_rss_bytes() -> int:
    """This process's peak RSS since it started its program: VmHWM (Linux), else ru_maxrss.

    Not ru_maxrss on Linux: it survives exec, so a child started by a bench process that held
    1.3 GB reported 1.3 GB whatever it used itself (seen with --table --growth in one run).
    """
    import resource

    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_module(args: list[str], *, env: dict | None = None, rss_limit: int = 0, poll: float = 0.1) -> dict:
    """``python -m forcedphot.bench ARGS`` in a fresh interpreter; the figures it prints.

    The parent polls the child's RSS and kills it above ``rss_limit`` bytes (0: no limit).
    """
    cmd = [sys.executable, "-m", "forcedphot.bench", *map(str, args)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:  # no pipe to fill
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env=os.environ | (env or {}))
        polled, killed = 0, False
        while proc.poll() is None:
            polled = max(polled, _rss_bytes(proc.pid))
            if rss_limit and polled > rss_limit and not killed:
                proc.kill()
                killed = True
            time.sleep(poll)
        proc.wait()
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    elapsed = time.perf_counter() - t0
    if killed:
        return {"killed": True, "rss_limit_bytes": rss_limit, "polled_peak_rss_bytes": polled,
                "child_elapsed_s": elapsed}
    lines = [ln for ln in out.splitlines() if ln.startswith(CHILD_TAG)]
    if proc.returncode or not lines:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise ForcedPhotError(f"bench child {' '.join(map(str, args))} failed (exit {proc.returncode}): {tail}")
    res = json.loads(lines[-1][len(CHILD_TAG):])
    res.update(killed=False, polled_peak_rss_bytes=polled, child_elapsed_s=elapsed)
    return res


def read_inputs(root: str | Path, band: str | None = None) -> int:
    """Read every input file of the repository's quanta (of ``band``) once; returns the bytes read.

    Timings are of our code, not of this machine's disk: a coadd not in the page cache took 9 s
    to load here instead of 0.6 s (a 5,000-object quantum timed after the 80,000-object one had
    pushed it out). The bench reads the inputs before it times them, as a pipeline's second pass
    over a patch would find them.
    """
    from forcedphot.plan import plan_quanta
    from forcedphot.repository import Repository

    n = 0
    for q in plan_quanta(Repository(root), bands=[band] if band else None):
        for path in q.input_files().values():
            if path and Path(path).exists():
                with open(path, "rb") as f:
                    while block := f.read(1 << 24):
                        n += len(block)
    return n


def run_child(root: str | Path, band: str, threads: int, *, rss_limit: int = 0, poll: float = 0.1) -> dict:
    """One whole quantum in a fresh interpreter (``python -m forcedphot.bench child``); its figures.

    The parent polls the child's RSS and kills it above ``rss_limit`` bytes (0: no limit).
    """
    from forcedphot.threads import worker_environment

    return _run_module(["child", root, band, threads], env=worker_environment(threads), rss_limit=rss_limit,
                       poll=poll)


def _child_main(root: str, band: str, threads: str) -> dict:
    """In the child: imports, kernels loaded, baseline RSS; then one whole quantum and the peak RSS."""
    from forcedphot import threads as pools
    from forcedphot.compile import warm_up
    from forcedphot.plan import plan_quanta
    from forcedphot.repository import Repository
    from forcedphot.task import ForcedPhotCoaddTask

    pools.configure(int(threads))
    warm_s = warm_up()
    baseline = _rss_bytes()
    baseline_max = _peak_rss_bytes()
    repo = Repository(root)
    quanta = [q for q in plan_quanta(repo, bands=[band]) if q.ready]
    if not quanta:
        raise ForcedPhotError(f"{root}: no ready quantum in band {band}")
    task = ForcedPhotCoaddTask(repo)
    t0 = time.perf_counter()
    res = task.run_quantum(quanta[0])
    wall = time.perf_counter() - t0
    peak = _peak_rss_bytes()
    coadd = task.get_exposure(quanta[0])
    plane_bytes = int(coadd.image.nbytes + coadd.mask.nbytes + coadd.variance.nbytes)
    return {"root": str(root), "data_id": str(quanta[0].data_id), "n_rows": res.n_rows, "wall_s": wall,
            "warm_up_s": warm_s, "baseline_rss_bytes": baseline, "baseline_maxrss_bytes": baseline_max,
            "peak_rss_bytes": peak, "plane_bytes": plane_bytes, "threads": pools.threads(),
            "stages": res.timings}


RUNNING = "running"  # the --scaling mode on a Dask cluster started before the run (see _run_all_main)


def _run_all_main(root: str, options: str) -> dict:
    """In a child: ``run_all(force=True, **options)`` from a fresh interpreter (the package imported,
    no kernel loaded).

    ``dask="running"``: a LocalCluster of ``jobs`` workers is started first and the package imported
    on its workers (as on a cluster that has run a quantum before), and ``run_all`` is handed its
    scheduler's address, as ``--dask tcp://...`` is: the wall is then the run's alone, without
    starting the workers.
    """
    import forcedphot.task  # noqa: F401  (what every mode's first quantum would import inside the timing)
    from forcedphot.repository import Repository
    from forcedphot.runner import run_all

    kw = json.loads(options)
    if kw.get("dask") != RUNNING:
        summary = run_all(Repository(root), force=True, progress=False, **kw)
        return _run_all_figures(summary)
    from distributed import Client

    from forcedphot.runner import local_cluster
    from forcedphot.worker_start import import_package

    with local_cluster(kw["jobs"]) as cluster, Client(cluster) as client:
        client.run(import_package)  # waits for the preload's imports to finish on every worker
        summary = run_all(Repository(root), force=True, progress=False, **(kw | {"dask": cluster.scheduler_address}))
    return _run_all_figures(summary)


def _run_all_figures(summary) -> dict:
    usage = os.times()
    return {"wall_s": summary.seconds, "done": summary.done, "failed": summary.failed, "run_id": summary.run_id,
            "pid": os.getpid(), "cpu_s": usage.user + usage.system}


def run_growth(repo_root: str | Path, *, sizes=GROWTH_SIZES, band: str = "i", threads: int = 2,
               progress: bool = True, rss_limit_gb: float | None = None) -> dict:
    """Simulate (or reuse) the bench sky at each size; one quantum per size in a child process."""
    from forcedphot.compile import is_warm

    sizes = sorted(int(s) for s in sizes)
    roots = [growth_repo(repo_root, s, progress=progress) for s in sizes]
    limit = int(rss_limit_gb * 2 ** 30) if rss_limit_gb else int(0.8 * _available_bytes())
    compiled = compile_report()
    primed = None
    if not is_warm():  # a first quantum compiles (and caches) what warm_up() could not
        primed = run_child(roots[0], band, threads, rss_limit=limit)
    runs = []
    for s, root in zip(sizes, roots):
        read_inputs(root, band)
        r = run_child(root, band, threads, rss_limit=limit)
        r["objects"] = s
        r.setdefault("n_rows", _quantum_rows(root, band))  # a killed child reports nothing
        if not r["killed"]:
            r["extra_per_plane_byte"] = (r["peak_rss_bytes"] - r["baseline_rss_bytes"]) / r["plane_bytes"]
        runs.append(r)
    ok = [r for r in runs if not r["killed"]]
    a, steps = fit_exponent([r["n_rows"] for r in ok], [r["wall_s"] for r in ok])
    return {"band": band, "threads": threads, "rss_limit_bytes": limit, "compile": compiled, "primed": primed,
            "runs": runs, "exponent": a, "step_exponents": steps}


def _quantum_rows(root, band: str) -> int:
    """Reference rows of the first ready quantum of ``band`` (from the Parquet footer)."""
    import pyarrow.parquet as pq

    from forcedphot.plan import plan_quanta
    from forcedphot.repository import Repository

    q = next(q for q in plan_quanta(Repository(root), bands=[band]) if q.ready)
    return pq.ParquetFile(q.ref_file).metadata.num_rows


def format_growth(g: dict) -> str:
    gb = 2.0 ** 30
    lines = [f"{'objects':>8s} {'rows':>7s} {'wall (s)':>9s} {'peak RSS (GB)':>14s} {'baseline (GB)':>14s} "
             f"{'(peak-base)/planes':>19s} {'step a':>7s}", "-" * 86]
    ok = [r for r in g["runs"] if not r["killed"]]
    step_of = {id(r): s for r, s in zip(ok[1:], g["step_exponents"])}
    for r in g["runs"]:
        if r["killed"]:
            lines.append(f"{r['objects']:8d} {r.get('n_rows', 0):7d} {'killed':>9s} "
                         f"{'> %.1f' % (r['rss_limit_bytes'] / gb):>14s}  (after {r.get('child_elapsed_s', 0):.0f} s)")
            continue
        step = f"{step_of[id(r)]:7.2f}" if id(r) in step_of else f"{'':7s}"
        lines.append(f"{r['objects']:8d} {r['n_rows']:7d} {r['wall_s']:9.2f} {r['peak_rss_bytes'] / gb:14.2f} "
                     f"{r['baseline_rss_bytes'] / gb:14.2f} {r['extra_per_plane_byte']:19.1f} {step}")
    lines.append(f"time ~ N^a (rows, least squares on log-log): a = {g['exponent']:.2f}; "
                 f"{g['threads']} thread(s), band {g['band']}, one quantum per child process")
    if ok:
        last = ok[-1]
        met = "yes" if last["extra_per_plane_byte"] <= MEMORY_FLOOR else "NO"
        lines.append(f"memory at {last['objects']} objects: (peak - baseline) / plane bytes "
                     f"{last['extra_per_plane_byte']:.1f} (target <= {MEMORY_FLOOR:g}: {met}; "
                     f"peak {last['peak_rss_bytes'] / gb:.2f} GB)")
    if g.get("primed"):
        lines.append(f"(a first child compiled the kernels the cache lacked: {g['primed'].get('wall_s', 0):.1f} s)")
    return "\n".join(lines)


# -- scaling: 8 quanta end to end, serial, 2 processes, 2 Dask workers ---------------------------

def run_scaling(root: str | Path, *, repeat: int = 3, progress: bool = True) -> dict:
    """Simulate the ``scaling`` recipe into ``root`` when missing; time run_all five ways (force=True),
    ``repeat`` rounds of the five, each mode's best wall kept.

    Each ``run_all`` call runs in a fresh interpreter (imports done, kernels loaded from the cache
    as the quanta need them), so one process and the workers start from the same state; this
    process only compiles (when the cache is cold) beforehand. The modes take turns within a round,
    so a slower spell of the machine (single runs here vary by up to ~30%) falls on all of them,
    and the best of the rounds is compared, as for the kernels.
    """
    from forcedphot.compile import is_warm
    from forcedphot.repository import Repository
    from forcedphot.runner import run_all
    from forcedphot.sim import load_recipe, simulate
    from forcedphot.threads import default_threads

    repo = Repository(root)
    if not repo.exists():
        simulate(load_recipe("scaling"), repo.root, progress=progress)
    compiled = compile_report()
    primed = None
    if not is_warm():  # compile (and cache) on one quantum in this process, so jobs=1 is not charged for it
        from forcedphot.plan import plan_quanta

        q = next(q for q in plan_quanta(repo) if q.ready)
        primed, _ = _timed(lambda: run_all(repo, force=True, progress=False, patches=[q.data_id.patch],
                                           bands=[q.data_id.band]))
    # the reference is one process at one thread per quantum, as each of 2 workers gets; one process
    # at every core's thread shows what threads alone give (the compiled kernels use them all)
    cores = default_threads(1)
    modes = [("jobs=1, 1 thread", {"jobs": 1, "n_threads": 1}, 1)]
    if cores > 1:
        modes.append((f"jobs=1, {cores} threads", {"jobs": 1}, cores))
    modes += [("jobs=2 (processes)", {"jobs": 2}, default_threads(2)),
              ("dask local, 2 workers", {"dask": "local", "jobs": 2}, default_threads(2)),
              ("dask running, 2 workers", {"dask": RUNNING, "jobs": 2}, default_threads(2))]
    best: dict[str, dict] = {}
    walls: dict[str, list[float]] = {label: [] for label, _, _ in modes}
    for _ in range(max(1, int(repeat))):
        read_inputs(repo.root)
        for label, kw, nt in modes:  # each from a fresh interpreter, as `forcedphot run` would be
            res = _run_module(["run_all", repo.root, json.dumps(kw)])
            if res["failed"]:
                raise ForcedPhotError(f"scaling run {label}: {len(res['failed'])} quanta failed: "
                                      f"{res['failed'][0][1]}")
            walls[label].append(res["wall_s"])
            if label not in best or res["wall_s"] < best[label]["wall_s"]:
                best[label] = {"mode": label, **kw, "threads_per_quantum": nt, "wall_s": res["wall_s"],
                               "child_elapsed_s": res["child_elapsed_s"], "quanta": len(res["done"]),
                               "rows": sum(n for _, n, _ in res["done"]), "quantum_s": [s for _, _, s in res["done"]],
                               "parallel": kw["jobs"] > 1}
    runs = [best[label] | {"walls_s": walls[label]} for label, _, _ in modes]
    for r in runs:
        r["speedup"] = runs[0]["wall_s"] / r["wall_s"]
        r["speedups_per_round"] = [w0 / w for w0, w in zip(runs[0]["walls_s"], r["walls_s"])]
    return {"root": str(repo.root), "compile": compiled, "primed_s": primed, "runs": runs, "floor": SCALING_FLOOR,
            "reference": runs[0]["mode"], "rounds": max(1, int(repeat))}


# -- scaling on a cluster of separate processes: 64 quanta, 1 worker vs 2 -------------------------

# 16 patches x 4 bands = 64 quanta. "scaling": the scaling sky cut into 4 x 4 patches of 1024 x 1024 (inner),
# ~1,300 rows each (64 bench-size quanta would take ~10 minutes per mode on 2 quiet cores); "tiny": the
# tiny survey's patches (200 x 200, ~60 rows) 4 x 4: start-up and per-quantum overheads, simulated in
# a minute on a loaded machine
CLUSTER_RECIPES = {
    "scaling": ("scaling", dict(n_patch_x=4, n_patch_y=4, patch_inner=1024, patch_border=64, n_stars=9000,
                                n_galaxies=10200, n_close_pairs=800, n_bright_stars=10)),
    "tiny": ("tiny", dict(n_patch_x=4, n_patch_y=4, n_stars=560, n_galaxies=360, n_close_pairs=32, n_bright_stars=4)),
}
CLUSTER_FLOOR = 1.9  # speed-up of 2 workers over 1 (issue 22)
CLUSTER_START_S = 120.0  # bound on a scheduler answering and its workers registering


class ProcessCluster:
    """``dask scheduler`` and ``n_workers`` ``dask worker --nthreads 1 --no-nanny`` on 127.0.0.1, each a
    process of its own (its own interpreter and environment, as on a cluster), stopped by PID.

    No nanny: a nanny sets ``MALLOC_TRIM_THRESHOLD_`` for its worker (each quantum ~25% slower, see
    ``runner.LOCAL_CLUSTER_CONFIG``), and each worker's PID is then the process whose CPU is counted.
    """

    def __init__(self, n_workers: int, *, threads: int = 1):
        import socket

        from forcedphot.threads import worker_environment

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.n_workers = n_workers
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | worker_environment(threads) | {
            "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
            "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "500ms",
            "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s"}
        self.procs: list[subprocess.Popen] = []
        self._logs: list = []

    def _spawn(self, *args: str) -> subprocess.Popen:
        log = tempfile.TemporaryFile("w+")
        self._logs.append(log)
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> "ProcessCluster":
        from distributed import Client

        self._spawn("scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard")
        for _ in range(self.n_workers):
            self._spawn("worker", self.address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                        "--no-dashboard")
        try:
            with Client(self.address, timeout=CLUSTER_START_S) as c:
                c.wait_for_workers(self.n_workers, timeout=CLUSTER_START_S)
        except Exception as exc:
            self.stop()
            raise ForcedPhotError(f"bench cluster did not start: {type(exc).__name__}: {exc}") from exc
        return self

    def warm(self) -> float:
        """Import the package and load every kernel on every worker (a cluster that has run before); seconds."""
        from distributed import Client

        from forcedphot.worker_start import import_package

        t0 = time.perf_counter()
        with Client(self.address, timeout=CLUSTER_START_S) as c:
            c.run(import_package)
            c.run(_warm_worker)
        return time.perf_counter() - t0

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the workers so far."""
        import psutil

        total = 0.0
        for proc in self.procs[1:]:
            try:
                t = psutil.Process(proc.pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        import signal as signals

        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signals.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for log in self._logs:
            log.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def _warm_worker() -> float:
    from forcedphot.compile import warm_up
    from forcedphot.config import ForcedPhotConfig
    from forcedphot.task import kernel_modules

    import importlib

    return warm_up([importlib.import_module(m) if isinstance(m, str) else m
                    for m in kernel_modules(ForcedPhotConfig())])


def cluster_repo(root: str | Path, *, recipe: str = "scaling", progress: bool = True):
    """The 64-quantum sky of the cluster mode (:data:`CLUSTER_RECIPES`), simulated into ``root`` when missing."""
    from forcedphot.repository import Repository
    from forcedphot.sim import load_recipe, simulate

    repo = Repository(root)
    if not repo.exists():
        name, overrides = CLUSTER_RECIPES[recipe]
        simulate(load_recipe(name, **overrides), repo.root, progress=progress)
    return repo


def run_cluster_scaling(root: str | Path, *, workers=(1, 2), repeat: int = 1, progress: bool = True,
                        warm: bool = True, recipe: str = "scaling") -> dict:
    """The 64 quanta of ``CLUSTER_RECIPES[recipe]`` (simulated into ``root`` when missing) with ``run_all(dask=ADDRESS, n_threads=1, force=True)`` from a
    fresh interpreter, on a cluster of ``n`` separate worker processes for each ``n`` in ``workers``: the
    wall of the run and the CPU seconds of the workers and of the client. Each cluster is started, its
    workers warmed (package imported, kernels loaded: a cluster that has served a run before), and
    stopped after its run; the modes take turns for ``repeat`` rounds and each keeps its best wall.
    ``warm=False`` (tests): the workers load the kernels inside the timed run."""
    from forcedphot.compile import is_warm
    from forcedphot.plan import plan_quanta

    repo = cluster_repo(root, recipe=recipe, progress=progress)
    n_quanta = sum(q.ready for q in plan_quanta(repo))
    compiled = None if is_warm() else compile_report()  # once, in this process, before any worker loads
    runs: dict[int, dict] = {}
    for _ in range(max(1, int(repeat))):
        read_inputs(repo.root)
        for n in workers:
            with ProcessCluster(n) as cluster:
                warm_s = cluster.warm() if warm else None
                pids = [p.pid for p in cluster.procs]
                cpu0 = cluster.cpu_seconds()
                res = _run_module(["run_all", repo.root, json.dumps({"dask": cluster.address, "n_threads": 1})])
                worker_cpu = cluster.cpu_seconds() - cpu0
            if res["failed"]:
                raise ForcedPhotError(f"cluster run with {n} workers: {len(res['failed'])} quanta failed: "
                                      f"{res['failed'][0][1]}")
            r = runs.setdefault(n, {"workers": n, "walls_s": [], "worker_cpu_s": [], "client_cpu_s": []})
            r["walls_s"].append(res["wall_s"])
            r["worker_cpu_s"].append(worker_cpu)
            r["client_cpu_s"].append(res.get("cpu_s"))
            r["warm_up_s"] = warm_s
            r["pids"] = pids  # scheduler first
            if res["wall_s"] <= min(r["walls_s"]):
                r.update(wall_s=res["wall_s"], quanta=len(res["done"]), rows=sum(n_ for _, n_, _ in res["done"]),
                         quantum_s=[s for _, _, s in res["done"]])
    out = [runs[n] for n in workers]
    for r in out:
        r["speedup"] = out[0]["wall_s"] / r["wall_s"]
        r["speedups_per_round"] = [w0 / w for w0, w in zip(out[0]["walls_s"], r["walls_s"])]
    return {"root": str(repo.root), "quanta": n_quanta, "recipe": recipe, "recipe_overrides": CLUSTER_RECIPES[recipe][1], "compile": compiled,
            "runs": out, "floor": CLUSTER_FLOOR, "rounds": max(1, int(repeat)), "cores": os.cpu_count()}


def format_cluster_scaling(s: dict) -> str:
    lines = [f"{'cluster':26s} {'quanta':>6s} {'rows':>7s} {'wall (s)':>9s} {'worker CPU (s)':>15s} "
             f"{'client CPU (s)':>15s} {'speed-up':>9s}  target", "-" * 104]
    for r in s["runs"]:
        k = r["walls_s"].index(r["wall_s"])
        target = f">= {s['floor']}x {'yes' if r['speedup'] >= s['floor'] else 'NO'}" if r["workers"] > 1 else ""
        client = r["client_cpu_s"][k]
        lines.append(f"{'scheduler + ' + str(r['workers']) + ' worker(s)':26s} {r['quanta']:6d} {r['rows']:7d} "
                     f"{r['wall_s']:9.2f} {r['worker_cpu_s'][k]:15.2f} "
                     f"{client if client is not None else float('nan'):15.2f} {r['speedup']:9.2f}  {target}")
    lines.append(f"(run_all(dask=tcp://127.0.0.1:PORT, n_threads=1, force=True) from a fresh interpreter on {s['root']}; "
                 "scheduler and workers (--nthreads 1, no nanny) each a process of its own, started and warmed "
                 f"before the run; {s['cores']} cores; best wall of {s['rounds']} round(s))")
    return "\n".join(lines)


def format_scaling(s: dict) -> str:
    rounds = s.get("rounds", 1)
    lines = [f"{'mode':24s} {'thr':>3s} {'quanta':>6s} {'rows':>7s} {'wall (s)':>9s} {'sum of quanta (s)':>18s} "
             f"{'speed-up':>9s}  {'target':14s} per round", "-" * 112]
    for r in s["runs"]:
        target = f">= {s['floor']}x {'yes' if r['speedup'] >= s['floor'] else 'NO'}" if r.get("parallel") else ""
        per_round = " / ".join(f"{x:.2f}" for x in r.get("speedups_per_round", [])) if rounds > 1 else ""
        lines.append(f"{r['mode']:24s} {r.get('threads_per_quantum', 0):3d} {r['quanta']:6d} {r['rows']:7d} "
                     f"{r['wall_s']:9.2f} {sum(r['quantum_s']):18.2f} {r['speedup']:9.2f}  {target:14s} "
                     f"{per_round}".rstrip())
    lines.append(f"(run_all(force=True) from a fresh interpreter on {s['root']}; "
                 + (f"best wall of {rounds} rounds, the modes taking turns; " if rounds > 1 else "")
                 + f"speed-up over {s.get('reference', s['runs'][0]['mode'])}; thr: threads per quantum (jobs=2 "
                 "and dask local: every core for a quantum measuring alone); "
                 "wall includes starting workers and loading the kernels)")
    return "\n".join(lines)


if __name__ == "__main__":  # the children of --growth and --scaling
    if len(sys.argv) == 5 and sys.argv[1] == "child":  # python -m forcedphot.bench child ROOT BAND THREADS
        out = _child_main(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "run_all":  # python -m forcedphot.bench run_all ROOT OPTIONS_JSON
        out = _run_all_main(*sys.argv[2:])
    else:
        sys.exit("usage: python -m forcedphot.bench child ROOT BAND THREADS | run_all ROOT OPTIONS_JSON")
    print(CHILD_TAG + json.dumps(out, default=_json_default), flush=True)
