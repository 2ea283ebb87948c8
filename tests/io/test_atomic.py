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

    monkeypatch.setattr(fp_parquet.pq, "ParquetWriter", dying_writer)
    with pytest.raises(OSError, match="disk full"):
        fp_parquet.write_parquet(pa.Table.from_pylist([{**row, "flux": 99.0}]), path, schema)
    monkeypatch.undo()
    assert pq.read_table(path).column("flux").to_pylist() == [1.5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.parquet"]
