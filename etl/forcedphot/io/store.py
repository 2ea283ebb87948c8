"""Where a repository lives: a local folder, or an ``s3://bucket/prefix`` URI on an S3-compatible object store.

A local root keeps the local protocol (write-then-rename, file locks: :mod:`forcedphot.io.atomic`).
An ``s3://`` root is opened with ``pyarrow.fs.FileSystem.from_uri`` for reads and with boto3 for the one
thing pyarrow cannot do, the conditional put (``If-None-Match: *``) that commits (:mod:`forcedphot.s3repo`).
Both are configured only from the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, or any other source boto3/the AWS SDK read), so a
worker that receives a URI builds its own clients from its own environment: no filesystem or client
object (they carry the secret key) is ever pickled into a task.

Nothing here turns a URI into a local path: ``Path("s3://b/r")`` collapses the double slash to a local
folder ``s3:/b/r``; :func:`refuse_uri_as_path` makes that a one-line error wherever a local path is built.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

from forcedphot.errors import InputError

_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
_COLLAPSED = re.compile(r"^(?P<scheme>s3|gs|gcs|az|abfs|http|https|hdfs|file):/(?!/)")  # "s3:/b/r": a URI Path() ate
SUPPORTED_SCHEMES = ("s3",)
GRACE_PERIOD = 3600.0  # seconds a superseded output stays readable after what superseded it was committed


def is_uri(root) -> bool:
    """Is ``root`` a URI (``scheme://...``) rather than a local path? (a Path object never is one)."""
    return isinstance(root, str) and _URI.match(root) is not None


def refuse_uri_as_path(root) -> None:
    """A local repository path must not be a URI nor a URI whose ``//`` was collapsed (``s3:/bucket/r``)."""
    text = os.fspath(root)
    if is_uri(text) or _COLLAPSED.match(text):
        raise InputError(f"{text}: a URI is not a local folder; s3://bucket/prefix repositories work with "
                         "simulate, run, status, sql and the Python loaders (this needs a local repository)")


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``: the bucket and the key prefix (no leading or trailing slash; may be empty)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        m = _URI.match(uri)
        if m is None:
            raise InputError(f"{uri}: not a URI")
        if m["scheme"] not in SUPPORTED_SCHEMES:
            raise InputError(f"{uri}: {m['scheme']}:// repositories are not supported (only s3://; Google Cloud "
                             "Storage and MinIO are reached through their S3 API, see the README)")
        bucket, _, prefix = m["rest"].partition("/")
        if not bucket:
            raise InputError(f"{uri}: no bucket (expected s3://bucket/prefix)")
        return cls(bucket, prefix.strip("/"))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, rel: str) -> str:
        """The object key of a path relative to the repository root."""
        rel = rel.lstrip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        """The path relative to the root of an object key under the prefix."""
        return key[len(self.prefix) + 1:] if self.prefix else key

    def path(self, rel: str) -> str:
        """``bucket/key``: the path pyarrow's S3FileSystem takes."""
        return f"{self.bucket}/{self.key(rel)}"


def _env_key() -> tuple:
    """The environment the clients were built from: a change (a test's fresh server) builds new ones."""
    return tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                                             "AWS_REGION", "AWS_PROFILE"))


def arrow_fs(uri: str):
    """``(pyarrow S3FileSystem, "bucket/prefix")`` of an s3 URI, from the environment (``FileSystem.from_uri``)."""
    return _arrow_fs(S3Location.parse(uri).bucket, _env_key())


@lru_cache(maxsize=8)
def _arrow_fs(bucket: str, env: tuple):
    from pyarrow import fs

    filesystem, _ = fs.FileSystem.from_uri(f"s3://{bucket}")
    return filesystem


def s3_client():
    """A boto3 S3 client from the environment (endpoint included: ``AWS_ENDPOINT_URL``), one per process."""
    return _s3_client(os.getpid(), _env_key())


@lru_cache(maxsize=8)
def _s3_client(pid: int, env: tuple):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the s3 extra
        raise InputError("s3:// repositories need boto3: pip install 'forcedphot[s3]'") from None
    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


class AlreadyExists(Exception):
    """A conditional put lost: the key exists (412), or changed since it was read (IfMatch 412)."""


def put_if_absent(bucket: str, key: str, body: bytes, *, if_match: str | None = None) -> str:
    """Create ``key`` only if it does not exist (``If-None-Match: *``), or, with ``if_match``, replace it only
    while its ETag is still ``if_match``; returns the new ETag. Raises :class:`AlreadyExists` when it lost."""
    from botocore.exceptions import ClientError

    cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
    try:
        resp = s3_client().put_object(Bucket=bucket, Key=key, Body=body, **cond)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # 412 PreconditionFailed: it exists (or changed); 409 ConditionalRequestConflict: a concurrent
        # conditional write to the same key (AWS): lost too; IfMatch on a missing key: 404 (moto) or 412
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict") or (
                if_match and (status == 404 or code in ("NoSuchKey", "404"))):
            raise AlreadyExists(f"s3://{bucket}/{key}") from None
        raise
    return resp["ETag"]


def grace_period(grace: float | None = None) -> float:
    """How long superseded outputs are kept for readers that listed them: ``grace`` if given, else
    ``FORCEDPHOT_GRACE_PERIOD`` (seconds), else :data:`GRACE_PERIOD` (local and s3 repositories alike)."""
    if grace is None:
        text = os.environ.get("FORCEDPHOT_GRACE_PERIOD", "").strip()
        try:
            grace = float(text) if text else GRACE_PERIOD
        except ValueError:
            raise InputError(f"FORCEDPHOT_GRACE_PERIOD={text!r}: not a number of seconds") from None
    if not grace >= 0:
        raise InputError(f"grace period {grace}: must be >= 0 seconds")
    return float(grace)
