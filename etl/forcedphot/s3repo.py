"""Repositories on S3-compatible object storage (``--repo s3://bucket/prefix``): commits without rename.

An object store has no atomic rename and no file lock, so a repository there follows another protocol
than the local one (:mod:`forcedphot.io.atomic`), built on the one atomic primitive S3 offers: the
conditional put (``PutObject`` with ``If-None-Match: *``, or ``If-Match: <ETag>``), through boto3
(pyarrow cannot make one: apache/arrow#44281). Layout (keys under the prefix)::

    repository.json                                          the manifest, put last (if absent): the repository
                                                             exists only once every input below is uploaded; it
                                                             lists each input file's sha256, size and fingerprint
    skymap/ ref/ truth/ footprints/ scarlet_models/ coadd/   the inputs, under the local layout's names
    forced_source/tract=T/patch=P/band=B/forced_source-<writer>-<rand>.parquet
                                                             data files under unique names: invisible by themselves
    commits/forced_source/tract=T/patch=P/band=B/g<N>.json   commit record N of a quantum (put if absent): the
                                                             data file, its sha256, size, rows and provenance
    runs/claims/T-P-B/g<N>.json                              claim on generation N of a quantum (put if absent)
    runs/ledger/...                                          the run ledger (one object per record, unique names)
    runs/last_run.json                                       the last run's summary

The quantum protocol (:func:`measure_quantum`): read the quantum's latest commit record (generation G);
if it is up to date, done. Else claim generation G+1 with a put-if-absent: exactly one run wins it and
measures; a loser whose claimer is alive reports the quantum "running elsewhere" (as the local lock).
A claim whose writer is dead (same host: its pid and start time; another host: not renewed within the lease
the claim carries, :data:`CLAIM_LEASE` by default, judged on the server's clock) is taken over with
``If-Match`` on its ETag (one winner again). A live claimer renews its claim (:class:`Heartbeat`), and does not
commit if it finds its claim taken over. The winner uploads its
data file under a unique name, then puts commit record G+1 if absent: the record is the commit, and
readers list records, never data files. A killed run leaves at most a claim (taken over by the next
run) and a data file no record names (never read; removed by :func:`sweep`). Superseded generations (after
``run --force``) stay readable for a grace period, then :func:`vacuum` removes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from forcedphot.errors import ForcedPhotError, InputError
from forcedphot.io.store import (GRACE_PERIOD, AlreadyExists, S3Location, arrow_fs, grace_period,  # noqa: F401
                                 put_if_absent, s3_client)

MANIFEST = "repository.json"
INPUT_DATASETS = ("skymap", "ref", "truth", "footprints", "scarlet_models", "coadd")
COMMITS = "commits/forced_source"
CLAIMS = "runs/claims"
CLAIM_LEASE = 300.0  # seconds: a claim another host has not renewed for this long is taken over
CLAIM_RENEW = 5  # a live claimer renews its claim this many times per lease (the heartbeat)
LEGACY_LEASE = 6 * 3600.0  # the lease of a claim written without one (forcedphot before the heartbeat)
ORPHAN_AGE = 6 * 3600.0  # seconds: another host's uncommitted data file older than this is swept
_GEN = re.compile(r"g(\d{8})\.json$")
_CLAIM = re.compile(r"(?P<quantum>[^/]+)/g(?P<gen>\d{8})\.json$")
_DATA = re.compile(r"forced_source-(?P<host>.+)-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}\.parquet$")


def _sha256_b64(data: bytes) -> tuple[str, str]:
    h = hashlib.sha256(data)
    return h.hexdigest(), base64.b64encode(h.digest()).decode()


class S3Repository:
    """A repository at ``s3://bucket/prefix``: what the commands need of it, by object keys.

    Holds only the URI (picklable, no secret): clients are built from the environment of the process.
    """

    is_s3 = True

    def __init__(self, uri: str):
        self.loc = S3Location.parse(uri)
        self.uri = self.loc.uri
        self._manifest = None

    def __repr__(self) -> str:
        return f"S3Repository({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    @property
    def root(self) -> str:  # printed by the commands; never a local path
        return self.uri

    # -- objects -----------------------------------------------------------------------------------
    def get(self, rel: str) -> bytes:
        """The whole object (one GET)."""
        return s3_client().get_object(Bucket=self.loc.bucket, Key=self.loc.key(rel))["Body"].read()

    def get_or_none(self, rel: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.get(rel)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def put(self, rel: str, data: bytes) -> str:
        """Upload ``data``; the server checks it against its sha256 (a corrupted upload is refused)."""
        _, b64 = _sha256_b64(data)
        return s3_client().put_object(Bucket=self.loc.bucket, Key=self.loc.key(rel), Body=data,
                                      ChecksumSHA256=b64)["ETag"]

    def put_if_absent(self, rel: str, data: bytes, *, if_match: str | None = None) -> str:
        return put_if_absent(self.loc.bucket, self.loc.key(rel), data, if_match=if_match)

    def delete(self, rel: str) -> None:
        s3_client().delete_object(Bucket=self.loc.bucket, Key=self.loc.key(rel))

    def list(self, rel_prefix: str) -> list[dict]:
        """Every object under a relative prefix: dicts with rel, size, etag, modified (epoch seconds)."""
        out = []
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.loc.bucket, Prefix=self.loc.key(rel_prefix)):
            for obj in page.get("Contents", []):
                out.append({"rel": self.loc.rel(obj["Key"]), "size": obj["Size"], "etag": obj["ETag"],
                            "modified": obj["LastModified"].timestamp()})
        return out

    def head_etag(self, rel: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return s3_client().head_object(Bucket=self.loc.bucket, Key=self.loc.key(rel))["ETag"]
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def server_time(self) -> float:
        """The server's clock now (epoch seconds, from the ``Date`` header of a HEAD of the manifest)."""
        from email.utils import parsedate_to_datetime

        resp = s3_client().head_object(Bucket=self.loc.bucket, Key=self.loc.key(MANIFEST))
        return parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()

    # -- manifest -----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.head_etag(MANIFEST) is not None

    def metadata(self) -> dict:
        if self._manifest is None:
            data = self.get_or_none(MANIFEST)
            if data is None:
                raise InputError(f"{self.uri}: not a forcedphot repository (no {MANIFEST}); create one with "
                                 "`forcedphot simulate --repo s3://...`")
            try:
                self._manifest = json.loads(data)
            except ValueError as exc:
                raise InputError(f"{self.uri}/{MANIFEST}: not a readable repository manifest ({exc})") from None
        return self._manifest

    def check(self) -> None:
        from forcedphot.repository import REPO_FORMAT

        fmt = self.metadata().get("format")
        if fmt != REPO_FORMAT:
            raise InputError(f"{self.uri}/{MANIFEST}: repository format {fmt}, this forcedphot reads {REPO_FORMAT}")

    def inputs(self) -> dict:
        """{relative path: {"sha256", "size", "fingerprint"}} of every input file."""
        return self.metadata().get("inputs", {})

    # -- commits ------------------------------------------------------------------------------------
    def commits(self, data_id=None) -> dict:
        """{(tract, patch, band): (generation, record)} of the latest commit of each quantum (or of one)."""
        prefix = COMMITS + "/" + (f"tract={data_id.tract}/patch={data_id.patch}/band={data_id.band}/"
                                  if data_id is not None else "")
        latest: dict = {}
        for obj in self.list(prefix):
            m = _GEN.search(obj["rel"])
            parts = dict(p.split("=", 1) for p in obj["rel"].split("/") if "=" in p)
            if m is None or not {"tract", "patch", "band"} <= parts.keys():
                continue
            key = (int(parts["tract"]), int(parts["patch"]), parts["band"])
            gen = int(m.group(1))
            if key not in latest or gen > latest[key][0]:
                latest[key] = (gen, obj["rel"])
        return {k: (gen, json.loads(self.get(rel))) for k, (gen, rel) in latest.items()}

    def committed_files(self, **partitions) -> list[dict]:
        """The commit records of the latest generation of every quantum, in data-ID order (optionally only
        some tracts/patches/bands): what every reader reads, and nothing else."""
        out = []
        for key, (_, rec) in sorted(self.commits().items()):
            if all(_selected(v, sel) for v, sel in zip(key, (partitions.get("tract"), partitions.get("patch"),
                                                               partitions.get("band")))):
                out.append(rec)
        return out

    # -- reading (pyarrow.fs) -----------------------------------------------------------------------
    def arrow_dataset(self, dataset: str, *, sky_patches=None, **partitions):
        """A pyarrow dataset over S3FileSystem of the committed files of ``forced_source``, or of an input
        dataset's files listed in the manifest; each file's size is checked against its record."""
        import pyarrow.dataset as pads

        from forcedphot.query import parquet_format
        from forcedphot.schema import load_schema

        keep = None if sky_patches is None else {(int(t), int(p)) for t, p in sky_patches}
        if dataset == "forced_source":
            rels = [(r["file"], r["size"]) for r in self.committed_files(**partitions)
                    if keep is None or (r["tract"], r["patch"]) in keep]
        else:
            rels = []
            for rel, info in sorted(self.inputs().items()):
                if not rel.startswith(dataset + "/") or not rel.endswith(".parquet"):
                    continue
                parts = dict(p.split("=", 1) for p in rel.split("/") if "=" in p)
                if keep is not None and "tract" in parts and (int(parts["tract"]), int(parts["patch"])) not in keep:
                    continue
                if all(_selected(int(parts[k]) if k != "band" else parts[k], v)
                       for k, v in partitions.items() if v is not None and k in parts):
                    rels.append((rel, info["size"]))
        filesystem = arrow_fs(self.uri)
        paths = [self.loc.path(rel) for rel, _ in rels]
        if paths:
            infos = filesystem.get_file_info(paths)
            for info, (rel, size) in zip(infos, rels):
                if info.size != size:
                    raise InputError(f"{self.uri}/{rel}: {info.size} bytes, its record says {size} (modified or "
                                     "lost after it was committed)")
        return pads.dataset(paths, schema=load_schema(dataset).arrow_schema(), format=parquet_format(),
                            filesystem=filesystem)

    def ledger_dataset(self, table: str):
        import pyarrow.dataset as pads

        from forcedphot.query import parquet_format
        from forcedphot.schema import load_schema

        sub = {"run_start": "run_start/", "run_end": "run_end/", "quanta": "quanta/"}[table]
        rels = [o["rel"] for o in self.list("runs/ledger/" + sub) if o["rel"].endswith(".parquet")]
        return pads.dataset([self.loc.path(r) for r in sorted(rels)],
                            schema=load_schema("ledger", table).arrow_schema(), format=parquet_format(),
                            filesystem=arrow_fs(self.uri))

    def bands(self) -> list[str]:
        from forcedphot.objects import sort_bands

        bands = {rel.split("band=", 1)[1].split("/", 1)[0] for rel in self.inputs() if "/band=" in rel}
        bands |= {r["band"] for r in self.committed_files()}
        return sort_bands(bands)

    def read_skymap(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from forcedphot.skymap import SkyMap

        return SkyMap.from_table(pq.read_table(pa.BufferReader(self.get("skymap/skymap.parquet"))))


def _selected(value, sel) -> bool:
    if sel is None:
        return True
    return value in ([sel] if isinstance(sel, (int, str)) else list(sel))


def open_repository(uri: str) -> S3Repository:
    repo = S3Repository(uri)
    repo.check()
    return repo


# -- simulate: build locally, upload, commit the manifest -------------------------------------------
def upload_inputs(local_root: Path, uri: str, *, description: str | None = None) -> S3Repository:
    """Upload a local repository's inputs to ``uri``, then put its manifest if absent (the commit)."""
    from forcedphot.provenance import input_fingerprint

    repo = S3Repository(uri)
    if repo.exists():
        raise InputError(f"{uri}: repository exists (replacing the inputs of an s3 repository is not supported; "
                         "simulate into a new prefix)")
    local_root = Path(local_root)
    manifest = json.loads((local_root / MANIFEST).read_text())
    inputs = {}
    for dataset in INPUT_DATASETS:
        for path in sorted((local_root / dataset).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            rel = path.relative_to(local_root).as_posix()
            data = path.read_bytes()
            sha, _ = _sha256_b64(data)
            repo.put(rel, data)
            inputs[rel] = {"sha256": sha, "size": len(data), "fingerprint": input_fingerprint(path)}
    manifest["inputs"] = inputs
    manifest["storage"] = {"protocol": "s3-commit-records", "version": 1}
    if description is not None:
        manifest["description"] = description
    try:
        repo.put_if_absent(MANIFEST, json.dumps(manifest, indent=1).encode())
    except AlreadyExists:
        raise InputError(f"{uri}: another writer created this repository meanwhile") from None
    return repo


def simulate_to_s3(recipe, uri: str, *, progress: bool = False) -> S3Repository:
    """Simulate ``recipe`` in a local temporary folder, then upload and commit it to ``uri``."""
    from forcedphot.sim.survey import simulate_into

    repo = S3Repository(uri)
    if repo.exists():
        raise InputError(f"{uri}: repository exists (replacing the inputs of an s3 repository is not supported; "
                         "simulate into a new prefix)")
    with tempfile.TemporaryDirectory(prefix="forcedphot-s3-sim-") as tmp:
        local = Path(tmp) / "repo"
        simulate_into(recipe, local, progress=progress, overwrite=False)
        return upload_inputs(local, uri)


# -- quanta -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Quantum:
    data_id: object  # repository.DataId
    files: dict  # input name -> relative path
    missing: tuple

    @property
    def ready(self) -> bool:
        return not self.missing


def plan(repo: S3Repository, footprint_dataset: str = "heavy") -> list[S3Quantum]:
    """Every quantum of the manifest (a band's coadd or footprints), with its input files, in data-ID order."""
    from forcedphot.repository import DataId

    inputs = repo.inputs()
    ids = set()
    for rel in inputs:
        parts = dict(p.split("=", 1) for p in rel.split("/") if "=" in p)
        if rel.startswith(("coadd/", "footprints/")) and {"tract", "patch", "band"} <= parts.keys():
            ids.add(DataId(int(parts["tract"]), int(parts["patch"]), parts["band"]))
    out = []
    for did in sorted(ids):
        t, p, b = did.tract, did.patch, did.band
        files = {"ref": f"ref/tract={t}/patch={p}/ref.parquet",
                 "coadd": f"coadd/tract={t}/patch={p}/band={b}/coadd.arrow"}
        if footprint_dataset == "scarlet":
            files["scarlet_blends"] = f"scarlet_models/tract={t}/patch={p}/blends.parquet"
            files["scarlet_sources"] = f"scarlet_models/tract={t}/patch={p}/sources.parquet"
        else:
            files["footprints"] = f"footprints/tract={t}/patch={p}/band={b}/footprints.parquet"
        missing = tuple(dict.fromkeys(rel.split("/", 1)[0] for rel in files.values() if rel not in inputs))
        out.append(S3Quantum(did, files, missing))
    return out


def fingerprints(repo: S3Repository, q: S3Quantum) -> dict:
    """The quantum's input fingerprints, as a local run computes them (recorded in the manifest at upload)."""
    inputs = repo.inputs()
    return {name: inputs[rel]["fingerprint"] for name, rel in sorted(q.files.items())}


def commit_key(did, gen: int) -> str:
    return f"{COMMITS}/tract={did.tract}/patch={did.patch}/band={did.band}/g{gen:08d}.json"


def claim_key(did, gen: int) -> str:
    return f"{CLAIMS}/{did.tract}-{did.patch}-{did.band}/g{gen:08d}.json"


def quantum_state(repo: S3Repository, q: S3Quantum, config, commit=None) -> str:
    """'missing' | 'new' | 'up-to-date' | 'stale' of a quantum from its latest commit record."""
    from forcedphot.provenance import is_up_to_date
    from forcedphot.schema import schema_version

    if not q.ready:
        return "missing"
    if commit is None:
        return "new"
    ok = is_up_to_date(commit[1].get("provenance"), config=config, inputs=fingerprints(repo, q),
                       schema_version=schema_version("forced_source"))
    return "up-to-date" if ok else "stale"


def claim_lease() -> float:
    """The lease this process gives its claims: ``FORCEDPHOT_CLAIM_LEASE`` (seconds) or :data:`CLAIM_LEASE`. Each
    claim carries its own lease, so hosts with different settings judge each other's claims alike."""
    text = os.environ.get("FORCEDPHOT_CLAIM_LEASE", "").strip()
    try:
        lease = float(text) if text else CLAIM_LEASE
    except ValueError:
        raise InputError(f"FORCEDPHOT_CLAIM_LEASE={text!r}: not a number of seconds") from None
    if not lease > 0:
        raise InputError(f"FORCEDPHOT_CLAIM_LEASE={text!r}: must be > 0 seconds")
    return lease


def _claim_body(run_id: str, lease: float | None = None, renewals: int = 0) -> bytes:
    from forcedphot.io.atomic import process_start

    pid = os.getpid()
    return json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": pid,
                       "process_start": max(process_start(pid), 0), "time": time.time(),
                       "lease": claim_lease() if lease is None else lease, "renewals": renewals}).encode()


