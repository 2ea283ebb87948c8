"""The inputs of a coadd: the valid polygon of every input image, in tract pixels.

InputCount counts, for each position, the input polygons that contain it (Rubin's
base_InputCount uses the input detectors' boxes; polygons generalise them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import shapely


@dataclass(frozen=True)
class CoaddInput:
    visit: int
    detector: int
    x: tuple[float, ...]  # polygon vertices, tract pixels
    y: tuple[float, ...]


@dataclass(frozen=True)
class CoaddInputs:
    inputs: tuple[CoaddInput, ...]

    def count(self, x, y) -> np.ndarray:
        """Number of input polygons containing each point (vectorised over points)."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        total = np.zeros(x.shape, np.int32)
        ok = np.isfinite(x) & np.isfinite(y)
        for inp in self.inputs:
            poly = shapely.Polygon(np.c_[inp.x, inp.y])
            shapely.prepare(poly)
            total[ok] += shapely.contains_xy(poly, x[ok], y[ok])
        return total

    def to_json(self) -> str:
        return json.dumps([{"visit": i.visit, "detector": i.detector, "x": list(i.x), "y": list(i.y)}
                           for i in self.inputs])

    @classmethod
    def from_json(cls, text: str | None) -> "CoaddInputs | None":
        if not text:
            return None
        return cls(tuple(CoaddInput(d["visit"], d["detector"], tuple(d["x"]), tuple(d["y"])) for d in json.loads(text)))
