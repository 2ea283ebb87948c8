"""A real local S3 server for the s3:// repository tests: moto's standalone server (PyPI ``moto[server]``).

One ``moto_server`` process per test session (per xdist worker), on 127.0.0.1 and a free port, started
in about a second (bounded: ``forcedphot.s3server.START_TIMEOUT``) and stopped at the end of the session
(:mod:`forcedphot.s3server`, which ``forcedphot bench --s3`` uses too). Every test gets a fresh bucket and
the standard AWS_* environment pointing at the server: forcedphot reaches it exactly as it would AWS S3,
GCS's S3 API or MinIO. Nothing is mocked in-process.
"""

from __future__ import annotations

import uuid

import pytest

from forcedphot.s3server import CREDENTIALS, start_moto


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of a moto_server started for this session (stopped at its end)."""
    with start_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server.endpoint


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