def _claimer_alive(claim: dict, age: float | None = None) -> bool:
    """Is the claimer of ``claim`` alive? On this host: its pid and start time (and not a zombie). On another
    host: its claim was renewed less than its lease ago; ``age``: seconds since the claim object was last
    written, both ends on the server's clock (``Date`` minus ``Last-Modified``: no clock skew between hosts);
    None: from the claim's own time and this host's clock."""
    from forcedphot.io.atomic import process_start

    if claim.get("host") != socket.gethostname():
        if age is None:
            age = time.time() - float(claim.get("time", 0))
        return age < float(claim.get("lease", LEGACY_LEASE))
    pid = int(claim.get("pid", -1))
    now = process_start(pid)
    start = int(claim.get("process_start", 0))
    return now != -1 and (start == 0 or now in (0, start)) and not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but is not yet reaped (a Dask worker SIGKILLed, its nanny not yet waited for
    it): /proc still shows it, with its start time, in state Z (or X); it holds nothing any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def _server_age(resp: dict) -> float | None:
    """Seconds since the object of a GET/HEAD response was last written, on the server's clock."""
    from email.utils import parsedate_to_datetime

    try:
        date = parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"])
        return max((date - resp["LastModified"]).total_seconds(), 0.0)
    except (KeyError, TypeError, ValueError):
        return None


