-- The object table (Rubin LSSTCam Object-style): one row per object, every band's measurements side by side.
-- Rendered by query.object_select() for the bands of the repository (u, g, r, i, z, y first, others
-- after them alphabetically): @band_joins@ is the `band_join` section once per band (@band@), whose
-- @band_columns@ is the `band_column` line once per entry of objects.BAND_COLUMNS (@name@ Rubin's
-- lsstcam Object name, @source@ the forced_source column, @type@ the view's type); @colour_columns@
-- repeats `colour_columns` for each pair of consecutive bands @b1@, @b2@; @primary@ is
-- `detect_isPrimary` (each object once, from the patch whose inner region holds it; no deblended
-- parents) or `true` (every object measured; an objectId belongs to one patch, so a source in a patch
-- overlap is then one row per patch). A band without a measurement of the object gives NULL columns.
-- Each band is a projection of its own rows joined on (objectId, tract, patch), not a filtered
-- aggregate per column: a forced_source row is one (objectId, tract, patch, band). `objects.object_columns()`
-- describes every column.

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
           any_value(detect_isDuplicate) AS detect_isDuplicate
    FROM forced_source
    WHERE @primary@
    GROUP BY objectId, tract, patch
) AS per_object@band_joins@

-- name: band_join
LEFT JOIN (
    SELECT objectId, tract, patch@band_columns@
    FROM forced_source
    WHERE band = '@band@' AND @primary@
) AS "band_@band@" USING (objectId, tract, patch)

-- name: band_column
, CAST(@source@ AS @type@) AS "@band@_@name@"

-- name: colour_columns
, CAST("@b1@_psfMag" - "@b2@_psfMag" AS FLOAT) AS "@b1@_@b2@_psfColor"
, CAST(sqrt("@b1@_psfMagErr" ^ 2 + "@b2@_psfMagErr" ^ 2) AS FLOAT) AS "@b1@_@b2@_psfColorErr"
, CAST("@b1@_gaussianMag" - "@b2@_gaussianMag" AS FLOAT) AS "@b1@_@b2@_gaussianColor"
, CAST(sqrt("@b1@_gaussianMagErr" ^ 2 + "@b2@_gaussianMagErr" ^ 2) AS FLOAT) AS "@b1@_@b2@_gaussianColorErr"
