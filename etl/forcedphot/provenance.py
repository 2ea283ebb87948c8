"""Provenance of an output: config, code version and fingerprints of every input file."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import forcedphot
from forcedphot.config import ForcedPhotConfig


def file_digest(path: str | Path) -> str:
    """Content hash of a file (sha256: hardware-accelerated on current CPUs, ~3x blake2b here)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def recorded_fingerprint(path: str | Path) -> str | None:
    """A fingerprint of the whole file from the content digest its writer recorded in it, or None.

    Parquet files written by forcedphot carry a sha256 of every byte before their footer (the
    footer itself is hashed here); coadds carry a sha256 of their values and planes (their
    schema is hashed here). Both digests are verified when the file is read for measuring, so
    the fingerprint needs no second pass over the pixels (measured: ~0.5 s of a 4096x4096 quantum).
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            from forcedphot.io.parquet import META_CHECKSUM

            meta = pq.read_metadata(path)
            recorded = (meta.metadata or {}).get(META_CHECKSUM)
            if recorded is None:
                return None
            with open(path, "rb") as f:
                f.seek(-(8 + meta.serialized_size), 2)
                tail = f.read()
            return f"sha256:{recorded.decode()}:{hashlib.sha256(tail).hexdigest()}"
        if path.suffix == ".arrow":
            import pyarrow as pa

            from forcedphot.io.parquet import META_CHECKSUM  # io.coadd's key too; io.coadd imports astropy

            with pa.memory_map(str(path), "r") as source:
                schema = pa.ipc.open_file(source).schema
            recorded = (schema.metadata or {}).get(META_CHECKSUM)
            if recorded is None:
                return None
            return f"sha256:{recorded.decode()}:{hashlib.sha256(schema.serialize()).hexdigest()}"
    except (OSError, ValueError, ImportError):  # unreadable here: hash the bytes (the reader reports it)
        return None
    return None


def input_fingerprint(path: str | Path) -> str:
    """An input file's recorded content digest where its writer stored one, else a hash of its bytes."""
    return recorded_fingerprint(path) or file_digest(path)


def input_fingerprints(files: dict[str, str]) -> dict[str, str]:
    """Per input file: its recorded content digest where its writer stored one, else a hash of its bytes."""
    return {name: input_fingerprint(path) for name, path in sorted(files.items())}


UP_TO_DATE_KEYS = ("config_fingerprint", "inputs", "schema_version")  # what is_up_to_date reads of a provenance


def up_to_date_provenance(path: str | Path) -> dict | None:
    """The part of an output's stored provenance that decides whether it is up to date (None: none stored)."""
    from forcedphot.io.parquet import read_provenance

    stored = read_provenance(path)
    return {k: stored.get(k) for k in UP_TO_DATE_KEYS} if stored else None


class StatusMemo:
    """Input fingerprints and outputs' provenance remembered with their files' stat (:mod:`forcedphot.io.memo`),
    so ``forcedphot status`` reads (and imports pyarrow for) only the files that changed since it last looked."""

    def __init__(self, root: str | Path):
        from forcedphot.io.memo import StatMemo

        self._fingerprints = StatMemo(root, "fingerprints")
        self._provenance = StatMemo(root, "provenance")

    def input_fingerprints(self, files: dict[str, str]) -> dict[str, str]:
        """As :func:`input_fingerprints`."""
        return {name: self._fingerprints.get(path, input_fingerprint) for name, path in sorted(files.items())}

    def provenance(self, path: str | Path) -> dict | None:
        """As :func:`up_to_date_provenance`."""
        return self._provenance.get(path, up_to_date_provenance)

    def save(self) -> None:
        self._fingerprints.save()
        self._provenance.save()


def make_provenance(*, data_id, config: ForcedPhotConfig, inputs: dict[str, str], schema_version: str,
                    extra: dict | None = None) -> dict:
    return {
        "data_id": {"tract": data_id.tract, "patch": data_id.patch, "band": data_id.band},
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "schema_version": schema_version,
        "code_version": forcedphot.__version__,
        "python": platform.python_version(),
        "inputs": inputs,  # no wall-clock time: identical inputs and config give identical bytes
        **(extra or {}),
    }


def is_up_to_date(stored: dict | None, *, config: ForcedPhotConfig, inputs: dict[str, str], schema_version: str) -> bool:
    """Same config, same input contents and a schema major version the readers read as the current one: the
    same, or an older one declared in ``schemas/migrations/forced_source.yaml`` (an output of 1.x is read as 2.0
    by every reader, so an upgrade of forcedphot re-measures nothing; ``run --force`` rewrites it)."""
    if not stored:
        return False
    return (stored.get("config_fingerprint") == config.fingerprint()
            and stored.get("inputs") == inputs
            and readable_major(str(stored.get("schema_version", "")), schema_version))


def readable_major(stored_version: str, schema_version: str) -> bool:
    """Is an output of forced_source ``stored_version`` read as ``schema_version`` (same major, or migrated)?"""
    stored, current = stored_version.split(".")[0], schema_version.split(".")[0]
    if stored == current:
        return True
    from forcedphot.schema import migrated_majors  # only when they differ: status loads no YAML otherwise

    return stored.isdigit() and int(stored) in migrated_majors("forced_source")
