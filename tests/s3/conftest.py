"""A real local S3 server for the s3:// repository tests: moto's standalone server (PyPI ``moto[server]``).

One ``moto_server`` process per test session (per xdist worker), on 127.0.0.1 and a free port, started
in about a second (bounded: ``START_TIMEOUT``) and stopped at the end of the session. Every test gets a
fresh bucket and the standard AWS_* environment pointing at the server: forcedphot reaches it exactly as
it would AWS S3, GCS's S3 API or MinIO. Nothing is mocked in-process.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

START_TIMEOUT = 30.0  # seconds for moto_server to answer (~0.9 s on a quiet machine)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "forcedphot-test", "AWS_SECRET_ACCESS_KEY": "forcedphot-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server_command() -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("moto_server")
    if found:
        return [found]
    return [sys.executable, "-m", "moto.server"]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of a moto_server started for this session (stopped at its end)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*_moto_server_command(), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {url} within {START_TIMEOUT} s") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """The AWS_* environment of the session's moto_server, for this process and the ones it starts."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    return {"AWS_ENDPOINT_URL": moto_endpoint, **CREDENTIALS}


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh, empty bucket on the session's server."""
    from forcedphot.io.store import s3_client

    name = f"fp-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name
