-- The object table (Rubin DP1 Object-style): one row per object, every band's measurements side by side.
-- Rendered by query.object_select() for the bands of the repository (u, g, r, i, z, y first, others
-- after them alphabetically): @band_columns@ repeats the `band_columns` section once per band with
-- @band@ the band name, @colour_columns@ repeats `colour_columns` for each pair of consecutive bands
-- @b1@, @b2@; @primary@ is `detect_isPrimary` (each object once, from the patch whose inner region holds
-- it; no deblended parents) or `true` (every object measured; an objectId belongs to one patch, so
-- a source in a patch overlap is then one row per patch). A band without a measurement of the
-- object gives NULL columns. The per-band columns are forced_source columns; see their descriptions
-- in schemas/forced_source.yaml (or `query.object_columns()`).

-- name: select
SELECT *@colour_columns@
FROM (
    SELECT objectId, tract, patch,
           any_value(parentObjectId) AS parentObjectId,
           any_value(externalId) AS externalId,
           any_value(coord_ra) AS coord_ra,
           any_value(coord_dec) AS coord_dec,
           any_value(refBand) AS refBand,
           any_value(deblend_nChild) AS deblend_nChild,
           bool_or(detect_isPrimary) AS detect_isPrimary,
           any_value(detect_isDuplicate) AS detect_isDuplicate@band_columns@
    FROM forced_source
    WHERE @primary@
    GROUP BY objectId, tract, patch
) AS per_object

-- name: band_columns
, any_value(psfFlux) FILTER (WHERE band = '@band@') AS "@band@_psfFlux"
, any_value(psfFluxErr) FILTER (WHERE band = '@band@') AS "@band@_psfFluxErr"
, any_value(psfFlux_flag) FILTER (WHERE band = '@band@') AS "@band@_psfFlux_flag"
, any_value(psfMag) FILTER (WHERE band = '@band@') AS "@band@_psfMag"
, any_value(psfMagErr) FILTER (WHERE band = '@band@') AS "@band@_psfMagErr"
, any_value(gaussianFlux) FILTER (WHERE band = '@band@') AS "@band@_gaussianFlux"
, any_value(gaussianFluxErr) FILTER (WHERE band = '@band@') AS "@band@_gaussianFluxErr"
, any_value(gaussianFlux_flag) FILTER (WHERE band = '@band@') AS "@band@_gaussianFlux_flag"
, any_value(gaussianMag) FILTER (WHERE band = '@band@') AS "@band@_gaussianMag"
, any_value(gaussianMagErr) FILTER (WHERE band = '@band@') AS "@band@_gaussianMagErr"
, any_value(kronFlux) FILTER (WHERE band = '@band@') AS "@band@_kronFlux"
, any_value(kronFluxErr) FILTER (WHERE band = '@band@') AS "@band@_kronFluxErr"
, any_value(kronFlux_flag) FILTER (WHERE band = '@band@') AS "@band@_kronFlux_flag"
, any_value(kronRad) FILTER (WHERE band = '@band@') AS "@band@_kronRad"
, any_value(kronMag) FILTER (WHERE band = '@band@') AS "@band@_kronMag"
, any_value(kronMagErr) FILTER (WHERE band = '@band@') AS "@band@_kronMagErr"
, any_value(ap06Flux) FILTER (WHERE band = '@band@') AS "@band@_ap06Flux"
, any_value(ap06FluxErr) FILTER (WHERE band = '@band@') AS "@band@_ap06FluxErr"
, any_value(ap06Flux_flag) FILTER (WHERE band = '@band@') AS "@band@_ap06Flux_flag"
, any_value(ap12Flux) FILTER (WHERE band = '@band@') AS "@band@_ap12Flux"
, any_value(ap12FluxErr) FILTER (WHERE band = '@band@') AS "@band@_ap12FluxErr"
, any_value(ap12Flux_flag) FILTER (WHERE band = '@band@') AS "@band@_ap12Flux_flag"
, any_value(extendedness) FILTER (WHERE band = '@band@') AS "@band@_extendedness"
, any_value(extendedness_flag) FILTER (WHERE band = '@band@') AS "@band@_extendedness_flag"
, any_value(inputCount) FILTER (WHERE band = '@band@') AS "@band@_inputCount"
, any_value(pixelFlags_bad) FILTER (WHERE band = '@band@') AS "@band@_pixelFlags_bad"
, any_value(pixelFlags_edge) FILTER (WHERE band = '@band@') AS "@band@_pixelFlags_edge"
, any_value(pixelFlags_saturatedCenter) FILTER (WHERE band = '@band@') AS "@band@_pixelFlags_saturatedCenter"

-- name: colour_columns
, "@b1@_psfMag" - "@b2@_psfMag" AS "@b1@_@b2@_psfColor"
, sqrt("@b1@_psfMagErr" ^ 2 + "@b2@_psfMagErr" ^ 2) AS "@b1@_@b2@_psfColorErr"
, "@b1@_gaussianMag" - "@b2@_gaussianMag" AS "@b1@_@b2@_gaussianColor"
, sqrt("@b1@_gaussianMagErr" ^ 2 + "@b2@_gaussianMagErr" ^ 2) AS "@b1@_@b2@_gaussianColorErr"
