"""Tract/patch geometry: a WCS per tract, patches with inner and outer (overlap) boxes.

A tract's WCS is a TAN projection built from its centre and pixel scale (simulated
surveys), or, when ``wcs_header`` is set, that FITS header verbatim (ingested images, so
the stored geometry is the image's own WCS, distortions included).

Pixel convention (as afw): pixel centres at integers, 0-based, in the tract frame.
Boxes are inclusive ``(min_x, min_y, max_x, max_y)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from astropy.wcs import WCS


@dataclass(frozen=True)
class Box:
    min_x: int
    min_y: int
    max_x: int
    max_y: int

    @property
    def width(self) -> int:
        return self.max_x - self.min_x + 1

    @property
    def height(self) -> int:
        return self.max_y - self.min_y + 1

    def grow(self, n: int) -> "Box":
        return Box(self.min_x - n, self.min_y - n, self.max_x + n, self.max_y + n)

    def contains(self, x, y):
        """Vectorised: is the point inside the box's continuous extent (pixel edges at +-0.5)?"""
        x = np.asarray(x)
        y = np.asarray(y)
        return (x >= self.min_x - 0.5) & (x < self.max_x + 0.5) & (y >= self.min_y - 0.5) & (y < self.max_y + 0.5)


@dataclass(frozen=True)
class TractInfo:
    tract: int
    ra: float  # tract centre, deg
    dec: float
    pixel_scale: float  # arcsec/pixel
    patch_inner: int  # inner patch size, pixels
    patch_border: int  # overlap border, pixels
    n_patch_x: int
    n_patch_y: int
    wcs_header: str | None = None  # FITS WCS header (newline-separated cards); None: TAN from the fields above

    @property
    def width(self) -> int:
        return self.patch_inner * self.n_patch_x

    @property
    def height(self) -> int:
        return self.patch_inner * self.n_patch_y

    @cached_property
    def wcs(self) -> WCS:
        from astropy.io import fits  # here, not at import: `forcedphot status` and `sql` never need it
        from astropy.wcs import WCS

        if self.wcs_header:
            return WCS(fits.Header.fromstring(self.wcs_header, sep="\n"))
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [self.ra, self.dec]
        # tract centre sits at ((W-1)/2, (H-1)/2) in 0-based pixels; FITS CRPIX is 1-based
        w.wcs.crpix = [(self.width - 1) / 2 + 1, (self.height - 1) / 2 + 1]
        s = self.pixel_scale / 3600.0
        w.wcs.cd = [[-s, 0.0], [0.0, s]]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.radesys = "ICRS"
        return w

    @property
    def n_patches(self) -> int:
        return self.n_patch_x * self.n_patch_y

    def patch(self, index: int) -> "PatchInfo":
        if not 0 <= index < self.n_patches:
            raise KeyError(f"tract {self.tract} has no patch {index} (0..{self.n_patches - 1})")
        px, py = index % self.n_patch_x, index // self.n_patch_x
        inner = Box(px * self.patch_inner, py * self.patch_inner,
                    (px + 1) * self.patch_inner - 1, (py + 1) * self.patch_inner - 1)
        return PatchInfo(self.tract, index, px, py, inner, inner.grow(self.patch_border))

    def patches(self) -> list["PatchInfo"]:
        return [self.patch(i) for i in range(self.n_patches)]

    def sky_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised ICRS (deg) -> tract pixel (0-based centres), distortions (SIP) included."""
        x, y = self.wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
        return x, y

    def pixel_to_sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        ra, dec = self.wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
        return ra, dec


@dataclass(frozen=True)
class PatchInfo:
    tract: int
    patch: int
    patch_x: int
    patch_y: int
    inner: Box
    outer: Box


@dataclass(frozen=True)
class SkyMap:
    """An explicit list of tracts (the simulated survey and FITS ingest both build one)."""

    name: str
    tracts: tuple[TractInfo, ...]

    def __getitem__(self, tract: int) -> TractInfo:
        for t in self.tracts:
            if t.tract == tract:
                return t
        raise KeyError(f"skymap {self.name!r} has no tract {tract}")

    @property
    def n_tracts(self) -> int:
        return max(t.tract for t in self.tracts) + 1

    @property
    def n_patches(self) -> int:
        """Patches per tract for id packing (max over tracts, as Rubin's patch_nx_max*patch_ny_max)."""
        return max(t.n_patches for t in self.tracts)

    def to_table(self) -> pa.Table:
        """One row per patch, with its tract's geometry repeated (easy to query with SQL)."""
        rows = []
        for t in self.tracts:
            for p in t.patches():
                row = {"skymap": self.name, **asdict(t), "patch": p.patch, "patch_x": p.patch_x, "patch_y": p.patch_y}
                for kind, box in (("inner", p.inner), ("outer", p.outer)):
                    for k, v in asdict(box).items():
                        row[f"{kind}_{k}"] = v
                rows.append(row)
        return pa.Table.from_pylist(rows)

    @classmethod
    def from_table(cls, table: pa.Table) -> "SkyMap":
        rows = table.to_pylist()
        if not rows:
            raise ValueError("empty skymap table")
        fields = TractInfo.__dataclass_fields__
        tracts = {}
        for r in rows:
            # r.get: columns added in minor versions (wcs_header, 1.1.0) are absent from older files
            tracts.setdefault(r["tract"], TractInfo(**{k: r.get(k) for k in fields}))
        return cls(rows[0]["skymap"], tuple(tracts[k] for k in sorted(tracts)))
