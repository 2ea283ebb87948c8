"""One place sets threads; results do not depend on the thread count or the chunk size."""

import numba
import pyarrow as pa
import pytest

from forcedphot import threads
from forcedphot.config import ForcedPhotConfig
from forcedphot.plan import plan_quanta
from forcedphot.repository import DataId, Repository
from forcedphot.task import ForcedPhotCoaddTask


def _table(root, config, n_threads):
    threads.configure(n_threads)
    repo = Repository(root)
    quantum = next(q for q in plan_quanta(repo, bands=["i"]) if q.data_id == DataId(0, 0, "i"))
    task = ForcedPhotCoaddTask(repo, config)
    inputs = task.attach_footprints(quantum)
    return task.run(task.generate_meas_cat(inputs), inputs)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs at least 2 cores to compare thread counts")
def test_quantum_is_bit_identical_for_any_thread_count_and_chunk_size(tiny_repo_master):
    try:
        one = _table(tiny_repo_master, ForcedPhotConfig(), 1)
        two = _table(tiny_repo_master, ForcedPhotConfig(), 2)
        small_chunks = _table(tiny_repo_master, ForcedPhotConfig(chunk_size=7), 2)
    finally:
        threads.configure()
    assert one.num_rows > 50
    for name in one.column_names:
        assert _bytes(one, name) == _bytes(two, name), name
        assert _bytes(one, name) == _bytes(small_chunks, name), name


def _bytes(table, name) -> bytes:
    """The column's Arrow IPC bytes: equal only if every value is bit-identical (NaN payloads included).

    The bytes under a null are undefined in Arrow (Parquet does not store them), so nulls are
    compared through the validity bitmap and their slots zeroed before the values are compared.
    """
    column = table.column(name).combine_chunks()
    if column.null_count:
        zero = pa.scalar(0, column.type) if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) \
            else pa.scalar(False) if pa.types.is_boolean(column.type) else None
        column = pa.StructArray.from_arrays([column.is_valid(), column.fill_null(zero)], ["valid", "value"])
    column = pa.table({name: column})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, column.schema) as writer:
        writer.write_table(column)
    return sink.getvalue().to_pybytes()


def test_default_threads_share_the_cores_between_concurrent_quanta():
    cores = threads.available_cores()
    assert threads.default_threads(1) == cores
    assert threads.default_threads(cores) == 1
    assert threads.default_threads(4 * cores) == 1
    assert threads.worker_environment(3)["OMP_NUM_THREADS"] == "3"


def test_configure_sets_numba_and_refuses_nonsense():
    try:
        assert threads.configure(1) == 1
        assert numba.get_num_threads() == 1 and threads.threads() == 1
        with pytest.raises(ValueError):
            threads.configure(-2)
    finally:
        threads.configure()
    assert numba.get_num_threads() == min(threads.available_cores(), numba.config.NUMBA_NUM_THREADS)


def test_every_parallel_kernel_releases_the_gil():
    """A worker with several threads (``dask worker`` starts one per core) runs quanta side by side
    only if the kernels drop the GIL while they run."""
    from forcedphot.compile import dispatchers

    parallel = [(name, d) for name, d, _ in dispatchers() if d.targetoptions.get("parallel")]
    assert len(parallel) >= 20
    held = [name for name, d in parallel if not d.targetoptions.get("nogil")]
    assert not held, f"parallel kernels holding the GIL: {held}"


def test_a_quantum_measuring_alone_takes_every_core_and_shares_them_when_another_starts(tmp_path):
    """The run's processes count the quanta measuring now (threads.CoreShare); each stage takes
    cores // that count, so a quantum alone (workers starting, the run's tail) leaves no core idle."""
    import subprocess
    import sys
    import threading

    cores = threads.available_cores()
    path = tmp_path / "run.cores"
    share = threads.CoreShare.create(path)
    started, release = threading.Event(), threading.Event()

    def other_quantum():  # a second quantum of the run, in another thread (numba's count is per thread)
        with threads.sharing(path):
            started.set()
            release.wait(30)

    try:
        with threads.sharing(path):
            assert share.measuring() == 1 and threads.rebalance() == cores
            other = threading.Thread(target=other_quantum)
            other.start()
            assert started.wait(30)
            assert share.measuring() == 2 and threads.rebalance() == threads.default_threads(2)
            # and from another process, which maps the same file
            code = ("import sys; from forcedphot import threads; "
                    "s = threads.CoreShare(sys.argv[1]); print(s.measuring(), s.threads())")
            out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
            assert out.stdout.split() == ["2", str(threads.default_threads(2))]
            release.set()
            other.join(30)
            assert share.measuring() == 1 and threads.rebalance() == cores
        assert share.measuring() == 0
    finally:
        release.set()
        threads.configure()
        share.remove()
    assert not path.exists()


def test_without_a_core_share_the_configured_count_stays():
    try:
        threads.configure(1)
        with threads.sharing(None):
            assert threads.rebalance() == 1
    finally:
        threads.configure()


def test_a_core_share_that_is_gone_leaves_the_count_as_configured(tmp_path):
    try:
        threads.configure(1)
        with threads.sharing(tmp_path / "gone.cores"):  # e.g. the run removed it while being torn down
            assert threads.rebalance() == 1
    finally:
        threads.configure()
