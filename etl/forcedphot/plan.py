"""Planning in SQL: which quanta exist, which are ready, and their input files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

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
                footprint_dataset: str = "heavy") -> list[Quantum]:
    """All quanta of the repository (optionally selected), ready or not, in data-ID order.

    With ``footprint_dataset="scarlet"`` a quantum needs the patch's model data instead of the
    band's heavy footprints.
    """
    repo.check()
    if not repo.skymap_path().exists():
        raise InputError(f"{repo.skymap_path()}: skymap not found")
    con = duckdb.connect()
    exits.interrupt_with_signal(con)  # Ctrl-C stops its query
    try:
        rows = con.execute(read_sql("plan_quanta"), {
            "coadd_glob": str(repo.dataset_dir("coadd") / "tract=*" / "patch=*" / "band=*" / "coadd.arrow"),
            "footprints_glob": str(repo.dataset_dir("footprints") / "tract=*" / "patch=*" / "band=*" / "footprints.parquet"),
            "ref_glob": str(repo.dataset_dir("ref") / "tract=*" / "patch=*" / "ref.parquet"),
            "scarlet_glob": str(repo.dataset_dir("scarlet_models") / "tract=*" / "patch=*" / "blends.parquet"),
            "skymap_file": str(repo.skymap_path()),
        }).fetchall()
    except duckdb.Error as exc:  # e.g. a truncated skymap or ref file
        raise InputError(f"{repo.root}: cannot plan quanta: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    out = []
    for tract, patch, band, ref, fp, coadd, scarlet, missing in rows:
        if tracts and tract not in tracts or patches and patch not in patches or bands and band not in bands:
            continue
        if footprint_dataset == "scarlet":
            missing = [m for m in missing if m != "footprints"] + ([] if scarlet else ["scarlet_models"])
        out.append(Quantum(DataId(int(tract), int(patch), band), ref, fp, coadd, tuple(missing), scarlet))
    return out
