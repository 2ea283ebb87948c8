"""Checksums: a corrupted Parquet file fails its quantum in one line; other quanta run; old output stays."""

from __future__ import annotations

import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot.cli import main
from forcedphot.errors import InputError
from forcedphot.io.parquet import ChecksumError, read_parquet, verify_checksum, write_parquet
from forcedphot.repository import DataId, Repository
from forcedphot.schema import load_schema

BANDS = ("g", "r")


@pytest.fixture
def two_quanta(tiny_repo_master, tmp_path):
    """Patch 1 in bands g and r of the tiny survey."""
    src, dst = Repository(tiny_repo_master), Repository(tmp_path / "repo")
    dst.root.mkdir()
    shutil.copy(src.manifest_path, dst.manifest_path)
    files = [(src.skymap_path(), dst.skymap_path()), (src.ref_path(0, 1), dst.ref_path(0, 1))]
    for band in BANDS:
        d = DataId(0, 1, band)
        files += [(src.footprints_path(d), dst.footprints_path(d)), (src.coadd_path(d), dst.coadd_path(d))]
    for a, b in files:
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(a, b)
    return dst


def flip_bytes(path, start_fraction=0.5, n=256):
    data = bytearray(path.read_bytes())
    start = int(len(data) * start_fraction)
    data[start:start + n] = bytes(255 - b for b in data[start:start + n])
    path.write_bytes(bytes(data))


def test_corrupted_footprints_fail_one_quantum_and_keep_its_output(two_quanta, capsys):
    root = str(two_quanta.root)
    assert main(["run", "--repo", root, "-q"]) == 0
    capsys.readouterr()
    r, g = DataId(0, 1, "r"), DataId(0, 1, "g")
    before = two_quanta.forced_source_path(r).read_bytes()
    g_mtime = two_quanta.forced_source_path(g).stat().st_mtime_ns
    flip_bytes(two_quanta.footprints_path(r))
    assert main(["run", "--repo", root, "-q", "--force"]) == 1
    out = capsys.readouterr()
    failed = [line for line in out.err.splitlines() if line.startswith("FAILED ")]
    assert failed == [f"FAILED {two_quanta.footprints_path(r)}: content checksum mismatch (the file was corrupted "
                      "or modified after it was written); re-create it with the tool that wrote it"]
    assert out.out.startswith("1 quanta measured")  # band g still ran
    assert two_quanta.forced_source_path(g).stat().st_mtime_ns != g_mtime
    assert two_quanta.forced_source_path(r).read_bytes() == before  # previous output untouched
    assert not list(two_quanta.forced_source_path(r).parent.glob(".*.tmp"))


def test_checksum_covers_every_byte_before_the_footer(tmp_path):
    schema = load_schema("truth")
    table = pa.table({c.name: pa.array([1, 2, 3], c.arrow_type) if pa.types.is_integer(c.arrow_type)
                      else pa.array([True, False, True]) if pa.types.is_boolean(c.arrow_type)
                      else pa.array([1.5, 2.5, 3.5], c.arrow_type) if pa.types.is_floating(c.arrow_type)
                      else pa.array(["r", "r", "r"], c.arrow_type) for c in schema.columns})
    path = write_parquet(table, tmp_path / "t.parquet", schema)
    assert verify_checksum(path) is True
    assert read_parquet(path, schema).equals(schema.conform(table, where="t"))
    footer_start = path.stat().st_size - 8 - pq.read_metadata(path).serialized_size
    for offset in (0, 4, footer_start // 2, footer_start - 1):  # magic, page header, data, last page byte
        data = bytearray((tmp_path / "t.parquet").read_bytes())
        copy = tmp_path / f"flip{offset}.parquet"
        data[offset] ^= 0x01
        copy.write_bytes(bytes(data))
        with pytest.raises(InputError, match=re.escape(str(copy))):
            verify_checksum(copy)
    plain = tmp_path / "plain.parquet"  # another writer: no recorded checksum, nothing to verify
    pq.write_table(pq.read_table(path).replace_schema_metadata({}), plain)
    assert verify_checksum(plain) is False
    assert issubclass(ChecksumError, InputError)
