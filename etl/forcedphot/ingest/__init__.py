"""Ingest external data into a new forcedphot repository (``forcedphot ingest ...``).

:func:`ingest_fits` takes per-band FITS coadds (image, noise, optional mask, background
and PSF) and a reference catalog, and writes the skymap, reference catalogs, footprints
and coadds that ``forcedphot run`` measures; objects whose footprints overlap are
deblended by a joint fit of PSF and shape models, then a flux split (:mod:`forcedphot.ingest.deblend`).
"""


__all__ = ["BandSpec", "CatalogSpec", "ingest_fits"]


def __getattr__(name: str):
    """The package's names, imported when first used: ``forcedphot --help`` builds the ingest
    command's options (:mod:`forcedphot.ingest.args`) without loading astropy, scipy or photutils."""
    if name == "ingest_fits":
        from forcedphot.ingest.fits import ingest_fits as value
    elif name in ("BandSpec", "CatalogSpec"):
        from forcedphot.ingest import specs

        value = getattr(specs, name)
    else:
        raise AttributeError(f"module 'forcedphot.ingest' has no attribute {name!r}")
    globals()[name] = value
    return value
