"""Planning in SQL: which quanta exist, which are ready, and their input files."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from forcedphot import exits
from forcedphot.errors import InputError
from forcedphot.repository import DataId, Repository
from forcedphot.resources import read_sql


@dataclass(frozen=True)
class Quantum:
    data_id: DataId
    ref_file: str | None
    footprints_file: str | None
    coadd_file: str | None
    missing: tuple[str, ...]
    scarlet_file: str | None = None  # blends.parquet of the patch's scarlet-style model data

    @property
    def ready(self) -> bool:
        return not self.missing

    def input_files(self, footprint_dataset: str = "heavy") -> dict[str, str]:
        """The files this quantum reads (their contents decide whether its output is up to date)."""
        files = {"ref": self.ref_file, "coadd": self.coadd_file}
        if footprint_dataset == "scarlet":
            files["scarlet_blends"] = self.scarlet_file
            files["scarlet_sources"] = str(Path(self.scarlet_file).with_name("sources.parquet"))
        else:
            files["footprints"] = self.footprints_file
        return files


def plan_quanta(repo: Repository, *, tracts=None, patches=None, bands=None,
                footprint_dataset: str = "heavy", memo: bool = False) -> list[Quantum]:
    """All quanta of the repository (optionally selected), ready or not, in data-ID order.

    With ``footprint_dataset="scarlet"`` a quantum needs the patch's model data instead of the
    band's heavy footprints. ``memo`` (``forcedphot status``): reuse the rows the plan's SQL gave last time
    when the input files' names and the skymap's stat are what they were (:func:`plan_rows`).
    """
    repo.check()
    if not repo.skymap_path().exists():
        raise InputError(f"{repo.skymap_path()}: skymap not found")
    rows = plan_rows(repo, memo=memo)
    out = []
    for tract, patch, band, ref, fp, coadd, scarlet, missing in rows:
        if tracts and tract not in tracts or patches and patch not in patches or bands and band not in bands:
            continue
        if footprint_dataset == "scarlet":
            missing = [m for m in missing if m != "footprints"] + ([] if scarlet else ["scarlet_models"])
        out.append(Quantum(DataId(int(tract), int(patch), band), ref, fp, coadd, tuple(missing), scarlet))
    return out


PLAN_INPUTS = ("coadd", "footprints", "ref", "scarlet_models")  # the folders whose files the plan's SQL globs
PLAN_MEMO = Path("runs") / "verified" / "memo+plan.json"


def _sql_rows(repo: Repository) -> list[tuple]:
    import duckdb  # not imported by a status whose plan is remembered

    con = duckdb.connect()
    exits.interrupt_with_signal(con)  # Ctrl-C stops its query
    try:
        return [tuple(r) for r in con.execute(read_sql("plan_quanta"), {
            "coadd_glob": str(repo.dataset_dir("coadd") / "tract=*" / "patch=*" / "band=*" / "coadd.arrow"),
            "footprints_glob": str(repo.dataset_dir("footprints") / "tract=*" / "patch=*" / "band=*" / "footprints.parquet"),
            "ref_glob": str(repo.dataset_dir("ref") / "tract=*" / "patch=*" / "ref.parquet"),
            "scarlet_glob": str(repo.dataset_dir("scarlet_models") / "tract=*" / "patch=*" / "blends.parquet"),
            "skymap_file": str(repo.skymap_path()),
        }).fetchall()]
    except duckdb.Error as exc:  # e.g. a truncated skymap or ref file
        raise InputError(f"{repo.root}: cannot plan quanta: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def plan_key(repo: Repository) -> dict | None:
    """What the plan's SQL reads: the names of every file under the input folders (its globs' matches are
    among them), the skymap's stat (its tracts and patches) and the root the paths are written from; None
    when the skymap changed too recently for its stat to tell (:func:`forcedphot.io.verified.racy`)."""
    from forcedphot.io.verified import racy, stat_key

    checked_ns = time.time_ns()
    skymap = list(stat_key(os.stat(repo.skymap_path())))
    if racy(skymap[2], checked_ns):
        return None
    files = []
    for folder in PLAN_INPUTS:
        for dirpath, dirnames, filenames in os.walk(repo.dataset_dir(folder)):
            dirnames.sort()
            files += [os.path.join(dirpath, name) for name in sorted(filenames)]
    return {"root": str(repo.root), "skymap": skymap, "files": files}


def plan_rows(repo: Repository, *, memo: bool = False) -> list[tuple]:
    """The rows of sql/plan_quanta.sql for the repository. With ``memo`` the rows it gave are kept in
    ``runs/verified/memo+plan.json`` with :func:`plan_key`, and given again while the key is the same (no
    DuckDB: ``forcedphot status``); a lost or unreadable memo only costs running the SQL."""
    if not memo:
        return _sql_rows(repo)
    key = plan_key(repo)
    path = repo.root / PLAN_MEMO
    if key is not None:
        try:
            doc = json.loads(path.read_bytes())
            if isinstance(doc, dict) and doc.get("key") == key and isinstance(doc.get("rows"), list):
                return [tuple(r) for r in doc["rows"]]
        except (OSError, ValueError):
            pass
    rows = _sql_rows(repo)
    if key is not None and plan_key(repo) == key:  # nothing changed while it ran
        from forcedphot.io.atomic import atomic_path

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"key": key, "rows": rows}))
        except OSError:  # a read-only repository: nothing kept
            pass
    return rows
