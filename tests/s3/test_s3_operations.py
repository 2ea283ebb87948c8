"""Operating an s3:// repository over time (moto_server, see conftest.py): claims renewed by a heartbeat under a
short lease, `run --force` committing a new generation that readers switch to at once, and `vacuum` removing
superseded generations only after their grace period."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from forcedphot import s3repo
from forcedphot.config import ForcedPhotConfig
from forcedphot.io.store import s3_client
from forcedphot.query import load_forced_source, sql
from forcedphot.repository import DataId

pytestmark = pytest.mark.slow
RUN_TIMEOUT = 600  # seconds for one measurement process on a busy 2-core machine
LEASE = 4.0  # seconds: the short lease the claimer processes of these tests give their claims

# a process that measures one quantum and stops between its upload and its commit (for HOLD seconds, or forever)
CLAIMER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from forcedphot import s3repo
    from forcedphot.config import ForcedPhotConfig
    from forcedphot.repository import DataId

    uri, marker, hold = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])

    def stop(rel):
        marker.write_text(rel)
        time.sleep(hold)

    print(s3repo.measure_quantum(uri, "claimer", ForcedPhotConfig(), DataId(0, 0, "g"), after_upload=stop)[1])
""")


@pytest.fixture
def s3_tiny(s3_bucket, tiny_repo_master) -> str:
    uri = f"s3://{s3_bucket}/survey"
    s3repo.upload_inputs(tiny_repo_master, uri)
    return uri


def _keys(uri: str, rel: str) -> list[str]:
    return sorted(o["rel"] for o in s3repo.S3Repository(uri).list(rel))


