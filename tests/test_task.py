"""The task streams its rows: each chunk is measured, corrected, calibrated and written as the writer
asks for it (no whole-quantum output columns), with the same file whatever the chunk size, and
nothing under the output's name when a chunk fails."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from forcedphot import task as task_module
from forcedphot.config import ForcedPhotConfig
from forcedphot.plan import plan_quanta
from forcedphot.plugins.psf_flux import PsfFlux
from forcedphot.repository import DataId, Repository
from forcedphot.task import ForcedPhotCoaddTask

DATA_ID = DataId(0, 0, "i")


def _quantum(repo):
    return next(q for q in plan_quanta(repo, bands=["i"]) if q.data_id == DATA_ID)


def test_the_written_file_is_the_same_for_any_chunk_size(tiny_repo, monkeypatch):
    monkeypatch.setattr(task_module, "OUTPUT_ROW_GROUP_ROWS", 16)  # several row groups in the tiny quantum
    repo = Repository(tiny_repo)
    written = {}
    for chunk_size in (4096, 7, 16):
        result = ForcedPhotCoaddTask(repo, ForcedPhotConfig(chunk_size=chunk_size)).run_quantum(_quantum(repo))
        written[chunk_size] = open(result.path, "rb").read()
    assert len(set(written.values())) == 1
    meta = pq.ParquetFile(result.path).metadata
    assert meta.num_rows == result.n_rows > 50
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups - 1)] == [16] * (meta.num_row_groups - 1)


def test_the_streamed_file_holds_the_rows_run_returns(tiny_repo):
    repo = Repository(tiny_repo)
    engine = ForcedPhotCoaddTask(repo, ForcedPhotConfig(chunk_size=9))
    inputs = engine.attach_footprints(_quantum(repo))
    table = engine.run(engine.generate_meas_cat(inputs), inputs)
    del inputs
    path = ForcedPhotCoaddTask(repo, ForcedPhotConfig(chunk_size=9)).run_quantum(_quantum(repo)).path
    written = pq.read_table(path).replace_schema_metadata(None)
    assert written.schema.equals(table.schema) and written.to_pandas().equals(table.to_pandas())


def test_a_chunk_that_fails_leaves_the_earlier_output_and_no_partial_file(tiny_repo, monkeypatch):
    repo = Repository(tiny_repo)
    path = Path(ForcedPhotCoaddTask(repo).run_quantum(_quantum(repo)).path)
    before, names = path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    calls = {"n": 0}
    measure = PsfFlux.measure

    def fails_on_the_third_chunk(self, ctx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("PsfFlux failed on chunk 3")
        return measure(self, ctx)

    monkeypatch.setattr(PsfFlux, "measure", fails_on_the_third_chunk)
    monkeypatch.setattr(task_module, "OUTPUT_ROW_GROUP_ROWS", 8)  # row groups are written before the failure
    with pytest.raises(RuntimeError, match="chunk 3"):
        ForcedPhotCoaddTask(repo, ForcedPhotConfig(chunk_size=10, noise_offset=0.25)).run_quantum(_quantum(repo))
    assert calls["n"] == 3
    assert path.read_bytes() == before  # the earlier output stands
    assert sorted(p.name for p in path.parent.iterdir()) == names  # and no temporary file is left
