-- Answers: where do bright objects lie in the (g - r, r - i) colour-colour plane, and which are point
--   sources? Counts of primary objects with S/N >= $min_snr in g, r and i (unflagged PSF fluxes) in
--   0.1-mag cells of g_r_psfColor x r_i_psfColor, split by r-band extendedness. Needs bands g, r, i.
-- Parameters: $min_snr (e.g. 20).
-- Run: forcedphot sql --repo repo --example colour_colour --param min_snr=20
SELECT round(floor(g_r_psfColor * 10) / 10, 1) AS g_r_bin,
       round(floor(r_i_psfColor * 10) / 10, 1) AS r_i_bin,
       count(*) FILTER (WHERE r_extendedness = 0) AS n_point,
       count(*) FILTER (WHERE r_extendedness = 1) AS n_extended,
       count(*) AS n
FROM object
WHERE NOT (g_psfFlux_flag OR r_psfFlux_flag OR i_psfFlux_flag)
  AND g_psfFlux / g_psfFluxErr >= $min_snr
  AND r_psfFlux / r_psfFluxErr >= $min_snr
  AND i_psfFlux / i_psfFluxErr >= $min_snr
GROUP BY ALL
ORDER BY g_r_bin, r_i_bin;
