"""Bad input, each kind in one table row: the exit code and the one-line message naming the file or option.

Input files are corrupted in a one-quantum copy of the tiny survey (tract 0, patch 1, band r);
config errors come from a TOML file or the command line. The CLI runs in-process.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot.cli import main
from forcedphot.io.parquet import META_CHECKSUM, read_parquet, write_parquet
from forcedphot.repository import DataId, Repository
from forcedphot.schema import load_schema

DATA_ID = DataId(0, 1, "r")
SELECT = ["--tract", "0", "--patch", "1", "--band", "r"]


@pytest.fixture
def one_quantum(tiny_repo_master, tmp_path):
    """The files of quantum (0, 1, r) only: a private copy made in milliseconds."""
    src, dst = Repository(tiny_repo_master), Repository(tmp_path / "repo")
    dst.root.mkdir()
    shutil.copy(src.manifest_path, dst.manifest_path)
    for a, b in ((src.skymap_path(), dst.skymap_path()), (src.ref_path(0, 1), dst.ref_path(0, 1)),
                 (src.footprints_path(DATA_ID), dst.footprints_path(DATA_ID)),
                 (src.coadd_path(DATA_ID), dst.coadd_path(DATA_ID))):
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(a, b)
    return dst


def overwrite_bytes(path, n=256, where=0.5):
    """Overwrite ``n`` bytes inside the file's data (not its footer) with seeded random bytes."""
    data = bytearray(path.read_bytes())
    end = len(data)
    if data[-4:] == b"PAR1":  # a Parquet file: its data end where the footer (length in the 4 bytes before) starts
        end -= 8 + int.from_bytes(data[-8:-4], "little")
    start = int(end * where)
    assert start + n <= end
    data[start:start + n] = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def edit_ref(repo, edit):
    path = repo.ref_path(0, 1)
    table = pq.read_table(path)
    write_parquet(edit(table), path, load_schema("ref"))  # a writer that records a fresh checksum


def edit_footprints(repo, edit):
    path = repo.footprints_path(DATA_ID)
    table = read_parquet(path, load_schema("footprints"))
    write_parquet(edit(table), path, load_schema("footprints"))


def set_column(table, name, index, value):
    column = table.column(name).to_pylist()
    column[index] = value
    return table.set_column(table.column_names.index(name), name, pa.array(column, table.schema.field(name).type))


def duplicate_first_row(table):
    return pa.concat_tables([table, table.slice(0, 1)])


def nan_heavy_values(table):
    values = table.column("values").to_pylist()
    values[0] = [float("nan")] * len(values[0])
    return table.set_column(table.column_names.index("values"), "values",
                            pa.array(values, table.schema.field("values").type))


def strip_checksum_and_corrupt_pages(repo):
    """A file with page CRCs but no recorded sha256 (as another Parquet writer makes): the CRCs catch it."""
    path = repo.footprints_path(DATA_ID)
    table = pq.read_table(path)
    meta = {k: v for k, v in table.schema.metadata.items() if k != META_CHECKSUM}
    pq.write_table(table.replace_schema_metadata(meta), path, compression="zstd", write_page_checksum=True)
    assert META_CHECKSUM not in (pq.read_metadata(path).metadata or {})
    overwrite_bytes(path, n=64, where=0.3)


def make_config(text):
    def write(repo):
        path = repo.root / "bad.toml"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return write


def truncate(path):
    """Keep the first half of the file's bytes (a copy or download cut short)."""
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


# the start of an executable (as --config /bin/true): not UTF-8 text
BINARY = b"\x7fELF\x02\x01\x01\x00" + bytes(16) + b"\xd0\x8f\xff\xfe" * 64


