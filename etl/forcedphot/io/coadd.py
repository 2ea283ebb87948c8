"""Coadd images as one-row Arrow IPC files, memory-mapped and read zero-copy into numpy.

One file per (tract, patch, band) holds image, mask and variance planes, the tract WCS
(as a FITS header), the PSF grid, the photometric calibration (nJy per image unit) and
the mask-plane registry. Columns follow ``schemas/coadd.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from astropy.io import fits
from astropy.wcs import WCS

from forcedphot.apcorr import ApCorrMap
from forcedphot.coadd_inputs import CoaddInputs
from forcedphot.errors import InputError
from forcedphot.flags import MaskPlanes
from forcedphot.io.atomic import atomic_path
from forcedphot.psf import PsfGrid
from forcedphot.schema import load_schema
from forcedphot.skymap import Box


META_CHECKSUM = b"forcedphot.sha256"  # of the row's values and planes (see _content_digest)
ROW_COLUMNS = ("tract", "patch", "band", "bbox_min_x", "bbox_min_y", "width", "height", "photo_calib", "wcs_header",
               "mask_planes", "psf_size", "psf_grid_x", "psf_grid_y", "ap_corr", "input_polygons")
PLANE_COLUMNS = ("image", "mask", "variance", "psf_images")


@dataclass
class Coadd:
    tract: int
    patch: int
    band: str
    bbox: Box  # tract-pixel box of the arrays
    image: np.ndarray  # (H, W) float32, calibrated by photo_calib
    mask: np.ndarray  # (H, W) int32 bit planes
    variance: np.ndarray  # (H, W) float32
    wcs: WCS  # sky <-> tract pixels
    psf: PsfGrid
    photo_calib: float  # nJy per image unit
    mask_planes: MaskPlanes
    ap_corr: ApCorrMap | None = None  # aperture-correction fields (optional)
    inputs: CoaddInputs | None = None  # input polygons (optional)

    def __post_init__(self):
        shape = (self.bbox.height, self.bbox.width)
        for name in ("image", "mask", "variance"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} shape {getattr(self, name).shape} != bbox {shape}")

    @property
    def data_id(self) -> str:
        return f"tract={self.tract} patch={self.patch} band={self.band}"


def _flat(a: np.ndarray, dtype) -> pa.Array:
    flat = np.ascontiguousarray(a, dtype=dtype).ravel()
    return pa.ListArray.from_arrays(pa.array([0, flat.size], pa.int32()), pa.array(flat))


def write_coadd(coadd: Coadd, path: str | Path) -> Path:
    schema = load_schema("coadd")
    header = coadd.wcs.to_header(relax=True).tostring(sep="\n")
    cols = {
        "tract": [coadd.tract], "patch": [coadd.patch], "band": [coadd.band],
        "bbox_min_x": [coadd.bbox.min_x], "bbox_min_y": [coadd.bbox.min_y],
        "width": [coadd.bbox.width], "height": [coadd.bbox.height],
        "photo_calib": [float(coadd.photo_calib)],
        "wcs_header": [header],
        "mask_planes": [json.dumps(coadd.mask_planes.to_json())],
        "psf_size": [coadd.psf.size],
        "psf_grid_x": [coadd.psf.x.tolist()], "psf_grid_y": [coadd.psf.y.tolist()],
        "ap_corr": [coadd.ap_corr.to_json() if coadd.ap_corr else None],
        "input_polygons": [coadd.inputs.to_json() if coadd.inputs else None],
    }
    table = pa.table({k: pa.array(v, type=pa.string() if k in ("ap_corr", "input_polygons") else None)
                      for k, v in cols.items()})
    for name, arr, dtype in (("image", coadd.image, np.float32), ("mask", coadd.mask, np.int32),
                             ("variance", coadd.variance, np.float32), ("psf_images", coadd.psf.images, np.float32)):
        table = table.append_column(name, _flat(arr, dtype))
    table = schema.conform(table, where=str(path))
    meta = dict(table.schema.metadata or {})
    meta[META_CHECKSUM] = _content_digest(_row(table), {n: _values(table, n) for n in PLANE_COLUMNS}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return Path(path)


def _values(table: pa.Table, name: str) -> np.ndarray:
    """Zero-copy numpy view of a one-row list column's values."""
    chunk = table.column(name).chunk(0)
    return chunk.values.to_numpy(zero_copy_only=True)


def _row(table: pa.Table) -> dict:
    # optional columns were added in minor versions: absent in older files
    return {k: table.column(k)[0].as_py() if k in table.column_names else None for k in ROW_COLUMNS}


def _content_digest(row: dict, planes: dict) -> str:
    """sha256 of the row's values and the plane bytes: stored in the file's schema metadata, so it
    moves with the file in the atomic rename (an Arrow IPC file cannot carry a digest of its own bytes)."""
    digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode())
    for name in PLANE_COLUMNS:
        digest.update(memoryview(np.ascontiguousarray(planes[name])).cast("B"))
    return digest.hexdigest()


