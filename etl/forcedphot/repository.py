"""The data repository: one root folder; every path in the project is built here.

Layout (hive partitions, the keys are also stored as columns)::

    <root>/repository.json
    <root>/skymap/skymap.parquet
    <root>/ref/tract=T/patch=P/ref.parquet
    <root>/truth/tract=T/patch=P/truth.parquet            (simulated surveys)
    <root>/footprints/tract=T/patch=P/band=B/footprints.parquet
    <root>/scarlet_models/tract=T/patch=P/{blends,sources}.parquet   (deblender models, all bands)
    <root>/coadd/tract=T/patch=P/band=B/coadd.arrow
    <root>/forced_source/tract=T/patch=P/band=B/forced_source.parquet
    <root>/runs/last_run.json                            (last run: measured, skipped, failed quanta)
    <root>/runs/ledger/{run_start,run_end,quanta}/...    (append-only run history, see ledger.py)
    <root>/runs/locks/T-P-B.lock                         (a quantum's lock while a run decides or measures it)
    <root>/runs/locks/<run id>.cores                     (while a run of several processes lasts: its quanta measuring now)
    <root>/runs/verified/<dataset>+tract=T.json          (files whose checksums were verified, by stat; see io/verified.py)
    <root>/ingest/psf_<band>.fits                        (PSFs ingest estimated)

``simulate`` and ``ingest`` write the inputs (every entry but forced_source/ and runs/); into an
existing repository they replace only the input files that changed (:mod:`forcedphot.repository_inputs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forcedphot.errors import InputError
from forcedphot.io.atomic import atomic_path

if TYPE_CHECKING:
    from forcedphot.skymap import SkyMap
# the Parquet I/O, schemas and skymap (pyarrow, numpy) are imported where used: planning, `status` and a query
# that reads no dataset need only the paths (start-up time)

REPO_FORMAT = 1
DATASETS = ("skymap", "ref", "truth", "footprints", "scarlet_models", "coadd", "forced_source")


@dataclass(frozen=True, order=True)
class DataId:
    """A quantum's data ID: (tract, patch, band)."""

    tract: int
    patch: int
    band: str

    def __str__(self) -> str:
        return f"tract={self.tract} patch={self.patch} band={self.band}"


class Repository:
    """The repository at ``root``: paths of every dataset, the skymap and ``repository.json``."""

    def __init__(self, root: str | Path):
        from forcedphot.io.store import refuse_uri_as_path

        refuse_uri_as_path(root)  # s3://... is forcedphot.s3repo.S3Repository; never a local folder "s3:/..."
        self.root = Path(root)

    # -- creation and identity -------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "repository.json"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def create(self, *, description: str = "", metadata: dict | None = None) -> "Repository":
        """Write repository.json; ``metadata`` (JSON-able, e.g. how ingest calibrated each band) is kept in it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps({"format": REPO_FORMAT, "description": description, **(metadata or {})},
                                      indent=2))
        return self

    def metadata(self) -> dict:
        """The contents of repository.json (format, description and what created the repository recorded)."""
        self.check()
        return json.loads(self.manifest_path.read_text())

    def check(self) -> None:
        if not self.exists():
            raise InputError(f"{self.root}: not a forcedphot repository (no repository.json); "
                             "create one with `forcedphot simulate` or `forcedphot ingest`")
        try:
            manifest = json.loads(self.manifest_path.read_text())
            fmt = manifest.get("format") if isinstance(manifest, dict) else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{self.manifest_path}: not a readable repository manifest ({exc})") from None
        if fmt != REPO_FORMAT:
            raise InputError(f"{self.manifest_path}: repository format {fmt}, this forcedphot reads {REPO_FORMAT}")
        updating = manifest.get("updating")
        if updating:  # see forcedphot.repository_inputs: a killed simulate or ingest into an existing repository
            command = updating.get("command", "the command") if isinstance(updating, dict) else "the command"
            raise InputError(f"{self.root}: `{command}` was interrupted while it replaced this repository's "
                             "inputs; run it again (with --overwrite) to complete them")

    # -- paths ------------------------------------------------------------------
    def dataset_dir(self, dataset: str) -> Path:
        if dataset not in DATASETS:
            raise KeyError(f"unknown dataset {dataset!r}; known: {DATASETS}")
        return self.root / dataset

    def skymap_path(self) -> Path:
        return self.dataset_dir("skymap") / "skymap.parquet"

    def patch_path(self, dataset: str, tract: int, patch: int) -> Path:
        return self.dataset_dir(dataset) / f"tract={tract}" / f"patch={patch}" / f"{dataset}.parquet"

    def quantum_path(self, dataset: str, data_id: DataId) -> Path:
        ext = "arrow" if dataset == "coadd" else "parquet"
        return (self.dataset_dir(dataset) / f"tract={data_id.tract}" / f"patch={data_id.patch}"
                / f"band={data_id.band}" / f"{dataset}.{ext}")

    def ref_path(self, tract: int, patch: int) -> Path:
        return self.patch_path("ref", tract, patch)

    def truth_path(self, tract: int, patch: int) -> Path:
        return self.patch_path("truth", tract, patch)

    def scarlet_path(self, tract: int, patch: int, table: str) -> Path:
        """``blends`` or ``sources`` table of a patch's scarlet-style model data."""
        return self.dataset_dir("scarlet_models") / f"tract={tract}" / f"patch={patch}" / f"{table}.parquet"

    def footprints_path(self, data_id: DataId) -> Path:
        return self.quantum_path("footprints", data_id)

    def coadd_path(self, data_id: DataId) -> Path:
        return self.quantum_path("coadd", data_id)

    def forced_source_path(self, data_id: DataId) -> Path:
        return self.quantum_path("forced_source", data_id)

    def glob(self, dataset: str) -> str:
        """A glob over every file of a dataset (for DuckDB and Polars)."""
        ext = "arrow" if dataset == "coadd" else "parquet"
        return str(self.dataset_dir(dataset) / "**" / f"*.{ext}")

    def lock_path(self, data_id: DataId) -> Path:
        return self.root / "runs" / "locks" / f"{data_id.tract}-{data_id.patch}-{data_id.band}.lock"

    def core_share_path(self, run_id: str) -> Path:
        """The count of a run's quanta measuring now (:class:`forcedphot.threads.CoreShare`)."""
        return self.root / "runs" / "locks" / f"{run_id}.cores"

    # -- skymap -----------------------------------------------------------------
    def write_skymap(self, skymap: SkyMap) -> None:
        from forcedphot.io.parquet import write_parquet
        from forcedphot.schema import load_schema

        write_parquet(skymap.to_table(), self.skymap_path(), load_schema("skymap"))

    def read_skymap(self) -> SkyMap:
        from forcedphot.io.parquet import read_parquet
        from forcedphot.schema import load_schema
        from forcedphot.skymap import SkyMap

        return SkyMap.from_table(read_parquet(self.skymap_path(), load_schema("skymap")))
