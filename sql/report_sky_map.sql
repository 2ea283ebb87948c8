-- Report (forcedphot report): how are the primary sources spread over the sky, and where are they
--   flagged? Primary sources in ($bin_deg x $bin_deg) cells of (coord_ra, coord_dec), per cell: the
--   objects, the sources (all bands) and the fraction of sources with psfFlux_flag or with any flag set.
-- Parameters: $bin_deg (deg, e.g. 0.002).
-- Run: forcedphot sql --repo repo --file sql/report_sky_map.sql --param bin_deg=0.002
SELECT floor(coord_ra / $bin_deg) * $bin_deg AS ra_bin,
       floor(coord_dec / $bin_deg) * $bin_deg AS dec_bin,
       count(DISTINCT objectId) AS n_objects,
       count(*) AS n_sources,
       avg(psfFlux_flag::INTEGER) AS psf_flag_rate,
       avg(any_flag::INTEGER) AS any_flag_rate
FROM (
    SELECT objectId, coord_ra, coord_dec, psfFlux_flag,
           list_bool_or(list_value(*COLUMNS('_flag|^pixelFlags_'))) AS any_flag
    FROM forced_source
    WHERE detect_isPrimary AND isfinite(coord_ra) AND isfinite(coord_dec)
)
GROUP BY ALL
ORDER BY ra_bin, dec_bin;