_IN_MEMORY: dict[str, pa.Buffer] = {}  # name -> an object store's whole object (see coadds_in_memory)


@contextmanager
def coadds_in_memory(buffers: dict[str, pa.Buffer]):
    """While open, :func:`read_coadd` of one of these names (an ``s3://`` URI) reads its buffer, not a file:
    a coadd on an object store is fetched whole in one GET (:mod:`forcedphot.s3repo`) and read zero-copy from
    memory, with no memory map and no local copy."""
    _IN_MEMORY.update(buffers)
    try:
        yield
    finally:
        for name in buffers:
            _IN_MEMORY.pop(name, None)


def read_coadd(path: str | Path) -> Coadd:
    """Memory-map a coadd; image, mask and variance are read-only views into the file (or into the buffer of
    an object fetched whole, :func:`coadds_in_memory`). Its content checksum is verified first."""
    return open_coadd(path, background=False)[0]


class CoaddVerification:
    """The content checksum of an open coadd, computed in a thread while the caller goes on (hashlib
    releases the GIL while it hashes the ~200 MB of planes, ~0.11 s on the bench quantum).
    :meth:`wait` raises :class:`ChecksumError` on a mismatch; the caller must call it before it
    trusts (or writes anything measured from) the planes."""

    def __init__(self, path, recorded: bytes | None, row: dict, planes: dict, *, background: bool = True):
        self.path, self._recorded, self._row, self._planes = path, recorded, row, planes
        self._ok: bool | None = None
        self._error: BaseException | None = None
        self._thread = None
        if recorded is None:
            self._ok = True
        elif background:
            import threading

            self._thread = threading.Thread(target=self._run, name="coadd-checksum", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._ok = self._recorded.decode() == _content_digest(self._row, self._planes)
        except BaseException as exc:  # handed to wait()
            self._error = exc
        finally:
            self._planes = None

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        if not self._ok:
            from forcedphot.io.parquet import ChecksumError

            raise ChecksumError(f"{self.path}: content checksum mismatch (the file was corrupted or modified after "
                                "it was written); re-create it with the tool that wrote it")


def open_coadd(path: str | Path, *, background: bool = True) -> tuple[Coadd, CoaddVerification]:
    """:func:`read_coadd` with its checksum verified in a thread (``background``): the caller calls
    ``verification.wait()`` before it uses what it measured, and also when it fails for another
    reason (a corrupted file is the error to report). A structural error of the file is raised
    here after the checksum, as :func:`read_coadd` does."""
    buffer = _IN_MEMORY.get(str(path))
    if buffer is None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: coadd file not found")
    schema = load_schema("coadd")
    try:
        source = pa.BufferReader(buffer) if buffer is not None else pa.memory_map(str(path), "r")
        reader = pa.ipc.open_file(source)
        schema.check_metadata(reader.schema.metadata, where=str(path))
        table = reader.read_all()
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path}: not a readable Arrow IPC coadd ({exc})") from exc
    if table.num_rows != 1:
        raise InputError(f"{path}: expected one row, found {table.num_rows}")
    row = _row(table)
    recorded = (reader.schema.metadata or {}).get(META_CHECKSUM)
    verification = CoaddVerification(path, recorded, row, {n: _values(table, n) for n in PLANE_COLUMNS},
                                     background=background)
    if not background:
        verification.wait()
    try:
        coadd = _coadd(path, table, row)
    except BaseException:
        verification.wait()  # a corrupted file: its checksum is the error to report
        raise
    return coadd, verification


def _coadd(path, table: pa.Table, row: dict) -> Coadd:
    h, w = row["height"], row["width"]
    bbox = Box(row["bbox_min_x"], row["bbox_min_y"], row["bbox_min_x"] + w - 1, row["bbox_min_y"] + h - 1)
    planes = {n: _values(table, n) for n in ("image", "mask", "variance")}
    for n, a in planes.items():
        if a.size != h * w:
            raise InputError(f"{path}: {n} has {a.size} pixels, expected {h}x{w}")
    k = row["psf_size"]
    gx, gy = row["psf_grid_x"], row["psf_grid_y"]
    psf_images = _values(table, "psf_images")
    if psf_images.size != len(gx) * len(gy) * k * k:
        raise InputError(f"{path}: psf_images has {psf_images.size} values, expected {len(gy)}x{len(gx)}x{k}x{k}")
    wcs = WCS(fits.Header.fromstring(row["wcs_header"], sep="\n"))
    return Coadd(
        tract=row["tract"], patch=row["patch"], band=row["band"], bbox=bbox,
        image=planes["image"].reshape(h, w), mask=planes["mask"].reshape(h, w),
        variance=planes["variance"].reshape(h, w), wcs=wcs,
        psf=PsfGrid(gx, gy, psf_images.reshape(len(gy), len(gx), k, k)),
        photo_calib=row["photo_calib"], mask_planes=MaskPlanes.from_json(json.loads(row["mask_planes"])),
        ap_corr=ApCorrMap.from_json(row["ap_corr"]), inputs=CoaddInputs.from_json(row["input_polygons"]),
    )