FILE_CASES = {  # kind: (corrupt(repo), message pattern of the one FAILED line)
    "footprints bytes overwritten": (lambda r: overwrite_bytes(r.footprints_path(DATA_ID)),
                                     r"footprints\.parquet: content checksum mismatch"),
    "ref bytes overwritten": (lambda r: overwrite_bytes(r.ref_path(0, 1)), r"ref\.parquet: content checksum mismatch"),
    "coadd bytes overwritten": (lambda r: overwrite_bytes(r.coadd_path(DATA_ID)),
                                r"coadd\.arrow: content checksum mismatch"),
    "footprint page CRC": (strip_checksum_and_corrupt_pages, r"footprints\.parquet: corrupted Parquet pages"),
    "ref not Parquet": (lambda r: r.ref_path(0, 1).write_bytes(b"not parquet" * 100),
                        r"ref\.parquet: not a readable Parquet file"),
    "duplicate reference ids": (lambda r: edit_ref(r, duplicate_first_row),
                                r"ref\.parquet: 1 duplicate reference id\(s\) \[\d+\]"),
    "duplicate footprint ids": (lambda r: edit_footprints(r, duplicate_first_row),
                                r"footprints\.parquet: 1 duplicate footprint id\(s\) \[\d+\]"),
    "NaN coord_ra": (lambda r: edit_ref(r, lambda t: set_column(t, "coord_ra", 3, float("nan"))),
                     r"ref\.parquet: coord_ra is not finite for reference id\(s\) \[\d+\]"),
    "infinite centroid_y": (lambda r: edit_ref(r, lambda t: set_column(t, "centroid_y", 0, float("inf"))),
                            r"ref\.parquet: centroid_y is not finite for reference id\(s\) \[\d+\]"),
    "NaN heavy values": (lambda r: edit_footprints(r, nan_heavy_values),
                         r"footprints\.parquet: non-finite heavy footprint values on valid coadd pixels for id\(s\) \[\d+\]"),
    "spans outside bbox": (lambda r: edit_footprints(r, lambda t: set_column(t, "bbox_max_x", 0,
                                                                             t.column("bbox_min_x")[0].as_py())),
                           r"footprint spans outside their bounding box for ids \[\d+\]"),
    "reference without footprint": (lambda r: edit_footprints(r, lambda t: t.slice(1)),
                                    r"1 reference id\(s\) have no footprint: \d+"),
    "coadd missing": (lambda r: r.coadd_path(DATA_ID).unlink(), r"tract=0 patch=1 band=r: missing inputs: coadd"),
    "footprints truncated": (lambda r: truncate(r.footprints_path(DATA_ID)),
                             r"footprints\.parquet: not a readable Parquet file"),
    "ref truncated": (lambda r: truncate(r.ref_path(0, 1)), r"ref\.parquet: not a readable Parquet file"),
    "coadd truncated": (lambda r: truncate(r.coadd_path(DATA_ID)), r"coadd\.arrow: not a readable Arrow IPC coadd"),
}

CONFIG_CASES = {  # kind: (config file text or None, extra options, message pattern)
    "noise_replacement string": ('noise_replacement = "false"\n', [], r"bad\.toml: option noise_replacement = 'false': Input should be a valid boolean"),
    "aperture_radii string": ('aperture_radii = "36"\n', [], r"bad\.toml: option aperture_radii = '36': Input should be a valid tuple"),
    "radius not in schema": ("aperture_radii = [3, 5]\n", [], r"bad\.toml: option aperture_radii = \[3, 5\]: radii \[5\.0\] are not in the forced_source schema"),
    "chunk_size negative": ("chunk_size = -5\n", [], r"bad\.toml: option chunk_size = -5: Input should be greater than 0"),
    "chunk_size zero": ("chunk_size = 0\n", [], r"option chunk_size = 0: Input should be greater than 0"),
    "chunk_size float": ("chunk_size = 2.5\n", [], r"option chunk_size = 2\.5: Input should be a valid integer"),
    "max_sinc_radius string": ('max_sinc_radius = "x"\n', [], r"option max_sinc_radius = 'x': Input should be a valid number"),
    "max_sinc_radius above 12": ("max_sinc_radius = 20.0\n", [], r"option max_sinc_radius = 20\.0: Input should be less than or equal to 12"),
    "max_sinc_radius boolean": ("max_sinc_radius = true\n", [], r"option max_sinc_radius = True: Input should be a valid number"),
    "aperture_method unknown": ('aperture_method = "fast"\n', [], r"option aperture_method = 'fast': Input should be 'sinc', 'naive' or 'exact'"),
    "unknown option": ("aperture_radius = [3]\n", [], r"bad\.toml: unknown option\(s\) \['aperture_radius'\]"),
    "unknown plugin": ('plugins = ["PsfFlux", "Nope"]\n', [], r"option plugins = \['PsfFlux', 'Nope'\]: unknown plugin\(s\) \['Nope'\]"),
    "undeblended plugin": ('undeblended = ["GaussianFlux"]\n', [], r"option undeblended\[0\] = 'GaussianFlux': Input should be"),
    "noise_seed_multiplier zero": ("noise_seed_multiplier = 0\n", [], r"option noise_seed_multiplier = 0: Input should be greater than or equal to 1"),
    "noise_offset nan": ("noise_offset = nan\n", [], r"option noise_offset = nan: Input should be a finite number"),
    "footprint_dataset unknown": ('footprint_dataset = "deep"\n', [], r"option footprint_dataset = 'deep': Input should be 'heavy' or 'scarlet'"),
    "pixel flag plane unknown": ('pixel_flag_planes = ["FOO"]\n', [], r"option pixel_flag_planes = \['FOO'\]: planes \['FOO'\] have no pixelFlags columns"),
    "plugins a string": ('plugins = "PsfFlux"\n', [], r"option plugins = 'PsfFlux': Input should be a valid tuple"),
    "TOML syntax": ("chunk_size = = 3\n", [], r"bad\.toml: cannot read config \(not valid TOML: Invalid value"),
    "binary file": (BINARY, [], r"bad\.toml: cannot read config \(not UTF-8 text, so not a TOML file: byte 26 is 0xff\)"),
    "NUL byte": ("chunk_size = 4096\0\n", [], r"bad\.toml: cannot read config \(not valid TOML"),
    "not TOML": ("root:x:0:0:root:/root:/bin/bash\n", [], r"bad\.toml: cannot read config \(not valid TOML"),
    "too large": ("#" * (1 << 20) + "\nchunk_size = 5\n", [], r"bad\.toml: cannot read config \(larger than 1 MB"),
    "config is a folder": (None, ["--config", "."], r"^forcedphot: error: \.: cannot read config \(\[Errno 21\]"),
    "config file missing": (None, ["--config", "missing.toml"], r"missing\.toml: cannot read config \(\[Errno 2\]"),
    "--radii not numbers": (None, ["--radii", "3,abc"], r"command line: option --radii = '3,abc': expected comma-separated numbers"),
    "--radii not in schema": (None, ["--radii", "3,5"], r"command line: option aperture_radii = \[3\.0, 5\.0\]: radii \[5\.0\] are not in"),
}