def claim(repo: S3Repository, did, gen: int, run_id: str) -> str | None:
    """Win generation ``gen`` of a quantum (the claim's ETag, for its heartbeat), or find it held by a live
    run (None)."""
    key = claim_key(did, gen)
    try:
        return repo.put_if_absent(key, _claim_body(run_id))
    except AlreadyExists:
        pass
    from botocore.exceptions import ClientError

    try:
        obj = s3_client().get_object(Bucket=repo.loc.bucket, Key=repo.loc.key(key))
        held = json.loads(obj["Body"].read())
        etag = obj["ETag"]
    except (ClientError, ValueError):
        return None
    if _claimer_alive(held, _server_age(obj)):
        return None
    try:  # its writer is dead: take it over, one winner (If-Match on the ETag we read)
        return repo.put_if_absent(key, _claim_body(run_id), if_match=etag)
    except AlreadyExists:
        return None


class Heartbeat:
    """Renews a won claim :data:`CLAIM_RENEW` times per lease while its quantum is measured: a conditional put
    (``If-Match`` on the claim's last ETag) of the same claim with a new time, so the server's Last-Modified of a
    live claim is never older than a fraction of its lease. A renewal that loses (412: another run took the
    claim over, after this process missed its lease) marks the claim ``lost``: this run does not commit. A
    failed request (network) is retried at the next beat; the lease tolerates a few."""

    def __init__(self, repo: S3Repository, key: str, etag: str, run_id: str, lease: float | None = None):
        import threading

        self.repo, self.key, self.etag, self.run_id = repo, key, etag, run_id
        self.lease = claim_lease() if lease is None else lease
        self.renewals, self.lost = 0, False
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._beat, name="forcedphot-claim-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        import logging

        while not self._stop.wait(self.lease / CLAIM_RENEW):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # a missed beat; the lease covers CLAIM_RENEW - 1 of them
                logging.getLogger(__name__).warning("%s/%s: claim renewal failed: %s", self.repo.uri, self.key, exc)

    def renew(self) -> bool:
        """Renew the claim now; False if it was taken over (then it is never renewed again)."""
        with self._lock:
            if self.lost:
                return False
            try:
                self.etag = self.repo.put_if_absent(self.key, _claim_body(self.run_id, self.lease, self.renewals + 1),
                                                    if_match=self.etag)
                self.renewals += 1
            except AlreadyExists:
                self.lost = True
            return not self.lost

    def release(self) -> None:
        """Delete the claim if it is still this run's (a claim taken over belongs to its new holder)."""
        with self._lock:
            if not self.lost and self.repo.head_etag(self.key) == self.etag:
                self.repo.delete(self.key)


