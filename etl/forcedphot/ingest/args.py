"""Command-line arguments of ``forcedphot ingest fits``: band groups, catalog columns, manifest merge.

Per-band options follow their ``--band NAME`` (``--band g --image g.fits --band r --image
r.fits``): argparse calls actions in command-line order, so a custom action appends a
new group on ``--band`` and the per-band actions fill the most recent one. This keeps
argparse's help, abbreviations and error messages, and rejects options given before any
``--band`` or twice in one group.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from forcedphot.errors import InputError

EXAMPLE = """\
example:
  forcedphot ingest fits --repo myrepo \\
      --band g --image g.fits:SCI --invvar g.fits:WHT --psf psf_g.fits --zero-point 27 \\
      --band r --image r.fits:SCI --invvar r.fits:WHT --psf-fwhm 0.9arcsec --zero-point 27 \\
      --catalog objects.parquet --patch-size 2000
  forcedphot run --repo myrepo

files are FILE, FILE:HDU or FILE[HDU] (HDU = index or EXTNAME); the tract's pixel frame is
the images' 0-based pixel frame. A TOML manifest holds the same settings:

  repo = "myrepo"            # optional; relative paths are relative to the manifest
  patch_size = 2000
  [bands.g]
  image = "g.fits:SCI"
  invvar = "g.fits:WHT"
  psf = "psf_g.fits"
  zero_point = 27.0          # default: the header's BUNIT or zero point
  [catalog]
  path = "objects.parquet"
  x = "X_IMAGE"              # column options as below, without "-col"
  key = "row"                # externalId: the 0-based catalog row (default auto: the id column, else the row)
