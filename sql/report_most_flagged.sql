-- Report (forcedphot report): which objects carry the most flags? For each primary object its most
--   flagged band (ties: the first band alphabetically) with the number and names of the flags set there
--   (boolean `*_flag*` and `pixelFlags_*` columns), the forced position in tract pixels and the PSF flux;
--   the $n_objects objects with most flags, then by objectId.
-- Parameters: $n_objects (e.g. 12).
-- Run: forcedphot sql --repo repo --file sql/report_most_flagged.sql --param n_objects=12
WITH flag_values AS (
    UNPIVOT (SELECT objectId, tract, patch, band, COLUMNS('_flag|^pixelFlags_')
             FROM forced_source WHERE detect_isPrimary)
    ON COLUMNS(* EXCLUDE (objectId, tract, patch, band))
    INTO NAME flag VALUE is_set
), per_source AS (
    SELECT objectId, tract, patch, band,
           count(*) FILTER (WHERE is_set) AS n_flags,
           string_agg(flag, ', ' ORDER BY flag) FILTER (WHERE is_set) AS flags_set
    FROM flag_values
    GROUP BY ALL
)
SELECT p.objectId, p.tract, p.patch, p.band, p.n_flags, p.flags_set,
       f.centroid_x, f.centroid_y, f.psfFlux, f.psfFluxErr
FROM per_source p
JOIN forced_source f USING (objectId, tract, patch, band)
WHERE p.n_flags > 0
QUALIFY row_number() OVER (PARTITION BY p.objectId ORDER BY p.n_flags DESC, p.band) = 1
ORDER BY p.n_flags DESC, p.objectId
LIMIT $n_objects;