def measure_quantum(uri: str, run_id: str, config, data_id, *, force: bool = False, run_started: float = 0.0,
                    n_threads: int | None = None, footprint_dataset: str = "heavy",
                    after_upload=None) -> tuple:
    """Worker: decide and measure one quantum of an s3 repository; returns (data_id str, status, payload).

    Takes only a URI (never a filesystem: it would carry the secret key); records its decision in the ledger.
    ``after_upload`` (tests): called between the data file's upload and its commit.
    """
    from forcedphot import ledger

    repo = S3Repository(uri)
    did = str(data_id)
    started, t0 = ledger.utc_now(), time.perf_counter()
    note = dict(status="failed", payload=None, inputs=None, checksum=None, n_rows=None, timings=None)
    try:
        _decide_and_measure(repo, run_id, config, data_id, note, force=force, run_started=run_started,
                            n_threads=n_threads, footprint_dataset=footprint_dataset, after_upload=after_upload)
    except ForcedPhotError as exc:
        note.update(status="failed", payload=str(exc))
    except Exception as exc:  # only this quantum fails
        note.update(status="failed", payload=f"{did}: {type(exc).__name__}: {exc}")
    ledger.record_quantum(uri, run_id, data_id, status=note["status"], started=started,
                          seconds=time.perf_counter() - t0, n_rows=note["n_rows"], timings=note["timings"],
                          inputs=note["inputs"], output_checksum=note["checksum"],
                          error=note["payload"] if note["status"] in ("failed", "running-elsewhere") else None)
    return did, note["status"], note["payload"]


