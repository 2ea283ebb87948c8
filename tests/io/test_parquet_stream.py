"""write_parquet_batches: rows written as they come, in row groups that do not depend on the cuts, and
nothing under the final name when the rows stop coming."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot.io.parquet import write_parquet, write_parquet_batches
from forcedphot.schema import load_schema

SCHEMA = load_schema("forced_source")


@pytest.fixture(scope="module")
def rows(measured_tiny_repo) -> pa.Table:
    """One real quantum's forced_source rows (the schema's every column and type)."""
    path = next(measured_tiny_repo.glob("forced_source/**/forced_source.parquet"))
    return pq.read_table(path).replace_schema_metadata(None)


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Same columns, types and values (NaN in the same places counts as equal)."""
    return a.schema.equals(b.schema) and a.to_pandas().equals(b.to_pandas())


def _cut(table: pa.Table, size: int):
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size).combine_chunks().to_batches()[0]


def test_the_file_does_not_depend_on_how_the_rows_were_cut(rows, tmp_path):
    assert rows.num_rows > 40
    files = {}
    for cut in (rows.num_rows, 7, 13, 16):
        path = tmp_path / f"cut{cut}.parquet"
        write_parquet_batches(_cut(rows, cut), path, SCHEMA, provenance={"x": 1}, row_group_size=16)
        files[cut] = path.read_bytes()
    assert len(set(files.values())) == 1  # the same bytes whatever the cuts
    meta = pq.ParquetFile(tmp_path / "cut7.parquet").metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert sizes[:-1] == [16] * (len(sizes) - 1) and 0 < sizes[-1] <= 16 and sum(sizes) == rows.num_rows
    assert _same(pq.read_table(tmp_path / "cut7.parquet").replace_schema_metadata(None), rows)


def test_a_table_is_written_as_before(rows, tmp_path):
    """write_parquet (one table) is the same writer: same rows, one row group without a size."""
    write_parquet(rows, tmp_path / "one.parquet", SCHEMA)
    assert pq.ParquetFile(tmp_path / "one.parquet").metadata.num_row_groups == 1
    assert _same(pq.read_table(tmp_path / "one.parquet").replace_schema_metadata(None), rows)


def test_rows_that_stop_coming_leave_nothing_under_the_name(rows, tmp_path):
    path = tmp_path / "out.parquet"
    path.write_bytes(b"an earlier output")

    def failing():
        yield from _cut(rows.slice(0, 20), 10)  # two row groups of 8 written, then the producer fails
        raise RuntimeError("measurement failed")

    with pytest.raises(RuntimeError, match="measurement failed"):
        write_parquet_batches(failing(), path, SCHEMA, row_group_size=8)
    assert path.read_bytes() == b"an earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]  # no temporary file left


def test_no_rows_give_an_empty_file_with_the_schema(tmp_path):
    path = tmp_path / "empty.parquet"
    write_parquet_batches(iter(()), path, SCHEMA, row_group_size=8)
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.names == SCHEMA.names


def test_a_part_that_breaks_the_schema_is_refused_in_one_line(rows, tmp_path):
    path = tmp_path / "bad.parquet"
    bad = rows.slice(0, 5).drop_columns(["psfFlux"])
    with pytest.raises(Exception, match=r"bad\.parquet: table does not match schema forced_source .*psfFlux"):
        write_parquet_batches([rows.slice(0, 5), bad], path, SCHEMA, row_group_size=4)
    assert not path.exists()
