"""Write an HSC blend of ../shared/data/real/hsc (numpy .npz) as FITS files and a CSV catalog that
`forcedphot ingest fits` reads: one image per band with its noise HDU, one PSF per band, catalog.csv.

    python datasets/real/hsc_npz_to_fits.py BLEND.npz OUTDIR [--catalog-from OTHER.npz]

The noise HDU is WEIGHT (inverse variance, deblender files) or VARIANCE (scarlet_hsc_cosmos_35);
the catalog is the file's `catalog` (x, y and, for a SEP catalog, its `flux` as `sep_flux`) or its
`peaks` (x, y); `--catalog-from` takes the catalog of another file of the same pixels (checked).
Bands are g r i z y; the files hold no WCS and no zero point (HSC coadds: 27 AB, 0.168"/px).
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

BANDS = "grizy"


def catalog_rows(data):
    """(id, x, y, sep_flux or None) per source, ids from 1 in file order."""
    if "catalog" in data:
        cat = data["catalog"]
        flux = cat["flux"] if "flux" in cat.dtype.names else [None] * len(cat)
        return [(i + 1, float(x), float(y), None if f is None else float(f))
                for i, (x, y, f) in enumerate(zip(cat["x"], cat["y"], flux))]
    return [(i + 1, float(x), float(y), None) for i, (x, y) in enumerate(data["peaks"])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("npz")
    p.add_argument("outdir")
    p.add_argument("--catalog-from", help="take the catalog of this .npz (its images must be identical)")
    args = p.parse_args(argv)
    data = np.load(args.npz)
    rows = catalog_rows(data)
    if args.catalog_from:
        other = np.load(args.catalog_from)
        if not np.array_equal(other["images"], data["images"]):
            sys.exit(f"{args.catalog_from}: its images differ from those of {args.npz}")
        rows = catalog_rows(other)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    noise = ("WEIGHT", data["weights"]) if "weights" in data else ("VARIANCE", data["variance"])
    for i, band in enumerate(BANDS):
        fits.HDUList([fits.PrimaryHDU(data["images"][i]),
                      fits.ImageHDU(noise[1][i], name=noise[0])]).writeto(out / f"{band}.fits", overwrite=True)
        fits.writeto(out / f"psf_{band}.fits", data["psfs"][i], overwrite=True)
    with open(out / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        has_flux = rows[0][3] is not None
        w.writerow(["id", "x", "y"] + (["sep_flux"] if has_flux else []))
        for r in rows:
            w.writerow(list(r[:3]) + ([r[3]] if has_flux else []))
    print(f"wrote {len(BANDS)} bands ({noise[0]} noise) and {len(rows)} catalog rows to {out}")


if __name__ == "__main__":
    main()