def _decide_and_measure(repo: S3Repository, run_id: str, config, data_id, note: dict, *, force: bool,
                        run_started: float, n_threads, footprint_dataset: str, after_upload) -> None:
    q = next((q for q in plan(repo, footprint_dataset) if q.data_id == data_id), None)
    if q is None or not q.ready:
        raise InputError(f"{data_id}: missing inputs: {', '.join(q.missing) if q else 'all'}")
    fps = fingerprints(repo, q)
    note["inputs"] = fps
    while True:
        latest = repo.commits(data_id).get((data_id.tract, data_id.patch, data_id.band))
        state = quantum_state(repo, q, config, latest)
        if state == "up-to-date" and (not force or latest[1].get("committed_epoch", 0) >= run_started):
            note.update(status="up-to-date", checksum=latest[1]["sha256"])
            return
        gen = (latest[0] if latest else 0) + 1
        etag = claim(repo, data_id, gen, run_id)
        if etag is None:
            note.update(status="running-elsewhere", payload=f"{data_id}: claimed by another live run "
                                                            f"({repo.uri}/{claim_key(data_id, gen)})")
            return
        # a run that committed generation gen deletes its claim only after its commit: a claim won once that
        # claim is gone must find the commit (then the quantum is decided again, e.g. up to date), so a
        # quantum is never measured twice; the same for a claim taken over from a run that died after committing
        if repo.head_etag(commit_key(data_id, gen)) is None:
            break
        repo.delete(claim_key(data_id, gen))
    heartbeat = Heartbeat(repo, claim_key(data_id, gen), etag, run_id)
    try:
        with heartbeat:
            rec = _measure_and_commit(repo, run_id, config, q, gen, fps, n_threads=n_threads,
                                      footprint_dataset=footprint_dataset, after_upload=after_upload,
                                      heartbeat=heartbeat)
    finally:
        try:
            heartbeat.release()
        except Exception:  # a leftover claim is taken over by the next run
            pass
    if rec is None:
        why = ("its claim was taken over (not renewed within its lease)" if heartbeat.lost
               else "committed by another run meanwhile")
        note.update(status="running-elsewhere", payload=f"{data_id}: {why}")
        return
    note.update(status="done", payload=(rec["n_rows"], rec["seconds"], rec["n_unmatched"], None),
                checksum=rec["sha256"], n_rows=rec["n_rows"], timings=rec["timings"])


def fetch_verified(repo: S3Repository, rel: str):
    """An input object read whole into memory (``open_input_file(...).read()``: one GET, 2 requests), checked
    against the manifest's size and sha256 before anything reads it; a ``pyarrow.Buffer``."""
    from forcedphot.io.parquet import ChecksumError

    want = repo.inputs()[rel]
    with arrow_fs(repo.uri).open_input_file(repo.loc.path(rel)) as f:
        buf = f.read_buffer()
    if buf.size != want["size"] or hashlib.sha256(memoryview(buf)).hexdigest() != want["sha256"]:
        raise ChecksumError(f"{repo.uri}/{rel}: checksum mismatch with the repository manifest (the object "
                            "was corrupted or modified after upload)")
    return buf


