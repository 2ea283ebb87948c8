"""IVOA UCDs and TAP principal flags of catalog columns, as Rubin's sdm_schemas annotate them.

The forced_source schema is generated (forcedphot.outputs), so its UCDs come from these rules on
the column names (Rubin's naming: ``*Flux``, ``*FluxErr``, ``*_flag*``, ``pixelFlags_*``, ...).
The hand-written schemas carry their UCDs in the YAML.
"""

from __future__ import annotations

import re

# Exact names first (identity columns), then name patterns in order; the first match wins.
EXACT = {
    "objectId": "meta.id;meta.main",
    "parentObjectId": "meta.id.parent",
    "externalId": "meta.id.cross",
    "tract": "meta.id.part;obs.field",
    "patch": "meta.id.part;obs.field",
    "band": "instr.bandpass",
    "refBand": "instr.bandpass",
    "coord_ra": "pos.eq.ra;meta.main",
    "coord_dec": "pos.eq.dec;meta.main",
    "deblend_nChild": "meta.number",
    "deblend_zeroFlux": "meta.code",
    "inputCount": "meta.number",
    "extendedness": "src.class.starGalaxy",
    "localVariance": "stat.variance",
    "localBackground": "instr.skyLevel",
    "localBackground_stdev": "stat.stdev;instr.skyLevel",
    "cModel_fracDev": "src.morph.param",
    "cModel_objective": "stat.fit.residual",
}
PATTERNS = (
    (r"(_flag|^pixelFlags_|^detect_is|_deconv$)", "meta.code"),
    (r"FluxErr$", "stat.error;phot.flux"),
    (r"Flux$|_flux$|Flux_inner$", "phot.flux"),
    (r"_fluxErr$", "stat.error;phot.flux"),
    (r"MagErr$", "stat.error;phot.mag"),
    (r"Mag$", "phot.mag"),
    (r"_apCorrErr$", "stat.error;phot.flux"),
    (r"_apCorr$", "arith.factor;phot.flux"),
    (r"_xErr$", "stat.error;pos.cartesian.x"),
    (r"_yErr$", "stat.error;pos.cartesian.y"),
    (r"_x$", "pos.cartesian.x;instr.det"),
    (r"_y$", "pos.cartesian.y;instr.det"),
    (r"_psf_(xx|yy|xy)$", "src.morph.param;instr.det.psf"),
    (r"_(xx|yy|xy)Err$", "stat.error;src.morph.param"),
    (r"_(xx|yy|xy)$", "src.morph.param"),
    (r"kronRad$", "phys.size.radius"),
    (r"_seeing$", "instr.obsty.seeing"),
    (r"_chi2$", "stat.fit.chi2"),
    (r"_npixels$", "meta.number"),
    (r"_area$", "phys.area"),
)

# What a first look at a table needs (TAP principal = 1): ids, position, band and the PSF photometry.
PRINCIPAL = {"objectId", "tract", "patch", "band", "coord_ra", "coord_dec", "detect_isPrimary", "refBand",
             "psfFlux", "psfFluxErr", "psfFlux_flag", "psfMag", "psfMagErr", "extendedness"}


def column_ucd(name: str) -> str | None:
    """The UCD of a forced_source (or object) column name; None where no UCD fits."""
    base = name.removeprefix("undeblended_")
    if name in EXACT:
        return EXACT[name]
    for pattern, ucd in PATTERNS:
        if re.search(pattern, base):
            return ucd
    return EXACT.get(base)


def is_principal(name: str) -> bool:
    return name in PRINCIPAL
