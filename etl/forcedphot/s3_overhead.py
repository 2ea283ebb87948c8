"""``forcedphot bench --s3 [--s3-server moto,seaweedfs]``: the bench quantum read from and written to a local S3
server vs local disk.

The ``bench`` recipe is simulated into ``REPO`` when missing (as the other bench modes do). For each server
(:mod:`forcedphot.s3server`: started by the bench on 127.0.0.1 and free ports, stopped at the end; SeaweedFS
only where ``weed`` is installed, else its row says so) the repository's inputs are uploaded to a fresh bucket
(``s3repo.upload_inputs``, what ``simulate --repo s3://`` adds, timed apart), then the quanta of ``--band``
(the bench recipe has one: the bench quantum) are measured ``repeat`` times in turns, from local disk
(``runner.run_all(force=True)``) and from the s3 repository (``s3repo.run_all(force=True)``: inputs read
through S3, the output uploaded and committed with conditional puts), serially in this process with the kernels
compiled first. Figures: the best wall seconds of each, the s3 overhead per quantum in seconds and in percent
of the local time, and the load average (the machine's, not ours: on a shared machine the figures are upper
bounds).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from forcedphot.errors import ForcedPhotError

BUCKET = "forcedphot-bench"
_AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


class _Env:
    """os.environ updated (and the listed variables removed) for the block; restored after."""

    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k in (*self.values, *_AWS_UNSET):
            self.saved[k] = os.environ.get(k)
        for k in _AWS_UNSET:
            os.environ.pop(k, None)
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _input_bytes(root: Path) -> int:
    from forcedphot.s3repo import INPUT_DATASETS

    return sum(p.stat().st_size for d in INPUT_DATASETS for p in (root / d).rglob("*") if p.is_file())


def run_s3_overhead(repo_root: str | Path, *, servers=("moto", "seaweedfs"), band: str = "i", repeat: int = 2,
                    recipe: str = "bench", progress: bool = True) -> dict:
    """Every figure of the table (see the module's doc); ``recipe`` is simulated into ``repo_root`` if missing."""
    from forcedphot import s3repo, s3server
    from forcedphot.compile import ensure_compiled
    from forcedphot.config import ForcedPhotConfig
    from forcedphot.io.store import s3_client
    from forcedphot.repository import Repository
    from forcedphot.runner import run_all
    from forcedphot.sim import load_recipe, simulate
    from forcedphot.task import kernel_modules

    repo = Repository(repo_root)
    if not repo.exists():
        simulate(load_recipe(recipe), repo.root, progress=progress)
    config = ForcedPhotConfig()
    ensure_compiled(kernel_modules(config))
    load_before = os.getloadavg()
    rows, local_runs = [], []

    def local() -> int:
        t0 = time.perf_counter()
        summary = run_all(repo, config, bands=[band], progress=False, force=True)
        local_runs.append(time.perf_counter() - t0)
        if not summary.ok or not summary.done:
            raise ForcedPhotError(f"{repo.root}: the local run of band {band} failed or measured nothing: {summary.failed}")
        return len(summary.done)

    for kind in servers:
        if not s3server.available(kind):
            rows.append({"server": kind, "skipped": "not installed (pip install 'forcedphot[bench]' for seaweedfs)"})
            continue
        with tempfile.TemporaryDirectory(prefix=f"forcedphot-{kind}-") as work, \
                s3server.start(kind, work) as server, _Env(server.env()):
            s3_client().create_bucket(Bucket=BUCKET)
            uri = f"s3://{BUCKET}/bench"
            t0 = time.perf_counter()
            s3repo.upload_inputs(repo.root, uri)
            upload_s = time.perf_counter() - t0
            local_s, s3_s, quanta = [], [], 0
            for _ in range(max(1, repeat)):  # in turns: a slower spell of the machine falls on both
                quanta = local()
                local_s.append(local_runs[-1])
                t0 = time.perf_counter()
                summary = s3repo.run_all(uri, config, bands=[band], force=True)
                s3_s.append(time.perf_counter() - t0)
                if not summary.ok or len(summary.done) != quanta:
                    raise ForcedPhotError(f"{uri}: the s3 run of band {band} measured {len(summary.done)} of "
                                          f"{quanta} quanta: {summary.failed}")
            best_local, best_s3 = min(local_s), min(s3_s)
            row = {"server": kind, "endpoint": server.endpoint, "server_start_s": round(server.started_s, 2),
                   "quanta": quanta, "band": band, "upload_s": upload_s, "upload_mb": _input_bytes(repo.root) / 1e6,
                   "local_s": best_local, "s3_s": best_s3, "local_runs_s": local_s, "s3_runs_s": s3_s,
                   "overhead_s_per_quantum": (best_s3 - best_local) / quanta,
                   "overhead_pct": 100.0 * (best_s3 - best_local) / best_local}
        rows.append(row)
        if progress:
            print(format_s3_overhead({"rows": [row]}), flush=True)
    return {"repo": str(repo.root), "recipe": recipe, "band": band, "repeat": repeat, "rows": rows,
            "load_average": {"before": load_before, "after": os.getloadavg()}, "cores": os.cpu_count()}


def format_s3_overhead(result: dict) -> str:
    lines = [f"{'server':>10} {'quanta':>6} {'local disk s':>12} {'s3 s':>8} {'overhead s/quantum':>18} "
             f"{'overhead':>9} {'upload s (MB)':>14}"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"{r['server']:>10} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['server']:>10} {r['quanta']:>6} {r['local_s']:>12.2f} {r['s3_s']:>8.2f} "
                     f"{r['overhead_s_per_quantum']:>18.2f} {r['overhead_pct']:>8.0f}% "
                     f"{r['upload_s']:>7.1f} ({r['upload_mb']:.0f})")
    if "load_average" in result:
        lines.append(f"load average (1, 5, 15 min) before {tuple(round(x, 1) for x in result['load_average']['before'])}, "
                     f"after {tuple(round(x, 1) for x in result['load_average']['after'])}; {result['cores']} cores")
    return "\n".join(lines)


def main_s3_overhead(repo_root, *, servers, band="i", repeat=2, json_out=None, progress=True) -> str:
    result = run_s3_overhead(repo_root, servers=servers, band=band, repeat=repeat, progress=progress)
    if json_out:
        Path(json_out).write_text(json.dumps({"s3_overhead": result}, indent=2))
    return format_s3_overhead(result)

