"""Mask-plane registry: named bit planes, stored with every coadd, with a decoder.

Bit numbers follow the Rubin/afw defaults so masks read like ``afw`` masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "SENSOR_EDGE": 9,
    "CLIPPED": 10,
    "INEXACT_PSF": 11,
    "REJECTED": 12,
}

MASK_DESCRIPTIONS: dict[str, str] = {
    "BAD": "bad pixel (e.g. a bad column)",
    "SAT": "saturated pixel",
    "INTRP": "interpolated pixel",
    "CR": "cosmic ray",
    "EDGE": "near the edge of the coadd's input coverage",
    "DETECTED": "above the detection threshold",
    "DETECTED_NEGATIVE": "below the negative detection threshold",
    "SUSPECT": "suspect (near saturation or non-linear)",
    "NO_DATA": "no input data",
    "SENSOR_EDGE": "near a sensor edge in an input",
    "CLIPPED": "clipped in coaddition",
    "INEXACT_PSF": "PSF model inexact here",
    "REJECTED": "rejected input pixels",
}


@dataclass(frozen=True)
class MaskPlanes:
    """A registry of mask planes: name -> bit number."""

    bits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MASK_PLANES))

    def __post_init__(self):
        if len(set(self.bits.values())) != len(self.bits):
            raise ValueError(f"mask planes share a bit: {self.bits}")

    def bitmask(self, *names: str) -> int:
        """OR of the named planes; names missing from the registry are an error."""
        missing = [n for n in names if n not in self.bits]
        if missing:
            raise KeyError(f"unknown mask plane(s) {missing}; known: {sorted(self.bits)}")
        value = 0
        for n in names:
            value |= 1 << self.bits[n]
        return value

    def decode(self, value: int) -> list[str]:
        """Names of the planes set in one mask value, in bit order."""
        value = int(value)
        return [n for n, b in sorted(self.bits.items(), key=lambda kv: kv[1]) if value >> b & 1]

    def decode_array(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean array per plane for an array of mask values."""
        import numpy as np  # not at import: the config (and `forcedphot status`) needs no numpy

        values = np.asarray(values)
        return {n: (values >> b & 1).astype(bool) for n, b in self.bits.items()}

    def to_json(self) -> dict[str, int]:
        return dict(self.bits)

    @classmethod
    def from_json(cls, d: dict) -> "MaskPlanes":
        return cls({str(k): int(v) for k, v in d.items()})