def stage_inputs(repo: S3Repository, q: S3Quantum, dest: Path):
    """(a private local repository holding the quantum's tables and the skymap, its local Quantum, the coadd
    buffers for :func:`forcedphot.io.coadd.coadds_in_memory`). Every object is fetched whole and checked
    against the manifest's sha256; the coadd stays in memory (no memory map, no local copy), named by its URI."""
    from forcedphot.plan import Quantum

    dest.mkdir(parents=True)
    manifest = {k: v for k, v in repo.metadata().items() if k not in ("inputs", "storage")}
    (dest / MANIFEST).write_text(json.dumps(manifest))
    local = {}
    for name, rel in [("skymap", "skymap/skymap.parquet"), *q.files.items()]:
        if name == "coadd":
            continue
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fetch_verified(repo, rel))
        local[name] = str(path)
    coadd_uri = f"{repo.uri}/{q.files['coadd']}"
    quantum = Quantum(q.data_id, local["ref"], local.get("footprints"), coadd_uri, (), local.get("scarlet_blends"))
    return dest, quantum, {coadd_uri: fetch_verified(repo, q.files["coadd"])}


def _measure_and_commit(repo: S3Repository, run_id: str, config, q: S3Quantum, gen: int, fps: dict, *,
                        n_threads, footprint_dataset: str, after_upload, heartbeat=None) -> dict | None:
    from forcedphot import threads
    from forcedphot.io.atomic import writer_token
    from forcedphot.io.coadd import coadds_in_memory
    from forcedphot.repository import Repository
    from forcedphot.task import ForcedPhotCoaddTask

    did = q.data_id
    with tempfile.TemporaryDirectory(prefix="forcedphot-s3-quantum-") as tmp:
        root, local_quantum, coadds = stage_inputs(repo, q, Path(tmp) / "repo")
        threads.configure(n_threads)
        with coadds_in_memory(coadds):
            res = ForcedPhotCoaddTask(Repository(root), config).run_quantum(local_quantum, inputs_fingerprint=fps,
                                                                            locked=True)
        del coadds
        data = Path(res.path).read_bytes()
    sha, _ = _sha256_b64(data)
    rel = (f"forced_source/tract={did.tract}/patch={did.patch}/band={did.band}/"
           f"forced_source-{writer_token()}-{uuid.uuid4().hex[:8]}.parquet")
    repo.put(rel, data)
    if after_upload is not None:
        after_upload(rel)
    from forcedphot.provenance import make_provenance
    from forcedphot.schema import schema_version

    rec = {"tract": did.tract, "patch": did.patch, "band": did.band, "generation": gen, "file": rel, "sha256": sha,
           "size": len(data), "n_rows": res.n_rows, "run_id": run_id, "seconds": res.timings.get("total", 0.0),
           "n_unmatched": res.n_unmatched_footprints, "timings": {k: round(v, 4) for k, v in res.timings.items()},
           "committed": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "committed_epoch": time.time(),
           "provenance": make_provenance(data_id=did, config=config, inputs=fps,
                                         schema_version=schema_version("forced_source"))}
    if heartbeat is not None and not heartbeat.renew():  # renewed just before the commit, or lost: no commit
        repo.delete(rel)
        return None
    try:
        repo.put_if_absent(commit_key(did, gen), json.dumps(rec, default=str).encode())
    except AlreadyExists:  # cannot happen while claims hold; never two commits of one generation
        repo.delete(rel)
        return None
    return rec


def sweep(repo: S3Repository, *, older_than: float) -> list[str]:
    """Remove forced_source data files that no commit record names and whose writer is dead (this host) or
    that are older than ``older_than`` (epoch seconds; another host's); returns their relative paths."""
    from forcedphot.io.atomic import writer_alive

    named, latest = set(), {}
    for obj in repo.list(COMMITS + "/"):
        m = _GEN.search(obj["rel"])
        if m:
            parts = dict(p.split("=", 1) for p in obj["rel"].split("/") if "=" in p)
            q = f"{parts.get('tract')}-{parts.get('patch')}-{parts.get('band')}"
            latest[q] = max(latest.get(q, 0), int(m.group(1)))
            try:
                named.add(json.loads(repo.get(obj["rel"]))["file"])
            except (ValueError, KeyError):
                pass
    # a claim on a generation already committed is done with (its run was killed between its commit and the
    # claim's release): removed, else it would stay forever (a late claimer of it finds the commit anyway)
    for obj in repo.list(CLAIMS + "/"):
        m = _CLAIM.search(obj["rel"])
        if m and int(m["gen"]) <= latest.get(m["quantum"], 0):
            repo.delete(obj["rel"])
    removed = []
    for obj in repo.list("forced_source/"):
        m = _DATA.search(obj["rel"])
        if m is None or obj["rel"] in named:
            continue
        here = m["host"] == re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
        if (not writer_alive(m["host"], int(m["pid"]), int(m["start"])) if here else obj["modified"] < older_than):
            repo.delete(obj["rel"])
            removed.append(obj["rel"])
    return removed


