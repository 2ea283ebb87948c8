"""Write a repository's inputs (``simulate``, ``ingest``): a new repository whole, an existing one file by file.

The inputs are assembled in a staging folder next to the repository. A new repository (or an
empty folder) is that folder renamed into place. An existing repository keeps its outputs
(``forced_source/``) and run history (``runs/``): only the input files whose bytes differ are
moved in, one atomic rename each; input files the new inputs lack are removed; ``repository.json``
comes last. Outputs whose inputs changed are then stale by the runner's input fingerprints, and
outputs of quanta that no longer exist are removed by the next run; identical inputs leave every
output up to date.

While files are being replaced, ``repository.json`` says so (``updating``) and every reader
refuses the repository with one line until the command is run again, which completes the
update: a killed update never leaves a mix of old and new inputs that a run would measure.

A folder is updated only if everything in it is part of the repository layout (see
:mod:`forcedphot.repository`); anything else (a user's file, a nested repository) is refused
with one line, and nothing is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from forcedphot.errors import ForcedPhotError, InputError
from forcedphot.io.atomic import _fsync_dir, atomic_dir, atomic_path, is_temp_name, sweep_temp, temp_path_for
from forcedphot.io.targets import check_target, first_foreign
from forcedphot.repository import REPO_FORMAT, Repository

MANIFEST = "repository.json"
INPUT_ENTRIES = (MANIFEST, "skymap", "ref", "truth", "footprints", "scarlet_models", "coadd", "ingest")
KEPT_ENTRIES = ("forced_source", "runs")  # written by `run`: kept across an update of the inputs

# every file an input writer puts under INPUT_ENTRIES' folders, relative to the repository root
_INPUT_FILE = re.compile(r"""^(?:
      skymap/skymap\.parquet
    | (?P<d>ref|truth)/tract=\d+/patch=\d+/(?P=d)\.parquet
    | footprints/tract=\d+/patch=\d+/band=[^/]+/footprints\.parquet
    | coadd/tract=\d+/patch=\d+/band=[^/]+/coadd\.arrow
    | scarlet_models/tract=\d+/patch=\d+/(?:blends|sources)\.parquet
    | ingest/psf_[^/]+\.fits
)$""", re.X)
_CHUNK = 1 << 20


@dataclass
class InputsUpdate:
    """What writing the inputs did: a new repository, or the files replaced and removed in an existing one."""

    root: Path
    staging: Path | None = None  # where the writer puts the new inputs (inside the ``with`` only)
    created: bool = True
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def describe(self) -> str:
        """'' for a new repository, else one clause on what changed and what was kept."""
        if self.created:
            return ""
        if not (self.replaced or self.removed):
            return f"; its {self.unchanged} input files are unchanged: outputs and run history kept"
        return (f"; {len(self.replaced)} input files replaced, {len(self.removed)} removed, {self.unchanged} "
                "unchanged: outputs and run history kept, `forcedphot run` re-measures the quanta whose inputs "
                "changed")


def foreign_entries(root: Path) -> list[str]:
    """Paths under ``root`` (relative) that are not part of a repository's layout, or that it cannot update.

    The top level may hold the layout's entries only; the input datasets only the files their
    writers write. ``forced_source/`` and ``runs/`` are kept as they are and not looked into.
    Temporary files of forcedphot's writers are part of the layout.
    """
    out = []
    for entry in sorted(root.iterdir()):
        name = entry.name
        if is_temp_name(name) or name in KEPT_ENTRIES:
            continue
        if name not in INPUT_ENTRIES:
            out.append(name)
        elif name == MANIFEST:
            if entry.is_symlink() or not entry.is_file():
                out.append(name)
        elif entry.is_symlink() or not entry.is_dir():  # an update writes no file through a link
            out.append(name)
        else:
            out += [r for r in _walk(root, entry) if r.endswith("/") or not _INPUT_FILE.match(r)]
    return out


def _walk(root: Path, top: Path):
    """Relative paths of the files under ``top`` (and of linked folders, ending in '/'), temporary names skipped."""
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                yield (here / d).relative_to(root).as_posix() + "/"
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink() and not is_temp_name(d))
        for f in sorted(filenames):
            if not is_temp_name(f):
                yield (here / f).relative_to(root).as_posix()


def _input_files(root: Path) -> list[str]:
    """The input files of a repository (relative), manifest included."""
    files = [MANIFEST] if (root / MANIFEST).is_file() else []
    for name in INPUT_ENTRIES[1:]:
        if (root / name).is_dir():
            files += [r for r in _walk(root, root / name) if _INPUT_FILE.match(r)]
    return files


def not_a_repository(root: Path) -> str | None:
    """Why a non-empty folder is not a repository whose inputs forcedphot may rewrite, or None."""
    if not (root / MANIFEST).is_file():
        return f"not an empty folder or a forcedphot repository (no {MANIFEST})"
    return first_foreign(foreign_entries(root), what="forcedphot")


def check_inputs_target(root: str | Path, *, overwrite: bool, exists: str) -> bool:
    """Refuse an existing ``root`` without ``overwrite``, and any folder with something forcedphot did not write.

    Returns whether ``root`` is an existing repository (its inputs are then updated in place).
    """
    root = Path(root)
    check_target(root, overwrite=overwrite, foreign=not_a_repository, exists=exists)
    return Repository(root).exists()


@contextmanager
def writing_inputs(root: str | Path, *, overwrite: bool, command: str,
                   exists: str = "repository exists; pass --overwrite to replace its inputs"):
    """Yield an :class:`InputsUpdate` whose ``staging`` folder the caller fills with a whole repository's inputs.

    On success they become ``root``'s inputs (see the module's docstring); on any exception
    ``root`` is left as it was. ``command`` (e.g. "forcedphot simulate") names what to run again
    in the one line readers give while an interrupted update is incomplete.
    """
    root = Path(root)
    update = InputsUpdate(root)
    if not check_inputs_target(root, overwrite=overwrite, exists=exists):
        with atomic_dir(root) as tmp:
            update.staging = tmp
            yield update
        update.staging = None
        return
    update.created = False
    sweep_temp(root.parent, prefix=f".{root.name}.")
    staging = temp_path_for(root, "tmpdir")
    staging.mkdir()
    try:
        update.staging = staging
        yield update
        if not (staging / MANIFEST).is_file():
            raise InputError(f"{root}: the new inputs have no {MANIFEST}; nothing replaced")
        _apply(root, staging, update, command)
    finally:
        update.staging = None
        shutil.rmtree(staging, ignore_errors=True)


def _apply(root: Path, staging: Path, update: InputsUpdate, command: str) -> None:
    """Move the staged inputs that differ into ``root``, remove those it lacks; the manifest last."""
    reason = not_a_repository(root)  # again: the folder may have changed while the inputs were written
    if reason:
        raise InputError(f"{root}: {reason}; refusing to overwrite it")
    for name in INPUT_ENTRIES[1:]:
        sweep_temp(root / name, recursive=True)
    new = [r for r in _walk(staging, staging) if r != MANIFEST]
    unknown = [r for r in new if not _INPUT_FILE.match(r)]
    if unknown:  # a writer and the layout out of step: the next update would refuse the repository
        raise ForcedPhotError(f"{root}: the new inputs hold {unknown[0]}, which is not part of the repository "
                              "layout (forcedphot.repository_inputs); nothing replaced")
    old = set(_input_files(root)) - {MANIFEST}
    update.replaced = [r for r in new if not _same_bytes(staging / r, root / r)]
    update.removed = sorted(old - set(new))
    update.unchanged = len(new) - len(update.replaced)
    if update.replaced or update.removed:
        _mark_updating(root, command)
        touched = set()
        for r in update.replaced:
            dst = root / r
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / r, dst)
            touched.add(dst.parent)
        for r in update.removed:
            (root / r).unlink(missing_ok=True)
            touched.add(_prune_empty((root / r).parent, root))
        for d in touched:
            if d.exists():
                _fsync_dir(d)
    if update.replaced or update.removed or not _same_bytes(staging / MANIFEST, root / MANIFEST):
        os.replace(staging / MANIFEST, root / MANIFEST)
        _fsync_dir(root)


def _mark_updating(root: Path, command: str) -> None:
    """Rewrite the manifest to say the inputs are being replaced (readers refuse it until the update ends)."""
    with atomic_path(root / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"format": REPO_FORMAT, "description": "inputs being replaced",
                                   "updating": {"command": command,
                                                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}},
                                  indent=2))


def _prune_empty(folder: Path, root: Path) -> Path:
    """Remove ``folder`` and its parents below ``root`` while they are empty; returns the first one kept."""
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
    return folder


def _same_bytes(a: Path, b: Path) -> bool:
    """Do two files hold the same bytes? (False if ``b`` is missing or not a file)."""
    try:
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x = fa.read(_CHUNK)
                if x != fb.read(_CHUNK):
                    return False
                if not x:
                    return True
    except OSError:
        return False
