"""Aperture-correction maps: smooth 2-D fields per flux algorithm, stored with each coadd.

Each field is a 2-D Chebyshev series over the coadd's bounding box (as Rubin's
ChebyshevBoundedField). A map holds a value and an error field per algorithm name
(``psfFlux``, ``gaussianFlux``, ``kronFlux``...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev

from forcedphot.skymap import Box


@dataclass(frozen=True)
class ChebyshevField:
    bbox: Box
    coeffs: np.ndarray  # (ny + 1, nx + 1): coeffs[j, i] multiplies T_i(u) T_j(v)

    def __call__(self, x, y) -> np.ndarray:
        b = self.bbox
        u = 2.0 * (np.asarray(x, float) - (b.min_x - 0.5)) / (b.width) - 1.0
        v = 2.0 * (np.asarray(y, float) - (b.min_y - 0.5)) / (b.height) - 1.0
        return chebyshev.chebval2d(v, u, np.asarray(self.coeffs, float))

    @classmethod
    def constant(cls, bbox: Box, value: float) -> "ChebyshevField":
        return cls(bbox, np.array([[float(value)]]))


@dataclass(frozen=True)
class ApCorrMap:
    fields: dict = field(default_factory=dict)  # name -> (value ChebyshevField, error ChebyshevField)

    def names(self) -> list[str]:
        return sorted(self.fields)

    def evaluate(self, name: str, x, y) -> tuple[np.ndarray, np.ndarray]:
        value, error = self.fields[name]
        return value(x, y), error(x, y)

    def to_json(self) -> str:
        out = {}
        for name, (value, error) in sorted(self.fields.items()):
            out[name] = {"bbox": [value.bbox.min_x, value.bbox.min_y, value.bbox.max_x, value.bbox.max_y],
                         "value": np.asarray(value.coeffs).tolist(), "error": np.asarray(error.coeffs).tolist()}
        return json.dumps(out)

    @classmethod
    def from_json(cls, text: str | None) -> "ApCorrMap | None":
        if not text:
            return None
        fields = {}
        for name, d in json.loads(text).items():
            box = Box(*d["bbox"])
            fields[name] = (ChebyshevField(box, np.array(d["value"])), ChebyshevField(box, np.array(d["error"])))
        return cls(fields)