def vacuum(repo: S3Repository, *, grace: float | None = None) -> list[str]:
    """Remove superseded generations: each commit record older than its quantum's latest, with the data file it
    names, once the record that superseded it was written more than ``grace`` seconds ago (the server's clock:
    its ``Last-Modified`` against the ``Date`` of a HEAD, so no host's clock matters). A reader that listed the
    commit records within the grace period still finds every file it listed. Only forcedphot's own objects are
    removed (a ``g<N>.json`` record, a ``forced_source-<writer>-<rand>.parquet`` file no latest record names);
    the latest generation of every quantum is never touched. Returns the removed relative paths."""
    grace = grace_period(grace)
    now = repo.server_time()
    by_quantum: dict = {}
    for obj in repo.list(COMMITS + "/"):
        m = _GEN.search(obj["rel"])
        parts = dict(p.split("=", 1) for p in obj["rel"].split("/") if "=" in p)
        if m is None or not {"tract", "patch", "band"} <= parts.keys():
            continue
        key = (parts["tract"], parts["patch"], parts["band"])
        by_quantum.setdefault(key, []).append((int(m.group(1)), obj["rel"], obj["modified"]))
    expired, live = [], set()
    for recs in by_quantum.values():
        recs.sort()
        live.add(recs[-1][1])
        expired += [rel for (_, rel, _), (_, _, superseded) in zip(recs, recs[1:]) if now - superseded >= grace]
    if not expired:
        return []
    live_files = {json.loads(repo.get(rel)).get("file") for rel in live}
    removed = []
    for rel in expired:
        try:
            file = json.loads(repo.get(rel)).get("file")
        except ValueError:
            file = None
        if (isinstance(file, str) and file.startswith("forced_source/") and _DATA.search(file)
                and file not in live_files):
            repo.delete(file)  # the data file first: a record left by an interrupted vacuum is superseded anyway
            removed.append(file)
        repo.delete(rel)
        removed.append(rel)
    return removed


# -- the run --------------------------------------------------------------------------------------------
WAIT_POLL = 1.0  # seconds between looks at a quantum another live run holds (--wait)


def _measure_waiting(uri: str, run_id: str, config, data_id, wait: bool, **kw) -> tuple:
    while True:
        result = measure_quantum(uri, run_id, config, data_id, **kw)
        if not (wait and result[1] == "running-elsewhere"):
            return result
        time.sleep(WAIT_POLL)


def _spawned_worker_init(parent_pid: int) -> None:
    import signal

    from forcedphot.runner import watch_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle
    watch_parent(parent_pid)  # die with the run (a SIGKILL of it too): its claims are then taken over


def run_all(uri: str, config=None, *, tracts=None, patches=None, bands=None, force: bool = False, jobs: int = 1,
            progress: bool = False, n_threads: int | None = None, before_measuring=None, wait: bool = False,
            command: list[str] | None = None, dask: str | None = None):
    """:func:`forcedphot.runner.run_all` for an s3 repository: the same decisions, by commit records and claims
    instead of renames and locks. ``jobs > 1``: spawned worker processes, each handed the URI and a data ID.
    ``dask``: the address of a Dask scheduler (or ``"local"``); each quantum is a task of plain values (the URI
    string, the run ID, the config, the data ID, options): every worker builds its S3 clients from its own
    environment and runs the claim/commit protocol itself (:func:`measure_quantum`)."""
    import sys

    from forcedphot import ledger
    from forcedphot.config import ForcedPhotConfig
    from forcedphot.runner import RunSummary, _record, select_quanta

    t0, started = time.perf_counter(), time.time()
    repo = open_repository(uri)
    config = config or ForcedPhotConfig()
    summary = RunSummary(run_id=ledger.new_run_id())
    quanta = select_quanta(plan(repo, config.footprint_dataset), tracts=tracts, patches=patches, bands=bands)
    ledger.record_start(repo.uri, summary.run_id, command=command or sys.argv, config=config)
    outcome, code = "error", 1
    pool = None
    try:
        import logging

        removed = sweep(repo, older_than=started - ORPHAN_AGE)
        if removed:
            logging.getLogger(__name__).warning("removed %d uncommitted data file(s) of runs no longer running",
                                                len(removed))
        superseded = vacuum(repo)
        if superseded:
            logging.getLogger(__name__).info("removed %d object(s) of superseded generations", len(superseded))
        ready = [q for q in quanta if q.ready]
        for q in quanta:
            if not q.ready:
                cause = f"{q.data_id}: missing inputs: {', '.join(q.missing)}"
                summary.failed.append((str(q.data_id), cause))
                ledger.record_quantum(repo.uri, summary.run_id, q.data_id, status="missing-inputs",
                                      started=ledger.utc_now(), seconds=0.0, error=cause)
        if ready and before_measuring is not None:
            before_measuring()
        kw = dict(force=force, run_started=started, n_threads=n_threads, footprint_dataset=config.footprint_dataset)
        if dask and ready:
            _run_on_dask(dask, jobs, repo.uri, summary, config, ready, wait, kw)
        elif jobs > 1 and len(ready) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            from forcedphot import threads

            kw["n_threads"] = n_threads or threads.default_threads(min(jobs, len(ready)))
            pool = ProcessPoolExecutor(max_workers=min(jobs, len(ready)),
                                       mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_spawned_worker_init, initargs=(os.getpid(),))
            futures = {pool.submit(_measure_waiting, repo.uri, summary.run_id, config, q.data_id, wait, **kw): q
                       for q in ready}
            for fut in as_completed(futures):
                try:
                    _record(summary, fut.result())
                except Exception as exc:  # the worker died: its quantum failed, by name
                    did = str(futures[fut].data_id)
                    _record(summary, (did, "failed", f"{did}: worker died: {type(exc).__name__}: {exc}"))
        else:
            for q in ready:
                _record(summary, _measure_waiting(repo.uri, summary.run_id, config, q.data_id, wait, **kw))
        outcome, code = ("ok", 0) if summary.ok else ("failed", 1)
    except KeyboardInterrupt:
        outcome, code = "interrupted", 130
        raise
    finally:
        if pool is not None:
            if outcome == "interrupted":  # stop their quanta at once: a claim left behind is taken over later
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.kill()
            pool.shutdown(wait=outcome != "interrupted", cancel_futures=True)
        summary.seconds = time.perf_counter() - t0
        ledger.record_end(repo.uri, summary.run_id, outcome=outcome, exit_code=code,
                          counts={"done": len(summary.done), "up_to_date": len(summary.skipped),
                                  "failed": len(summary.failed), "elsewhere": len(summary.elsewhere)},
                          seconds=summary.seconds)
        from dataclasses import asdict

        repo.put("runs/last_run.json", json.dumps({
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config_fingerprint": config.fingerprint(), "outcome": outcome, "exit_code": code,
            **asdict(summary)}, indent=1).encode())
    return summary


