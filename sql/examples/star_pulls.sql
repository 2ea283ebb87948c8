-- Answers: how well do PSF fluxes recover the truth? Isolated, unflagged simulated stars, per band:
--   pull = (psfFlux - true flux) / psfFluxErr should have mean ~0 and standard deviation ~1.
-- Parameters: none.
-- Run: forcedphot sql --repo repo --example star_pulls
SELECT f.band,
       count(*) AS n_stars,
       round(avg((f.psfFlux - t.flux) / f.psfFluxErr), 3) AS mean_pull,
       round(stddev((f.psfFlux - t.flux) / f.psfFluxErr), 3) AS std_pull,
       round(median(f.psfMag), 2) AS median_psfMag
FROM forced_source f
JOIN truth t ON f.objectId = t.id AND f.band = t.band
WHERE t.is_star AND t.n_neighbours = 0 AND f.detect_isPrimary AND f.parentObjectId = 0
  AND NOT f.psfFlux_flag AND NOT f.pixelFlags_saturatedCenter AND NOT f.pixelFlags_bad
GROUP BY f.band
ORDER BY f.band;
