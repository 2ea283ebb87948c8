"""Input fingerprints: the content digest a file's writer recorded, without a second pass over its pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forcedphot.io.coadd import read_coadd, write_coadd
from forcedphot.plan import plan_quanta
from forcedphot.provenance import file_digest, input_fingerprints, recorded_fingerprint
from forcedphot.repository import Repository


def test_fingerprints_come_from_recorded_digests(tiny_repo_master):
    quantum = plan_quanta(Repository(tiny_repo_master))[0]
    files = quantum.input_files()
    prints = input_fingerprints(files)
    assert set(prints) == {"ref", "coadd", "footprints"}
    for name, path in files.items():
        assert prints[name].startswith("sha256:"), name  # forcedphot wrote every one of them
        assert prints[name] != file_digest(path)
    assert input_fingerprints(files) == prints  # deterministic


def test_changed_pixel_changes_the_coadd_fingerprint(tiny_repo_master, tmp_path):
    quantum = plan_quanta(Repository(tiny_repo_master))[0]
    coadd = read_coadd(quantum.coadd_file)
    image = np.array(coadd.image)
    same, changed = tmp_path / "same.arrow", tmp_path / "changed.arrow"
    write_coadd(dataclasses.replace(coadd, image=image), same)
    image[10, 10] += 1.0
    write_coadd(dataclasses.replace(coadd, image=image), changed)
    assert recorded_fingerprint(same) == recorded_fingerprint(quantum.coadd_file)
    assert recorded_fingerprint(changed) != recorded_fingerprint(same)


def test_parquet_footer_is_part_of_the_fingerprint(tiny_repo_master, tmp_path):
    quantum = plan_quanta(Repository(tiny_repo_master))[0]
    src = quantum.input_files()["ref"]
    data = bytearray(open(src, "rb").read())
    meta = pq.read_metadata(src)
    footer_start = len(data) - 8 - meta.serialized_size
    key = b"forcedphot.sha256"
    at = data.index(key, footer_start)  # flip a byte of the footer, outside the recorded digest's range
    other = tmp_path / "footer.parquet"
    data[at - 1] ^= 0x01
    other.write_bytes(bytes(data))
    assert recorded_fingerprint(other) != recorded_fingerprint(src)


def test_files_without_a_recorded_digest_are_hashed_whole(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    assert recorded_fingerprint(path) is None
    assert input_fingerprints({"ref": str(path)}) == {"ref": file_digest(path)}
    broken = tmp_path / "broken.arrow"
    broken.write_bytes(b"not an arrow file")
    assert input_fingerprints({"coadd": str(broken)}) == {"coadd": file_digest(broken)}


def test_coadd_and_parquet_files_record_their_digest_under_one_key():
    """recorded_fingerprint reads a coadd's digest with io.parquet's key (io.coadd imports astropy)."""
    from forcedphot.io import coadd, parquet

    assert coadd.META_CHECKSUM == parquet.META_CHECKSUM