def _run_on_dask(address: str, jobs: int, uri: str, summary, config, ready: list, wait: bool, kw: dict) -> None:
    """The ready quanta as tasks on a Dask cluster; a task whose worker died (the scheduler gave up retrying it)
    fails its quantum, by name, recorded by this process (the worker could not)."""
    from distributed import as_completed as dask_completed

    from forcedphot import ledger
    from forcedphot.runner import _Dask, _record, _worker_died

    workers = _Dask(address, jobs)
    interrupted = True
    try:
        client = workers.ready()
        if kw["n_threads"] is None and address != "local":  # the workers' machines, not this one
            kw = kw | {"n_threads": workers.threads_per_quantum()}
        by_key = {}
        for q in ready:
            fut = client.submit(_measure_waiting, uri, summary.run_id, config, q.data_id, wait, pure=False, **kw)
            workers.futures.append(fut)
            by_key[fut.key] = q.data_id
        for fut in dask_completed(list(workers.futures)):
            try:
                result = fut.result()
            except Exception as exc:  # KilledWorker: the worker died (each time it was tried)
                did = by_key[fut.key]
                result = _worker_died(str(did), exc)
                ledger.record_quantum(uri, summary.run_id, did, status="failed", started=ledger.utc_now(),
                                      seconds=0.0, error=result[2])
                result = (result[0], "failed", result[2])
            _record(summary, result)
        interrupted = False
    finally:
        workers.stop(interrupted=interrupted)


def read_last_run(repo: S3Repository) -> dict | None:
    data = repo.get_or_none("runs/last_run.json")
    return None if data is None else json.loads(data)


def status_rows(repo: S3Repository, config) -> list[dict]:
    """Per quantum: tract, patch, band, state ('missing' | 'new' | 'up-to-date' | 'stale'), missing inputs."""
    commits = repo.commits()
    rows = []
    for q in plan(repo, config.footprint_dataset):
        d = q.data_id
        state = quantum_state(repo, q, config, commits.get((d.tract, d.patch, d.band)))
        rows.append({"tract": d.tract, "patch": d.patch, "band": d.band, "state": state,
                     "missing": ",".join(q.missing)})
    return rows


def write_ledger_record(uri: str, rel: str, table, schema) -> None:
    """One ledger record (a small Parquet file) uploaded under its unique name, if absent."""
    from forcedphot.io.parquet import write_parquet

    with tempfile.TemporaryDirectory(prefix="forcedphot-s3-ledger-") as tmp:
        path = Path(tmp) / "record.parquet"
        write_parquet(table, path, schema)
        data = path.read_bytes()
    try:
        S3Repository(uri).put_if_absent(rel, data)
    except AlreadyExists:
        raise ForcedPhotError(f"{uri}/{rel}: ledger record exists already") from None


def local_snapshot(uri: str, dest: Path) -> Path:
    """A verified local copy of what the s3 repository shows now: its inputs (checked against the manifest's
    sha256) and its committed forced_source files under their local names (checked against their commit
    records), for the commands that read a local repository whole (``report``). Uncommitted files are not
    copied."""
    from forcedphot.io.parquet import ChecksumError

    repo = open_repository(uri)
    dest = Path(dest)
    dest.mkdir(parents=True)
    manifest = {k: v for k, v in repo.metadata().items() if k not in ("inputs", "storage")}
    for rel in repo.inputs():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fetch_verified(repo, rel))
    for rec in repo.committed_files():
        data = repo.get(rec["file"])
        if len(data) != rec["size"] or hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise ChecksumError(f"{repo.uri}/{rec['file']}: checksum mismatch with its commit record")
        path = dest / f"forced_source/tract={rec['tract']}/patch={rec['patch']}/band={rec['band']}/forced_source.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return dest
