"""A broken process pool fails the quanta it held, including the one the feeder had taken but not
yet handed over: every quantum comes back, none is lost."""
import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from forcedphot.runner import _Pool


@dataclass(frozen=True)
class _Quantum:
    data_id: str


@dataclass(frozen=True)
class _Job:
    quantum: _Quantum


def _measure(job):
    return job.quantum.data_id, "done", os.getpid()


def test_quantum_taken_when_the_pool_breaks_is_reported_not_lost():
    pool = _Pool(2)  # one spawned worker and this process

    def broken_submit(*args, **kwargs):  # what a pool whose worker died does on the next submit
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    pool.pool.submit = broken_submit
    jobs = [_Job(_Quantum(f"q{k}")) for k in range(6)]
    try:
        futures = [pool.submit(_measure, job) for job in jobs]
        got = list(pool.completed(futures))
    finally:
        pool.stop(interrupted=False)
    assert sorted(did for did, _, _ in got) == sorted(j.quantum.data_id for j in jobs)  # each exactly once
    died = [(did, msg) for did, status, msg in got if status == "worker-died"]
    assert len(died) == 1 and died[0][1].startswith(f"{died[0][0]}: worker died: BrokenProcessPool")
    assert sum(status == "done" for _, status, _ in got) == 5  # this process measured the rest
