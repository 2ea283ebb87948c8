-- Answers: which objects lie within $radius_arcsec of the position ($ra, $dec)? Primary objects of
--   the `object` view, nearest first, with their separation (great-circle distance, haversine) and
--   PSF magnitudes in g, r and i (NULL where a band is missing). Needs bands g, r, i.
-- Parameters: $ra, $dec (deg, ICRS), $radius_arcsec (arcsec), e.g. ra=150.0 dec=2.0 radius_arcsec=10.
-- Run: forcedphot sql --repo repo --example cone_search --param ra=150.0 --param dec=2.0 --param radius_arcsec=10
SELECT objectId, coord_ra, coord_dec, separation_arcsec, g_psfMag, r_psfMag, i_psfMag, r_extendedness
FROM (
    SELECT *,
           3600 * degrees(2 * asin(sqrt(
               sin(radians(coord_dec - $dec) / 2) ^ 2
               + cos(radians($dec)) * cos(radians(coord_dec)) * sin(radians(coord_ra - $ra) / 2) ^ 2))) AS separation_arcsec
    FROM object
    WHERE coord_dec BETWEEN $dec - $radius_arcsec / 3600 AND $dec + $radius_arcsec / 3600
)
WHERE separation_arcsec <= $radius_arcsec
ORDER BY separation_arcsec;