def _claimer(uri: str, marker, hold: float) -> subprocess.Popen:
    env = dict(os.environ, FORCEDPHOT_CLAIM_LEASE=str(LEASE))
    return subprocess.Popen([sys.executable, "-c", CLAIMER, uri, str(marker), str(hold)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(marker, proc) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the claimer did not reach its upload in time"
        time.sleep(0.1)


@pytest.fixture
def elsewhere(monkeypatch):
    """This process plays a run on another host: a claim's pid says nothing, only its lease does."""
    monkeypatch.setattr(s3repo.socket, "gethostname", lambda: "another-host.example.org")


def test_a_live_runs_claim_is_renewed_and_never_stolen(s3_tiny, tmp_path, elsewhere):
    """A claimer with a 4 s lease holds its quantum for 5 leases (its heartbeat renews the claim): another host
    trying all along never takes it; the claimer commits generation 1."""
    did = DataId(0, 0, "g")
    marker = tmp_path / "uploaded"
    proc = _claimer(s3_tiny, marker, 5 * LEASE)
    _wait_for(marker, proc)
    repo = s3repo.open_repository(s3_tiny)
    key = s3repo.claim_key(did, 1)
    first, attempts, renewals = time.monotonic(), 0, set()
    while proc.poll() is None:
        if s3repo.claim(repo, did, 1, "thief") is not None:  # only once the claimer committed and released it
            assert repo.head_etag(s3repo.commit_key(did, 1)) is not None, "a live run's claim was taken over"
            repo.delete(key)
            break
        attempts += 1
        body = repo.get_or_none(key)
        if body is not None:
            held = json.loads(body)
            assert held["run_id"] == "claimer" and held["lease"] == LEASE
            renewals.add(held["renewals"])
        time.sleep(0.3)
    out, err = proc.communicate()
    assert proc.returncode == 0 and out.split() == ["done"], (out, err)
    assert time.monotonic() - first >= 4 * LEASE and attempts >= 20
    assert len(renewals) >= 5  # renewed all along (about 5 per lease)
    print(f"{attempts} steal attempts over {time.monotonic() - first:.1f} s, renewals seen {sorted(renewals)}")
    assert [r["generation"] for r in repo.committed_files(band="g", patch=0)] == [1]
    assert repo.head_etag(key) is None  # released after the commit


def test_a_killed_runs_claim_expires_and_another_host_takes_the_quantum(s3_tiny, tmp_path, elsewhere):
    """SIGKILL of a claimer mid-quantum: its claim stops being renewed and another host takes the quantum over
    one lease later (not before), measures it and commits generation 1 (the killed run's file is never named)."""
    did = DataId(0, 0, "g")
    marker = tmp_path / "uploaded"
    proc = _claimer(s3_tiny, marker, 3600)
    _wait_for(marker, proc)
    time.sleep(1.5 * LEASE / s3repo.CLAIM_RENEW)  # at least one renewal
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = time.monotonic()
    repo = s3repo.open_repository(s3_tiny)
    assert json.loads(repo.get(s3repo.claim_key(did, 1)))["renewals"] >= 1
    for attempt in range(10_000):
        tried = time.monotonic()
        _, status, payload = s3repo.measure_quantum(s3_tiny, f"taker-{attempt}", ForcedPhotConfig(), did)
        if status != "running-elsewhere":
            break
        assert "claimed by another live run" in payload
        assert time.monotonic() - killed_at < 3 * LEASE + 10, "the dead claim was not taken over in time"
        time.sleep(0.3)
    waited = tried - killed_at  # the start of the attempt that won (it then measured the quantum)
    print(f"taken over {waited:.1f} s after the kill (lease {LEASE} s)")
    assert status == "done", payload
    # the lease counted from the last renewal (<= lease/CLAIM_RENEW before the kill), Last-Modified in whole seconds
    assert waited >= LEASE * (1 - 1 / s3repo.CLAIM_RENEW) - 1.0
    (rec,) = repo.committed_files(band="g", patch=0)
    assert rec["generation"] == 1 and rec["run_id"].startswith("taker-") and rec["file"] != marker.read_text()
    assert repo.head_etag(s3repo.claim_key(did, 1)) is None
    assert load_forced_source(s3_tiny, band="g", patch=0).height == rec["n_rows"] > 0


def test_a_run_whose_claim_was_taken_over_does_not_commit(s3_tiny):
    """A claimer that missed its lease (here: its claim overwritten between its upload and its commit, as a
    takeover does) finds out at its last renewal: no commit, its data file removed, the new holder's claim kept."""
    did = DataId(0, 1, "r")
    repo = s3repo.open_repository(s3_tiny)
    key = s3repo.claim_key(did, 1)
    thief = json.dumps({"run_id": "thief", "host": "another-host", "pid": 1, "time": time.time(),
                        "lease": 60.0}).encode()
    uploaded = []

    def taken_over(rel):
        uploaded.append(rel)
        repo.put_if_absent(key, thief, if_match=repo.head_etag(key))

    _, status, payload = s3repo.measure_quantum(s3_tiny, "slow", ForcedPhotConfig(), did, after_upload=taken_over)
    assert status == "running-elsewhere" and "taken over" in payload
    assert repo.committed_files() == [] and _keys(s3_tiny, "forced_source/") == [] and len(uploaded) == 1
    assert json.loads(repo.get(key))["run_id"] == "thief"  # not released by the run that lost it


def test_claim_liveness_by_lease():
    """Another host's claim is alive while younger than its own lease (6 h for a claim that has none)."""
    claim = {"host": "another-host", "pid": 1, "time": time.time(), "lease": 60.0}
    assert s3repo._claimer_alive(claim, 59.0) and not s3repo._claimer_alive(claim, 61.0)
    legacy = {"host": "another-host", "pid": 1, "time": time.time() - 3600}
    assert s3repo._claimer_alive(legacy) and not s3repo._claimer_alive(legacy, 6 * 3600 + 1)


def test_lease_and_grace_settings(monkeypatch):
    from forcedphot.errors import InputError

    monkeypatch.setenv("FORCEDPHOT_CLAIM_LEASE", "90")
    assert s3repo.claim_lease() == 90.0 and json.loads(s3repo._claim_body("r"))["lease"] == 90.0
    monkeypatch.setenv("FORCEDPHOT_CLAIM_LEASE", "0")
    with pytest.raises(InputError, match="must be > 0"):
        s3repo.claim_lease()
    monkeypatch.delenv("FORCEDPHOT_CLAIM_LEASE")
    assert s3repo.claim_lease() == s3repo.CLAIM_LEASE
    monkeypatch.setenv("FORCEDPHOT_GRACE_PERIOD", "12")
    assert s3repo.grace_period() == 12.0 and s3repo.grace_period(0) == 0.0
    monkeypatch.delenv("FORCEDPHOT_GRACE_PERIOD")
    assert s3repo.grace_period() == s3repo.GRACE_PERIOD


def test_force_commits_a_new_generation_and_vacuum_removes_the_old_after_its_grace(s3_tiny, capsys):
    """`run --force` re-measures every quantum into generation 2: readers switch to it (same values, no row
    twice); a reader holding generation 1's file list still reads it; `vacuum` keeps generation 1 during the
    grace period, then removes its records and files and nothing of generation 2."""
    import pyarrow.dataset as pads

    from forcedphot.cli import main
    from forcedphot.io.store import arrow_fs

    assert main(["run", "--repo", s3_tiny, "-q", "--band", "i"]) == 0
    repo = s3repo.open_repository(s3_tiny)
    gen1 = repo.committed_files(band="i")
    before = load_forced_source(s3_tiny).sort(["objectId", "band", "tract", "patch"])
    assert len(gen1) == 4 and {r["generation"] for r in gen1} == {1} and before.height > 0
    held = pads.dataset([repo.loc.path(r["file"]) for r in gen1], filesystem=arrow_fs(s3_tiny))  # a reader
    assert main(["run", "--repo", s3_tiny, "-q", "--band", "i", "--force"]) == 0
    gen2 = repo.committed_files(band="i")
    assert {r["generation"] for r in gen2} == {2}
    assert not {r["file"] for r in gen1} & {r["file"] for r in gen2}
    after = load_forced_source(s3_tiny).sort(["objectId", "band", "tract", "patch"])
    assert after.equals(before)  # same values, every row once
    assert sql(s3_tiny, "SELECT count(*) AS n FROM forced_source").column("n")[0].as_py() == before.height
    assert held.to_table().num_rows == before.height  # superseded, still there
    assert len(_keys(s3_tiny, "commits/forced_source/")) == 8
    # the run's own vacuum (default grace) and an explicit one within the grace period remove nothing
    assert main(["vacuum", "--repo", s3_tiny, "--grace", "3600"]) == 0
    assert "0 objects of superseded generations removed" in capsys.readouterr().out
    assert len(_keys(s3_tiny, "forced_source/")) == 8
    time.sleep(2.1)  # Last-Modified and Date are whole seconds
    assert main(["vacuum", "--repo", s3_tiny, "--grace", "1"]) == 0
    assert "8 objects of superseded generations removed" in capsys.readouterr().out
    assert set(_keys(s3_tiny, "forced_source/")) == {r["file"] for r in gen2}
    assert _keys(s3_tiny, "commits/forced_source/") == sorted(s3repo.commit_key(DataId(0, r["patch"], "i"), 2)
                                                               for r in gen2)
    assert load_forced_source(s3_tiny).sort(["objectId", "band", "tract", "patch"]).equals(before)
    rows = s3repo.status_rows(repo, ForcedPhotConfig())
    assert sum(r["state"] == "up-to-date" for r in rows) == 4
    assert s3repo.vacuum(repo, grace=0) == []  # nothing superseded left
    # an object forcedphot did not write is never removed, even under forced_source/
    s3_client().put_object(Bucket=repo.loc.bucket, Key=repo.loc.key("forced_source/notes.txt"), Body=b"x")
    assert main(["run", "--repo", s3_tiny, "-q", "--band", "i", "--force"]) == 0
    time.sleep(1.1)
    removed = s3repo.vacuum(repo, grace=0)
    assert len(removed) == 8 and "forced_source/notes.txt" in _keys(s3_tiny, "forced_source/")


def test_sweep_removes_claims_of_committed_generations(s3_tiny):
    """A run killed between its commit and its claim's release leaves a claim on a committed generation: the
    sweep removes it; a claim on a generation not yet committed is left to its claimer."""
    repo = s3repo.open_repository(s3_tiny)
    did = DataId(0, 3, "z")
    repo.put_if_absent(s3repo.commit_key(did, 1), json.dumps({"file": "forced_source/x.parquet"}).encode())
    for gen in (1, 2):
        repo.put_if_absent(s3repo.claim_key(did, gen), s3repo._claim_body("killed"))
    assert s3repo.sweep(repo, older_than=0) == []
    assert _keys(s3_tiny, "runs/claims/") == [s3repo.claim_key(did, 2)]
