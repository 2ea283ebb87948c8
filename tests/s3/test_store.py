"""The storage layer against a real local S3 server (moto_server): URIs, conditional puts, no ``s3:/`` folder."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from forcedphot.errors import InputError
from forcedphot.io.store import AlreadyExists, S3Location, arrow_fs, is_uri, put_if_absent, s3_client
from forcedphot.repository import Repository


def test_moto_server_is_a_real_s3_endpoint(s3_bucket, s3_env):
    """The fixture's server answers boto3 and pyarrow.fs (FileSystem.from_uri) from the AWS_* environment."""
    s3_client().put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    fs = arrow_fs(f"s3://{s3_bucket}/a")
    with fs.open_input_file(f"{s3_bucket}/a/b.txt") as f:
        assert f.read() == b"hello"
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_put_if_absent_has_one_winner(s3_bucket):
    """16 concurrent writers of one key: exactly one wins, the others get AlreadyExists; If-Match on a stale
    ETag loses, on the current one wins."""
    def attempt(i):
        try:
            return put_if_absent(s3_bucket, "commit/g1.json", f"{i}".encode())
        except AlreadyExists:
            return None

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(16)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    body = s3_client().get_object(Bucket=s3_bucket, Key="commit/g1.json")["Body"].read()
    assert int(body) in range(16)
    with pytest.raises(AlreadyExists):
        put_if_absent(s3_bucket, "commit/g1.json", b"again")
    new = put_if_absent(s3_bucket, "commit/g1.json", b"taken over", if_match=winners[0])
    with pytest.raises(AlreadyExists):
        put_if_absent(s3_bucket, "commit/g1.json", b"stale", if_match=winners[0])
    assert put_if_absent(s3_bucket, "commit/g1.json", b"current", if_match=new)


def test_location_parsing():
    loc = S3Location.parse("s3://bucket/a/b/")
    assert (loc.bucket, loc.prefix, loc.key("x/y"), loc.rel("a/b/x/y")) == ("bucket", "a/b", "a/b/x/y", "x/y")
    assert S3Location.parse("s3://bucket").key("x") == "x"
    with pytest.raises(InputError, match="only s3://"):
        S3Location.parse("gs://bucket/r")
    assert is_uri("s3://b/r") and not is_uri("s3:/b/r") and not is_uri(Path("s3://b/r"))


@pytest.mark.parametrize("root", ["s3://bucket/r", "s3:/bucket/r", Path("s3://bucket/r"), "gs://b/r"])
def test_a_uri_is_never_a_local_repository(root):
    """Path('s3://b/r') is the local folder 's3:/b/r': the Repository of local paths refuses it."""
    with pytest.raises(InputError, match="not a local folder"):
        Repository(root)


def test_simulate_to_s3_writes_no_local_folder(s3_bucket, tmp_path):
    """The regression of issue 22: `simulate --repo s3://...` wrote a local folder `s3:/bucket/r`."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "forcedphot", "simulate", "--recipe", "tiny", "--repo",
                           f"s3://{s3_bucket}/r", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []  # no "s3:" folder in the working directory
    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket=s3_bucket, Prefix="r/")["Contents"]]
    assert "r/repository.json" in keys and any(k.endswith("coadd.arrow") for k in keys)
    again = subprocess.run([sys.executable, "-m", "forcedphot", "simulate", "--recipe", "tiny", "--repo",
                            f"s3://{s3_bucket}/r", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 2 and "repository exists" in again.stderr
    assert list(tmp_path.iterdir()) == []
