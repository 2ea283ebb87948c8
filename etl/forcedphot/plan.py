"""Planning in SQL: which quanta exist, which are ready, and their input files."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

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

    @property
    def ready(self) -> bool:
        return not self.missing


def plan_quanta(repo: Repository, *, tracts=None, patches=None, bands=None) -> list[Quantum]:
    """All quanta of the repository (optionally selected), ready or not, in data-ID order."""
    repo.check()
    if not repo.skymap_path().exists():
        raise InputError(f"{repo.skymap_path()}: skymap not found")
    con = duckdb.connect()
    try:
        rows = con.execute(read_sql("plan_quanta"), {
            "coadd_glob": str(repo.dataset_dir("coadd") / "tract=*" / "patch=*" / "band=*" / "coadd.arrow"),
            "footprints_glob": str(repo.dataset_dir("footprints") / "tract=*" / "patch=*" / "band=*" / "footprints.parquet"),
            "ref_glob": str(repo.dataset_dir("ref") / "tract=*" / "patch=*" / "ref.parquet"),
            "skymap_file": str(repo.skymap_path()),
        }).fetchall()
    finally:
        con.close()
    out = []
    for tract, patch, band, ref, fp, coadd, missing in rows:
        if tracts and tract not in tracts or patches and patch not in patches or bands and band not in bands:
            continue
        out.append(Quantum(DataId(int(tract), int(patch), band), ref, fp, coadd, tuple(missing)))
    return out
