"""TOML input files (run configs, simulation recipes, ingest manifests), read in one checked step."""

from __future__ import annotations

import tomllib
from pathlib import Path

from forcedphot.errors import InputError

MAX_TOML_BYTES = 1 << 20  # a config, recipe or manifest is a few kB; more is not one (e.g. /dev/zero)


def read_toml(path: Path, what: str, *, error: type[InputError] = InputError) -> dict:
    """The keys of a TOML file (a config, recipe or manifest: ``what``); any file that is not one
    (unreadable, binary, not UTF-8 text, not TOML, too large) raises ``error`` (an :class:`InputError`)
    in one line naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOML_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from exc
    if len(data) > MAX_TOML_BYTES:
        raise error(f"{path}: cannot read {what} (larger than {MAX_TOML_BYTES >> 20} MB: not a TOML file)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: cannot read {what} (not UTF-8 text, so not a TOML file: byte {exc.start} "
                    f"is 0x{data[exc.start]:02x})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: cannot read {what} (not valid TOML: {' '.join(str(exc).split())})") from None
