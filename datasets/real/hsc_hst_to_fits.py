"""Split the HSC cube of ../shared/data/real/hsc_hst_multires into one FITS file per band (2-D WCS) and
its PSF cube into one file per band, and detect sources on the HST/ACS image (photutils) as the
reference catalog for forcing on HSC: hst_catalog.csv with id, ra, dec (ICRS, deg) and hst_flux (the
HST image units summed over each source's segment).

    python datasets/real/hsc_hst_to_fits.py DATADIR OUTDIR [--nsigma 3] [--npixels 20]
"""

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.wcs import WCS
from photutils.segmentation import SourceCatalog, detect_sources

BANDS = "grizy"  # the cube's order (no band names in its header)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datadir")
    p.add_argument("outdir")
    p.add_argument("--nsigma", type=float, default=3.0, help="detection threshold over the HST sky RMS")
    p.add_argument("--npixels", type=int, default=20, help="minimum connected HST pixels")
    args = p.parse_args(argv)
    src, out = Path(args.datadir), Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    hsc = fits.open(src / "Cut_HSC.fits")[0]
    header = WCS(hsc.header).celestial.to_header()
    psfs = fits.getdata(src / "PSF_HSC.fits")
    for i, band in enumerate(BANDS):
        fits.writeto(out / f"hsc_{band}.fits", hsc.data[i].astype(np.float32), header, overwrite=True)
        fits.writeto(out / f"psf_hsc_{band}.fits", psfs[i], overwrite=True)
    hst = fits.open(src / "Cut_HST.fits")[0]
    image = hst.data.astype(float)
    _, median, std = sigma_clipped_stats(image)
    image = image - median
    segm = detect_sources(image, args.nsigma * std, args.npixels)  # no deblending (it needs scikit-image)
    cat = SourceCatalog(image, segm, wcs=WCS(hst.header))
    sky = cat.sky_centroid.icrs
    Table({"id": cat.label, "ra": sky.ra.deg, "dec": sky.dec.deg, "hst_flux": cat.segment_flux}).write(
        out / "hst_catalog.csv", format="ascii.csv", overwrite=True)
    print(f"wrote {len(BANDS)} HSC bands and {len(cat)} HST detections to {out}")


if __name__ == "__main__":
    main()
