"""Ingest external data into a new forcedphot repository (``forcedphot ingest ...``).

:func:`ingest_fits` takes per-band FITS coadds (image, noise, optional mask, background
and PSF) and a reference catalog, and writes the skymap, reference catalogs, footprints
and coadds that ``forcedphot run`` measures; objects whose footprints overlap are
deblended by a joint fit of PSF and shape models, then a flux split (:mod:`forcedphot.ingest.deblend`).
"""

from forcedphot.ingest.fits import ingest_fits
from forcedphot.ingest.specs import BandSpec, CatalogSpec

__all__ = ["BandSpec", "CatalogSpec", "ingest_fits"]