"""

# per-band option -> (BandSpec field, type, metavar, help)
BAND_OPTIONS = {
    "--image": ("image", str, "FILE[:HDU]", "image (default HDU: the first holding an image)"),
    "--variance": ("variance", str, "FILE[:HDU]|VALUE", "variance plane (image units squared) or a constant"),
    "--invvar": ("invvar", str, "FILE[:HDU]|VALUE", "inverse-variance (weight) plane; 0 marks unusable pixels"),
    "--sigma": ("sigma", str, "FILE[:HDU]|VALUE|estimate",
                "noise sigma (RMS) plane or a constant; estimate: the background RMS (no source Poisson noise)"),
    "--mask": ("mask", str, "FILE[:HDU]", "integer mask plane; by default any nonzero value -> BAD"),
    "--mask-bits": ("mask_bits", str, "PLANE=BIT,...",
                    "map input mask bits to planes instead, e.g. BAD=0,SAT=1,NO_DATA=8"),
    "--background": ("background", str, "FILE[:HDU]|VALUE|estimate",
                     "background to subtract: a plane, a constant, or estimate (photutils Background2D, "
                     "sources masked)"),
    "--background-box": ("background_box", int, "N",
                         "box size of --background/--sigma estimate, pixels (default: 10 PSF FWHM within 16..64)"),
    "--psf": ("psf", str, "FILE[:HDU]|estimate", "PSF image (normalised, made odd-sized and centred if needed), or "
              "estimate: an effective PSF of bright isolated catalog stars (photutils EPSFBuilder; "
              "--psf-fwhm is then a first guess)"),
    "--psf-oversampling": ("psf_oversampling", int, "N", "integer oversampling of the PSF image (binned down; "
                           "default: from its header's pixel scale, else 1)"),
    "--psf-scale-mismatch": ("psf_scale_mismatch", str, "resample|refuse|ignore",
                             "when the PSF header's pixel scale x oversampling differs from the image's by more "
                             "than 1%%: resample the PSF (default), refuse, or ignore the header"),
    "--psf-fwhm": ("psf_fwhm", str, "VALUE{arcsec|px}", "Gaussian PSF of this FWHM, e.g. 0.9arcsec or 3px"),
    "--zero-point": ("zero_point", float, "ZP", "AB magnitude of one image unit (overrides the header's BUNIT and "
                                                "zero-point keys)"),
    "--flux-unit": ("flux_unit", str, "UNIT",
                    "unit of one image unit (astropy): nJy, uJy, mJy, Jy, nmgy, or MJy/sr, Jy/arcsec2 ... "
                    "(overrides the header). Default: the header's BUNIT, else MAGZERO, MAGZPT, MAGZP, ZEROPT, ZP, "
                    "FLUXMAG0, PHOTFLAM+PHOTPLAM or PHOTFNU; none of them is an error unless --assume-njy"),
}

BAND_CHOICES = {"psf_scale_mismatch": ("resample", "refuse", "ignore")}

# catalog option -> (CatalogSpec field, type, help)
CATALOG_OPTIONS = {
    "--catalog-format": ("format", str, "fits, parquet, csv, sextractor, votable or an astropy format "
                                        "(default: from the file's contents)"),
    "--ra-col": ("ra", str, "RA column, deg, or the --frame's longitude (default: coord_ra, ra, RA, ALPHA_J2000 "
                            "...; l, GLON (galactic); ELON, lambda (ecliptic))"),
    "--dec-col": ("dec", str, "Dec column, deg, or the --frame's latitude (default: coord_dec, dec, DEC, "
                              "DELTA_J2000 ...; b, GLAT; ELAT, beta)"),
    "--frame": ("frame", str, "sky frame of the catalog positions: icrs, fk5, fk4, galactic, ecliptic (mean "
                              "ecliptic and equinox, barycentric), supergalactic or another astropy ecliptic frame; "
                              "converted to the image WCS's frame (default: from the column names, l/b -> "
                              "galactic, ELON/ELAT -> ecliptic, RAB1950 -> fk4, else icrs)"),
    "--equinox": ("equinox", str, "equinox of an fk4, fk5 or ecliptic --frame, e.g. J2000 or B1950 (default: "
                                  "B1950 for fk4, else J2000)"),
    "--x-col": ("x", str, "x column, pixels (default: centroid_x, x, X, X_IMAGE ...)"),
    "--y-col": ("y", str, "y column, pixels (default: centroid_y, y, Y, Y_IMAGE ...)"),
    "--xy-origin": ("xy_origin", int, "coordinate of the first pixel's centre in x/y: 0, or 1 as in "
                                      "SExtractor and FITS (default: 1 for SExtractor catalogs, else 0)"),
    "--positions": ("positions", str, "auto: RA/Dec through the WCS when both exist, else x/y (default auto)"),
    "--id-col": ("id", str, "object id column: parent links and, with --key auto or id, externalId; its ids must be "
                         "unique (default: id, objectId, NUMBER ...)"),
    "--parent-col": ("parent", str, "parent id column (0, -1 or null: no parent)"),
    "--key": ("key", str, "what externalId holds, the key that joins every output row back to its catalog row: id "
                          "(the id column's integer ids), row (the row's 0-based number in the catalog file, in file "
                          "order), auto (default: id when the catalog has an id column of integers, else row)"),
    "--duplicates": ("duplicates", str, "rows at the same position as another row (within 0.1 px, parent and "
                                        "child aside): refuse (default: exit 2 naming them), drop (keep the first "
                                        "of each group, in catalog order) or flag (keep them all: detect_isDuplicate "
                                        "and the general flag of every deblended measurement set)"),
    "--xx-col": ("xx", str, "second moment xx, pixels^2 (default: shape_xx, X2_IMAGE ...)"),
    "--yy-col": ("yy", str, "second moment yy"),
    "--xy-col": ("xy", str, "second moment xy"),
    "--a-col": ("a", str, "semi-major axis sigma, pixels (default: A_IMAGE); with --b-col and --theta-col"),
    "--b-col": ("b", str, "semi-minor axis sigma, pixels (default: B_IMAGE)"),
    "--theta-col": ("theta", str, "position angle counter-clockwise from +x (default: THETA_IMAGE)"),
    "--theta-unit": ("theta_unit", str, "unit of theta (default deg)"),
    "--kron-col": ("kron", str, "Kron radius column (default: KRON_RADIUS, kron_radius)"),
    "--kron-unit": ("kron_unit", str, "pix: sqrt(ab) in pixels; shape: in units of a and b, as SExtractor's "
                                      "KRON_RADIUS (its default)"),
    "--cmodel-exp-cols": ("cmodel_exp", str, "MAJOR,MINOR,THETA: the catalog's exp half-light ellipse (semi-axes in "
                                             "arcsec, position angle in degrees east of north, e.g. Rubin's "
                                             "i_cModel_exp_reff_major,i_cModel_exp_reff_minor,i_cModel_exp_reff_theta) "
                                             "for forced CModel's reference model, instead of fitting it on the "
                                             "reference band"),
    "--cmodel-dev-cols": ("cmodel_dev", str, "MAJOR,MINOR,THETA: the catalog's dev half-light ellipse (as "
                                             "--cmodel-exp-cols)"),
    "--deblend": ("deblend", str, "peaks (default): objects whose footprints overlap form a blend with a new "
                                  "parent row (footprint: the union, image pixels); each child's heavy footprint is "
                                  "ratio x image with ratio = its fitted model / the sum of the blend's fitted models: "
                                  "the band's PSF at each position (for objects with a catalog shape: the PSF convolved "
                                  "with a Gaussian and with an exponential of the shape minus the PSF), amplitudes "
                                  "fitted jointly (non-negative, inverse-variance weighted), so "
                                  "children add up to the parent. Not scarlet. Catalog parents "
                                  "are kept. none: every object its own footprint with the image pixels"),
}

CHOICES = {"xy_origin": (0, 1), "positions": ("auto", "sky", "pixel"), "theta_unit": ("deg", "rad"),
           "kron_unit": ("pix", "shape"), "deblend": ("peaks", "none"), "key": ("auto", "id", "row"),
           "duplicates": ("refuse", "flag", "drop")}


class BandGroup(argparse.Action):
    """``--band NAME``: start a new group of per-band options."""

    def __call__(self, parser, namespace, values, option_string=None):
        groups = list(getattr(namespace, self.dest, None) or [])
        groups.append({"name": values})
        setattr(namespace, self.dest, groups)


class BandOption(argparse.Action):
    """A per-band option: stored in the most recent ``--band`` group."""

    def __call__(self, parser, namespace, values, option_string=None):
        groups = getattr(namespace, "bands", None)
        if not groups:
            parser.error(f"{option_string} must follow --band NAME (per-band options apply to the latest --band)")
        group = groups[-1]
        if self.dest in group:
            parser.error(f"{option_string} given twice for band {group['name']}")
        group[self.dest] = values


def add_fits_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="repository folder to create (required unless in the manifest)")
    p.add_argument("--manifest", metavar="FILE.toml", help="TOML file with the same settings "
                   "([bands.NAME] tables, a [catalog] table); command-line options add to or override it")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="ingest into an existing repository at --repo: replaces the input files that changed, keeps "
                        "its outputs and run history; refuses a folder holding anything forcedphot did not write")
    p.add_argument("--assume-njy", action="store_true", default=None,
                   help="take the pixels of every band whose options and header give no usable flux unit or zero "
                        "point as nJy (with a warning) instead of failing; header units still apply where present")
    b = p.add_argument_group("bands", "repeat --band for each band; the options below apply to the latest --band")
    b.add_argument("--band", dest="bands", action=BandGroup, metavar="NAME",
                   help="start a band (1-8 characters, e.g. g)")
    for flag, (dest, typ, metavar, text) in BAND_OPTIONS.items():
        kw = {"choices": BAND_CHOICES[dest]} if dest in BAND_CHOICES else {}
        b.add_argument(flag, dest=dest, action=BandOption, type=typ, metavar=metavar, help=text,
                       default=argparse.SUPPRESS, **kw)
    c = p.add_argument_group("reference catalog")
    c.add_argument("--catalog", metavar="FILE[:HDU]",
                   help="FITS table, Parquet, CSV, SExtractor ASCII or VOTable of reference objects")
    for flag, (dest, typ, text) in CATALOG_OPTIONS.items():
        named = {"frame": "FRAME", "equinox": "EPOCH", "cmodel_exp": "MAJOR,MINOR,THETA", "cmodel_dev": "MAJOR,MINOR,THETA"}
        kw = {"choices": CHOICES[dest]} if dest in CHOICES else {
            "metavar": "NAME" if flag.endswith("-col") else named.get(dest, "FORMAT")}
        c.add_argument(flag, dest=f"cat_{dest}", type=typ, help=text, **kw)
    g = p.add_argument_group("geometry")
    g.add_argument("--patch-size", type=int, metavar="N", help="patch inner size, pixels (default: one patch)")
    g.add_argument("--patch-border", type=int, metavar="B",
                   help="patch overlap border, pixels (default: 0 for one patch, else min(100, N/4))")
    g.add_argument("--pixel-scale", type=float, metavar="ARCSEC",
                   help="pixel scale for images without a celestial WCS (a TAN WCS is made up)")
    g.add_argument("--reference-band", "--ref-band", dest="ref_band", metavar="NAME",
                   help="reference band: recorded as refBand, and catalog rows without a shape or Kron radius are "
                        "measured on it (adaptive moments, Rubin's Kron radius); default: the first of i, r, z, y, "
                        "g, u present (Rubin's priority), else the first band")


def specs_from_args(args) -> tuple[str, list, object, dict]:
    """(repo, bands, catalog, options) from parsed arguments merged over the manifest, if any."""
    from forcedphot.ingest.manifest import load_manifest
    from forcedphot.ingest.specs import BandSpec, CatalogSpec

    repo, bands, catalog, options = (None, [], None, {})
    if args.manifest:
        repo, bands, catalog, options = load_manifest(args.manifest)
    known = {b.name for b in bands}
    for group in args.bands or []:
        if group["name"] in known:
            raise InputError(f"band {group['name']} is given in the manifest and on the command line")
        if "image" not in group:
            raise InputError(f"band {group['name']}: no --image")
        known.add(group["name"])
        bands.append(BandSpec(**group))
    cat = {dest: getattr(args, f"cat_{dest}") for dest, *_ in CATALOG_OPTIONS.values()
           if getattr(args, f"cat_{dest}") is not None}
    if args.catalog:
        catalog = CatalogSpec(path=args.catalog, **cat) if catalog is None else replace(catalog, path=args.catalog,
                                                                                         **cat)
    elif catalog is not None:
        catalog = replace(catalog, **cat)
    elif cat:
        raise InputError("catalog column options need --catalog FILE")
    if catalog is None:
        raise InputError("no reference catalog; give --catalog FILE")
    for key in ("patch_size", "patch_border", "pixel_scale", "ref_band", "overwrite", "assume_njy"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    repo = args.repo or repo
    if not repo:
        raise InputError("no repository; give --repo FOLDER")
    if not bands:
        raise InputError("no bands; give --band NAME --image FILE ... for each band")
    return repo, bands, catalog, options


RUBIN_EXAMPLE = """\
example (a tract's deep_coadd files of two bands, and its Object table):
  forcedphot ingest rubin --repo myrepo \\
      --coadd deep_coadd_9813_4[0-9]_[gr]*.fits \\
      --catalog object_9813.parquet --psf g=psf_g.fits --psf r=psf_r.fits
  forcedphot run --repo myrepo

Each deep_coadd (afw ExposureF layout: IMAGE, MASK, VARIANCE HDUs, MP_* mask planes, LTV1/2, SIP WCS,
BUNIT nJy) is read with lsst.images; band, tract and patch come from its header. Its PSF is afw's
persisted CoaddPsf, which needs lsst.afw: give --psf FILE (an image of the PSF), --psf estimate or
--psf-fwhm. A CellCoadd file (lsst.images' own format, told apart by its header) is read with
CellCoadd.read, and its per-cell PSFs become the PSF grid (one node per cell centre) unless --psf or
--psf-fwhm is given for its band. The catalog is Rubin's Object or deepCoadd_ref table (Parquet), told
apart by its columns.
"""


def _band_value(text: str) -> tuple[str | None, str]:
    band, sep, value = text.partition("=")
    return (band, value) if sep and "/" not in band and len(band) <= 8 else (None, text)


def add_rubin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, help="repository folder to create")
    p.add_argument("--coadd", nargs="+", action="extend", required=True, metavar="FILE",
                   help="Rubin deep_coadd FITS files or lsst.images CellCoadd files (any bands and patches of one "
                        "tract); repeatable")
    p.add_argument("--catalog", required=True, metavar="FILE.parquet",
                   help="Rubin Object or deepCoadd_ref table (Parquet; column names as lsst-sdm-schemas)")
    p.add_argument("--psf", action="append", default=[], metavar="[BAND=]FILE|estimate",
                   help="PSF image for a band (BAND=FILE) or for every band (FILE), or estimate (photutils "
                        "EPSFBuilder on the catalog's stars); repeatable. A deep_coadd's own afw PSF cannot be read; a "
                        "CellCoadd's cell PSFs are used when no --psf or --psf-fwhm names its band")
    p.add_argument("--psf-fwhm", action="append", default=[], metavar="[BAND=]VALUE",
                   help="a Gaussian PSF of this FWHM instead (e.g. 0.7arcsec or 3.5px)")
    p.add_argument("--band", help="band of every file (default: each file's header: LSST BUTLER DATAID BAND, BAND, "
                                  "or FILTER 'r_57' -> r)")
    p.add_argument("--drop-mask-plane", action="append", default=[], metavar="NAME",
                   help="leave out a mask plane that is neither Rubin's nor forcedphot's (else an error)")
    p.add_argument("--patch-size", type=int, metavar="N", help="patch inner size, pixels (default: one patch)")
    p.add_argument("--patch-border", type=int, metavar="B", help="patch overlap border, pixels")
    p.add_argument("--reference-band", "--ref-band", dest="ref_band", metavar="NAME",
                   help="reference band (default: the catalog's most common refBand, else Rubin's priority)")
    p.add_argument("--deblend", choices=("peaks", "none"), help="as ingest fits (default peaks)")
    p.add_argument("--duplicates", choices=("refuse", "flag", "drop"), default="refuse",
                   help="rows at one position: as ingest fits")
    p.add_argument("--overwrite", action="store_true", help="ingest into an existing repository (as ingest fits)")


def rubin_options(args) -> dict:
    """Keyword arguments of :func:`forcedphot.ingest.rubin.ingest_rubin` from parsed arguments."""
    psf = dict(_band_value(v) for v in args.psf)
    fwhm = dict(_band_value(v) for v in args.psf_fwhm)
    both = set(psf) & set(fwhm)
    if both:
        raise InputError(f"--psf and --psf-fwhm both given for {', '.join(sorted(map(str, both)))}")
    return dict(psf=psf or None, psf_fwhm=fwhm or None, band=args.band, drop_planes=tuple(args.drop_mask_plane),
                patch_size=args.patch_size, patch_border=args.patch_border, ref_band=args.ref_band,
                overwrite=args.overwrite, deblend=args.deblend, duplicates=args.duplicates)
