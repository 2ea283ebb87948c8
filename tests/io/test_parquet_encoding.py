"""What the Parquet writer dictionary-encodes: strings only (measurements never repeat)."""

import pyarrow.parquet as pq

from forcedphot.io.parquet import dictionary_columns


def test_forced_source_dictionary_encodes_only_strings(measured_tiny_repo):
    path = next(measured_tiny_repo.glob("forced_source/**/forced_source.parquet"))
    meta = pq.ParquetFile(path).metadata
    schema = pq.read_schema(path)
    strings = set(dictionary_columns(schema))
    assert "band" in strings and "psfFlux" not in strings
    rg = meta.row_group(0)
    for i in range(rg.num_columns):
        col = rg.column(i)
        name = col.path_in_schema
        dictionary = col.has_dictionary_page or any("DICT" in e for e in col.encodings)
        assert dictionary == (name in strings), (name, col.encodings)
