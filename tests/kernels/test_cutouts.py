import numpy as np

from forcedphot.flags import MaskPlanes
from forcedphot.io.coadd import Coadd
from forcedphot.psf import PsfGrid
from forcedphot.skymap import Box, TractInfo
from tests.kernels.cutouts import CutoutBatch, ReferencePadded


def _coadd():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(20, 30)).astype(np.float32)
    img[5, 7] = np.nan
    wcs = TractInfo(0, 10.0, 0.0, 0.2, 100, 0, 1, 1).wcs
    return Coadd(0, 0, "r", Box(100, 200, 129, 219), img, np.zeros(img.shape, np.int32),
                 np.ones(img.shape, np.float32), wcs, PsfGrid([0.0], [0.0], np.ones((1, 1, 3, 3)) / 9), 1.0,
                 MaskPlanes())


def test_cutouts_are_zero_copy_arrow_tensors_with_invalid_edges():
    coadd = _coadd()
    padded = ReferencePadded(coadd, pad=4)
    ix, iy = padded.local_index(np.array([100.0, 107.2, 129.4]), np.array([200.0, 205.1, 219.0]))
    batch = CutoutBatch(padded, ix, iy, half=2)
    img = batch.image
    assert img.shape == (3, 5, 5) and img.dtype == np.float32
    assert batch.tensors["image"].storage.values.buffers()[1].address == img.ctypes.data  # zero-copy
    # source 1 is centred on pixel (7, 5) of the coadd, which is NaN: zeroed and invalid
    assert not batch.valid[1, 2, 2] and img[1, 2, 2] == 0
    assert batch.mask[1, 2, 2] & MaskPlanes().bitmask("NO_DATA")
    np.testing.assert_array_equal(img[1, 0, :], coadd.image[3, 5:10])
    # source 0 sits on the corner: off-image rows/columns are invalid
    assert batch.valid[0, 2:, 2:].all() and not batch.valid[0, :2].any() and not batch.valid[0, :, :2].any()
    assert batch.to_arrow().num_rows == 3
