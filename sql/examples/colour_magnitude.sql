-- Answers: which point sources fall in a region of the (g - r, r) colour-magnitude diagram? Primary
--   objects of the `object` view with unflagged g and r PSF fluxes, r-band extendedness 0 (point-like),
--   $r_min <= r_psfMag < $r_max and $colour_min <= g_r_psfColor < $colour_max. Needs bands g and r.
-- Parameters: $r_min, $r_max (mag), $colour_min, $colour_max (mag), e.g. 16, 24, 0, 1.
-- Run: forcedphot sql --repo repo --example colour_magnitude --param r_min=16 --param r_max=24 \
--        --param colour_min=0 --param colour_max=1
SELECT objectId, coord_ra, coord_dec,
       round(r_psfMag, 3) AS r_psfMag, round(r_psfMagErr, 3) AS r_psfMagErr,
       round(g_r_psfColor, 3) AS g_r_psfColor, round(g_r_psfColorErr, 3) AS g_r_psfColorErr
FROM object
WHERE NOT g_psfFlux_flag AND NOT r_psfFlux_flag AND r_extendedness = 0
  AND r_psfMag >= $r_min AND r_psfMag < $r_max
  AND g_r_psfColor >= $colour_min AND g_r_psfColor < $colour_max
ORDER BY r_psfMag;
