"""Provenance of an output: config, code version and fingerprints of every input file."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

from forcedphot import __version__
from forcedphot.config import ForcedPhotConfig


def file_digest(path: str | Path) -> str:
    """Content hash of a file (blake2b, 128 bits)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def input_fingerprints(files: dict[str, str]) -> dict[str, str]:
    return {name: file_digest(path) for name, path in sorted(files.items())}


def make_provenance(*, data_id, config: ForcedPhotConfig, inputs: dict[str, str], schema_version: str,
                    extra: dict | None = None) -> dict:
    return {
        "data_id": {"tract": data_id.tract, "patch": data_id.patch, "band": data_id.band},
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "schema_version": schema_version,
        "code_version": __version__,
        "python": platform.python_version(),
        "inputs": inputs,  # no wall-clock time: identical inputs and config give identical bytes
        **(extra or {}),
    }


def is_up_to_date(stored: dict | None, *, config: ForcedPhotConfig, inputs: dict[str, str], schema_version: str) -> bool:
    """Same config, same input contents and same schema major version as the stored output."""
    if not stored:
        return False
    return (stored.get("config_fingerprint") == config.fingerprint()
            and stored.get("inputs") == inputs
            and str(stored.get("schema_version", "")).split(".")[0] == schema_version.split(".")[0])
