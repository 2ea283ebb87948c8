import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot.io import parquet as fp_parquet
from forcedphot.io.atomic import atomic_path
from forcedphot.schema import load_schema


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("committed")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "committed"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_parquet_writer_is_atomic(tmp_path, monkeypatch):
    schema = load_schema("truth")
    row = {"id": 1, "tract": 0, "patch": 0, "band": "g", "source_id": 3, "is_star": True, "flux": 1.5,
           "x": 1.0, "y": 2.0, "n_neighbours": 0}
    path = tmp_path / "truth.parquet"
    fp_parquet.write_parquet(pa.Table.from_pylist([row]), path, schema)

    def dying_writer(sink, schema, **kw):  # the writer dies after writing a few bytes
        sink.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "ParquetWriter", dying_writer)  # io.parquet imports pyarrow.parquet when it writes
    with pytest.raises(OSError, match="disk full"):
        fp_parquet.write_parquet(pa.Table.from_pylist([{**row, "flux": 99.0}]), path, schema)
    monkeypatch.undo()
    assert pq.read_table(path).column("flux").to_pylist() == [1.5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.parquet"]


def test_atomic_dir_swaps_in_a_whole_folder_and_a_failure_keeps_the_old_one(tmp_path):
    from forcedphot.io.atomic import atomic_dir

    target = tmp_path / "repo"
    target.mkdir()
    (target / "old-only.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert [p.name for p in target.iterdir()] == ["old-only.txt"]
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".repo.w-") and not target.joinpath("new.txt").exists()
        (tmp / "new.txt").write_text("complete")
    assert [p.name for p in target.iterdir()] == ["new.txt"]  # nothing of the old folder survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_sweep_removes_only_temporaries_whose_writer_is_gone(tmp_path):
    import os

    from forcedphot.io.atomic import process_start, sweep_temp, temp_path_for, writer_token

    final = tmp_path / "out.parquet"
    live = temp_path_for(final)
    host, pid, start = writer_token().rsplit("-", 2)
    assert f".w-{host}-{pid}-{start}-" in live.name and int(pid) == os.getpid()
    assert int(start) == process_start(os.getpid()) > 0
    reused = final.with_name(f".out.parquet.w-{host}-{pid}-{int(start) + 1}-0123abcd.tmp")  # same pid, other process
    unrelated = tmp_path / ".hidden.tmp"
    for p in (live, reused, unrelated, final):
        p.write_text("x")
    assert sweep_temp(tmp_path) == [reused]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name, final.name])
