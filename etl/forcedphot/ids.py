"""Object id packing, as Rubin's SkyMapIdGenerator: ((release*2^B + tract*N_patch + patch) << C) | counter.

B = bit_length(N_tract*N_patch - 1), 6 release bits, C = 63 - 6 - B counter bits.
The band is not packed (same as Rubin's default), so an object has one id in all bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RELEASE_BITS = 6


@dataclass(frozen=True)
class IdPacker:
    n_tracts: int
    n_patches: int  # patches per tract (patch_nx_max * patch_ny_max)
    release: int = 0

    @property
    def data_bits(self) -> int:
        return max(1, (self.n_tracts * self.n_patches - 1).bit_length())

    @property
    def counter_bits(self) -> int:
        return 63 - RELEASE_BITS - self.data_bits

    def catalog_id(self, tract: int, patch: int) -> int:
        """Packed (release, tract, patch) with no counter bits: also the noise seed of a patch."""
        if not (0 <= tract < self.n_tracts and 0 <= patch < self.n_patches):
            raise ValueError(f"tract={tract} patch={patch} outside skymap ({self.n_tracts} x {self.n_patches})")
        return (self.release << self.data_bits) + tract * self.n_patches + patch

    def make_ids(self, tract: int, patch: int, counters: np.ndarray) -> np.ndarray:
        """Object ids for counters (1-based, as afw's SourceIdFactory)."""
        counters = np.asarray(counters, dtype=np.int64)
        if counters.size and (counters.min() < 1 or counters.max() >= 1 << self.counter_bits):
            raise OverflowError(f"id counter outside [1, 2^{self.counter_bits}) for tract={tract} patch={patch}")
        return (np.int64(self.catalog_id(tract, patch)) << np.int64(self.counter_bits)) | counters

    def unpack(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Split ids into release, tract, patch and counter."""
        ids = np.asarray(ids, dtype=np.int64)
        counter = ids & ((1 << self.counter_bits) - 1)
        cat = ids >> self.counter_bits
        packed = cat & ((1 << self.data_bits) - 1)
        return {
            "release": cat >> self.data_bits,
            "tract": packed // self.n_patches,
            "patch": packed % self.n_patches,
            "counter": counter,
        }
