"""The loader's threads: the coadd checksum, its bad-variance count and the noise statistics run beside
the footprint read and join (quantum.load_quantum), with the same inputs and numbers as in turn, and a
corrupted coadd still the error reported."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from forcedphot import checks, threads
from forcedphot.io.coadd import open_coadd, read_coadd
from forcedphot.io.parquet import ChecksumError
from forcedphot.noise import NoiseReplacer, clipped_stats_1d
from forcedphot.plan import plan_quanta
from forcedphot.quantum import load_quantum
from forcedphot.repository import DataId, Repository
from forcedphot.task import ForcedPhotCoaddTask

DATA_ID = DataId(0, 0, "i")


@pytest.fixture
def two_threads():
    threads.configure(2)
    try:
        yield
    finally:
        threads.configure()


def _quantum(root):
    repo = Repository(root)
    return repo, next(q for q in plan_quanta(repo, bands=["i"]) if q.data_id == DATA_ID)


def _corrupt_planes(path):
    """Flip bytes in the middle of the coadd's image plane (the file still opens: only its checksum fails)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start:start + 64] = bytes(255 - b for b in data[start:start + 64])
    path.write_bytes(bytes(data))


def test_in_thread_returns_raises_and_runs_in_turn_with_one_thread():
    def where():
        return threading.get_ident()

    def fail():
        raise ValueError("boom")

    threads.configure(2)
    try:
        assert threads.InThread(where).result() != threading.get_ident()
        with pytest.raises(ValueError, match="boom"):
            threads.InThread(fail).result()
        threads.configure(1)
        job = threads.InThread(where)
        job.join()  # a job run in turn joins without error
        assert job.result() == threading.get_ident()
    finally:
        threads.configure()


def test_open_coadd_in_the_background_reads_what_read_coadd_reads(tiny_repo_master):
    repo, quantum = _quantum(tiny_repo_master)
    plain = read_coadd(quantum.coadd_file)
    coadd, verification = open_coadd(quantum.coadd_file, background=True)
    verification.wait()
    for name in ("image", "mask", "variance"):
        assert np.array_equal(getattr(coadd, name), getattr(plain, name))
    assert coadd.bbox == plain.bbox and coadd.photo_calib == plain.photo_calib


def test_a_corrupted_coadd_fails_its_checksum_when_verified_in_the_background(tiny_repo_master, tmp_path):
    repo, quantum = _quantum(tiny_repo_master)
    path = tmp_path / "coadd.arrow"
    shutil.copy(quantum.coadd_file, path)
    _corrupt_planes(path)
    with pytest.raises(ChecksumError, match="content checksum mismatch"):
        read_coadd(path)
    coadd, verification = open_coadd(path, background=True)  # opens; the thread finds the mismatch
    with pytest.raises(ChecksumError, match="content checksum mismatch"):
        verification.wait()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_corrupted_coadd_is_the_error_reported_when_the_load_also_fails(tiny_repo, n_threads):
    """A footprint file that fails too: the coadd's checksum, verified in a thread, is still what is named."""
    repo, quantum = _quantum(tiny_repo)
    _corrupt_planes(repo.coadd_path(DATA_ID))
    footprints = repo.footprints_path(DATA_ID)
    footprints.write_bytes(footprints.read_bytes()[: footprints.stat().st_size // 2])  # truncated
    threads.configure(n_threads)
    try:
        with pytest.raises(ChecksumError, match=r"coadd\.arrow: content checksum mismatch"):
            load_quantum(quantum)
    finally:
        threads.configure()


def test_the_loader_prepares_the_noise_statistics_the_replacer_would_compute(tiny_repo_master, two_threads):
    repo, quantum = _quantum(tiny_repo_master)
    task = ForcedPhotCoaddTask(repo)
    inputs = task.attach_footprints(quantum)
    expected = clipped_stats_1d(inputs.coadd.image)
    if threads.concurrent_kernels():
        assert inputs.prepared["noise_stats"] == expected  # the same numbers, bit for bit
    else:  # a numba threading layer that cannot run two kernels at once: computed in turn by the replacer
        assert inputs.prepared is None
    with_stats = task.make_noise_replacer(inputs)
    coadd, fp = inputs.coadd, inputs.ref["footprints"]
    fresh = NoiseReplacer(coadd.image, (coadd.bbox.min_x, coadd.bbox.min_y), inputs.ref["id"], inputs.ref["parent"],
                          fp, seed=task.metadata["noise"]["seed"], offset=task.config.noise_offset)
    assert (with_stats.mean, with_stats.sigma) == (fresh.mean, fresh.sigma)
    assert np.array_equal(with_stats.base, fresh.base)
    assert checks.bad_variance_pixels(coadd) == checks.check_pixels(quantum, coadd, fp, inputs.ref["id"])


def test_without_noise_replacement_nothing_is_prepared(tiny_repo_master, two_threads):
    from forcedphot.config import ForcedPhotConfig

    repo, quantum = _quantum(tiny_repo_master)
    inputs = ForcedPhotCoaddTask(repo, ForcedPhotConfig(noise_replacement=False)).attach_footprints(quantum)
    assert inputs.prepared is None
