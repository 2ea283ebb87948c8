"""Figures of s3:// repositories on a local moto_server vs local disk (docs/incoming/s3repo.md).

Usage: .venv/bin/python tools/s3_bench.py [--recipe tiny] [--band g]
Starts moto_server on 127.0.0.1 (a free port), simulates the recipe locally once, then times:
  - uploading the inputs (what `simulate --repo s3://` adds to a local simulate),
  - a serial run of one band's quanta on local disk and on s3 (kernels compiled beforehand),
  - reading one coadd: whole object in one GET vs batch-by-batch ranged reads (pyarrow S3FileSystem).
moto is slow on ranged reads of large objects: never take its absolute figures for AWS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _moto(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--band", default="g")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    proc = _moto(port)
    try:
        import pyarrow as pa

        from forcedphot import s3repo
        from forcedphot.compile import ensure_compiled
        from forcedphot.config import ForcedPhotConfig
        from forcedphot.io.store import arrow_fs, s3_client
        from forcedphot.repository import Repository
        from forcedphot.runner import run_all
        from forcedphot.sim import load_recipe, simulate
        from forcedphot.task import kernel_modules

        config = ForcedPhotConfig()
        ensure_compiled(kernel_modules(config))
        s3_client().create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "repo"
            simulate(load_recipe(args.recipe), local, progress=False)
            pristine = Path(tmp) / "pristine"
            shutil.copytree(local, pristine)
            t = time.perf_counter()
            s3repo.upload_inputs(pristine, "s3://bench/r")
            print(f"upload of the inputs: {time.perf_counter() - t:.2f} s "
                  f"({sum(p.stat().st_size for p in pristine.rglob('*') if p.is_file()) / 1e6:.1f} MB)")
            times = {"local": [], "s3": []}
            for force in (False, True, False, True):  # in turns, so that warming up (imports) favours neither
                if not force:
                    t = time.perf_counter()
                    local_sum = run_all(Repository(local), config, bands=[args.band], progress=False, force=True)
                    times["local"].append(time.perf_counter() - t)
                else:
                    t = time.perf_counter()
                    s3_sum = s3repo.run_all("s3://bench/r", config, bands=[args.band], force=True)
                    times["s3"].append(time.perf_counter() - t)
            print(f"runs in turns: {times}")
            t_local, t_s3 = min(times["local"]), min(times["s3"])
            n = len(local_sum.done)
            assert n == len(s3_sum.done), (local_sum, s3_sum)
            print(f"run of band {args.band} ({n} quanta, serial): local disk {t_local:.2f} s, s3 (moto) {t_s3:.2f} s, "
                  f"overhead {(t_s3 - t_local) / n:.2f} s per quantum")
            t = time.perf_counter()
            s3repo.run_all("s3://bench/r", config, bands=[args.band])
            print(f"rerun on s3, every quantum up to date: {time.perf_counter() - t:.2f} s")
            rel = next(r for r in s3repo.S3Repository("s3://bench/r").inputs() if r.endswith("coadd.arrow"))
            fs = arrow_fs("s3://bench/r")
            path = f"bench/r/{rel}"
            for label, read in (("whole object, one GET", lambda: pa.ipc.open_file(
                                    pa.BufferReader(fs.open_input_file(path).read())).read_all()),
                                ("ranged reads (IPC over S3 RandomAccessFile)", lambda: pa.ipc.open_file(
                                    fs.open_input_file(path)).read_all())):
                best = min(_timed(read) for _ in range(3))
                print(f"coadd {rel} ({fs.get_file_info(path).size / 1e6:.1f} MB): {label}: {best * 1e3:.0f} ms")
    finally:
        proc.terminate()
        proc.wait()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
