"""Naive circular apertures: the sum of pixels whose centres lie in the closed disk.

As afw's PixelRegion: for each row y, columns ceil(xc - d) .. floor(xc + d) with
d = sqrt(r^2 - (y - yc)^2). Each row is one run, summed with the float64 prefix sums of that
image row, made once per stripe of sources and shared by every source whose disk crosses it
(:func:`forcedphot.kernels.apertures.naive_aperture_kernel`): the cost per source grows with
the radius, not its square, and no prefix sums over whole planes are kept.
F = sum(I), err = sqrt(sum(V)).
"""

from __future__ import annotations

import numpy as np

from forcedphot.kernels.apertures import naive_aperture_kernel, read_only, row_stripes
from forcedphot.kernels.pixels import no_footprints

ROWS_PER_STRIPE = 256  # image rows of sources per stripe (each stripe sweeps its rows +- the radius once)


def naive_apertures(image, original, variance, valid, fp, xl, yl, todo, radii, *, both: bool = False,
                    rows_per_stripe: int = ROWS_PER_STRIPE):
    """(flux, flux_original, variance, invalid pixel count, EXCLUDED pixel count), each (N, R), at local
    positions (xl, yl); ``valid`` may be the pixel classes of :func:`forcedphot.kernels.footprints.pixel_classes`."""
    image, original, variance, valid = read_only(image, original, variance, valid)
    radii = np.asarray(radii, np.float64)
    up = np.argsort(radii, kind="stable")  # the kernel takes radii ascending
    todo = np.ascontiguousarray(np.asarray(todo)[:, up], np.uint8)
    xl = np.ascontiguousarray(xl, np.float64)
    yl = np.ascontiguousarray(yl, np.float64)
    order, start = row_stripes(yl, todo.any(axis=1), image.shape[0], rows_per_stripe)
    res = naive_aperture_kernel(image, original, variance, valid, fp, xl, yl, todo, np.ascontiguousarray(radii[up]),
                                order, start, bool(both))
    back = np.argsort(up)
    return tuple(a[:, back] for a in res)


def _warm():
    """The kernel once on tiny planes with the dtypes and flags the plugins pass (see forcedphot.compile)."""
    image = np.zeros((16, 16), np.float32)
    one = np.full(1, 8.0)
    naive_apertures(image, image, np.ones((16, 16), np.float32), np.ones((16, 16), np.uint8), no_footprints(1), one,
                    one, np.ones((1, 1), np.uint8), (3.0,), both=True)


WARMUP = [_warm]