def one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("kind", FILE_CASES)
def test_corrupt_input_fails_its_quantum_in_one_line(kind, one_quantum, capsys):
    corrupt, pattern = FILE_CASES[kind]
    corrupt(one_quantum)
    assert main(["run", "--repo", str(one_quantum.root), "-q", *SELECT]) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1, err
    assert re.search(pattern, failed[0]), failed[0]
    assert "Traceback" not in err
    assert not one_quantum.forced_source_path(DATA_ID).exists()  # nothing written under the final name


@pytest.mark.parametrize("kind", CONFIG_CASES)
def test_bad_config_exits_2_in_one_line_before_any_quantum(kind, one_quantum, capsys, monkeypatch):
    text, options, pattern = CONFIG_CASES[kind]
    monkeypatch.chdir(one_quantum.root)
    if text is not None:
        make_config(text)(one_quantum)
        options = ["--config", "bad.toml", *options]
    for command in ("run", "status", "config"):
        assert main([command, "--repo", str(one_quantum.root), *options] if command != "config" else
                    [command, *options]) == 2, command
        out = capsys.readouterr()
        line = one_line(out.err)
        assert line.startswith("forcedphot: error: ") and re.search(pattern, line), line
        assert "quanta measured" not in out.out
    assert not (one_quantum.root / "runs").exists()  # no run started, no lock taken


def test_table_has_25_kinds():
    assert len(FILE_CASES) + len(CONFIG_CASES) >= 25


def test_not_a_repository_exits_2(tmp_path, capsys):
    assert main(["run", "--repo", str(tmp_path / "nowhere"), "-q"]) == 2
    assert re.search(r"nowhere: not a forcedphot repository", one_line(capsys.readouterr().err))


def test_every_dataset_file_records_its_checksum(tiny_repo_master):
    parquet = sorted(tiny_repo_master.glob("*/**/*.parquet"))
    assert len(parquet) > 10
    for path in parquet:
        assert META_CHECKSUM in pq.read_metadata(path).metadata, path
    for path in sorted(tiny_repo_master.glob("coadd/**/coadd.arrow")):
        with pa.memory_map(str(path)) as source:
            assert META_CHECKSUM in pa.ipc.open_file(source).schema.metadata, path


def test_scarlet_model_data_truncated_fails_naming_the_file(one_quantum, tiny_repo_master, capsys):
    src = Repository(tiny_repo_master)
    for table in ("blends", "sources"):
        dst = one_quantum.scarlet_path(0, 1, table)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.scarlet_path(0, 1, table), dst)
    for table in ("blends", "sources"):
        truncate(one_quantum.scarlet_path(0, 1, table))
        assert main(["run", "--repo", str(one_quantum.root), "-q", "--footprints", "scarlet", *SELECT]) == 1
        err = capsys.readouterr().err
        failed = [line for line in err.splitlines() if line.startswith("FAILED ")]
        assert len(failed) == 1 and f"{table}.parquet: not a readable Parquet file" in failed[0], err
        shutil.copy(src.scarlet_path(0, 1, table), one_quantum.scarlet_path(0, 1, table))


@pytest.mark.parametrize("dataset", ["truth", "ref", "skymap", "forced_source"])
def test_a_truncated_file_read_by_sql_is_named(dataset, measured_tiny_repo, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(measured_tiny_repo, root)
    repo = Repository(root)
    path = {"truth": repo.truth_path(0, 2), "ref": repo.ref_path(0, 2), "skymap": repo.skymap_path(),
            "forced_source": repo.forced_source_path(DataId(0, 2, "i"))}[dataset]
    truncate(path)
    assert main(["sql", "--repo", str(root), f"SELECT count(*) FROM {dataset}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"forcedphot: error: {path}: not a readable Parquet file"), line


@pytest.mark.parametrize("command", [["simulate", "--repo", "sim", "--recipe", "bad.toml"],
                                     ["ingest", "fits", "--manifest", "bad.toml"]])
def test_a_binary_recipe_or_manifest_is_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_bytes(BINARY)
    assert main(command) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("forcedphot: error: bad.toml: cannot read ") and "not UTF-8 text" in line, line
    assert not (tmp_path / "sim").exists()
