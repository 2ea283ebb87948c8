-- Answers: how deep is each band? The 5-sigma point-source depth per band, two ways: from the
--   median PSF-flux error (5 x median psfFluxErr as an AB magnitude) and as the median psfMag of the
--   primary sources measured at 4.5 < S/N < 5.5.
-- Parameters: none.
-- Run: forcedphot sql --repo repo --example depth_5sigma
SELECT band,
       count(*) AS n_primary,
       round(-2.5 * log10(5 * median(psfFluxErr)) + 31.4, 2) AS depth_5sigma_from_errors,
       count(*) FILTER (WHERE psfFlux / psfFluxErr BETWEEN 4.5 AND 5.5) AS n_near_5sigma,
       round(median(psfMag) FILTER (WHERE psfFlux / psfFluxErr BETWEEN 4.5 AND 5.5), 2) AS median_psfMag_at_5sigma
FROM forced_source
WHERE detect_isPrimary AND NOT psfFlux_flag AND psfFluxErr > 0
GROUP BY band
ORDER BY band;
