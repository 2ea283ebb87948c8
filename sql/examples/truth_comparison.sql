-- Answers: how close are the measured fluxes to the true fluxes of a simulated survey, per band and
--   for stars and galaxies? Primary, unflagged sources joined to `truth` on (objectId, band): median
--   ratio of PSF, Kron and 12-pixel aperture flux to the true flux, and the mean and spread of the
--   PSF-flux pull (psfFlux - flux) / psfFluxErr of isolated stars. Empty for surveys without truth.
-- Parameters: none.
-- Run: forcedphot sql --repo repo --example truth_comparison
SELECT f.band,
       CASE WHEN t.is_star THEN 'star' ELSE 'galaxy' END AS kind,
       count(*) AS n,
       round(median(f.psfFlux / t.flux), 4) AS median_psf_ratio,
       round(median(f.kronFlux / t.flux) FILTER (WHERE NOT f.kronFlux_flag), 4) AS median_kron_ratio,
       round(median(f.ap12Flux / t.flux) FILTER (WHERE NOT f.ap12Flux_flag), 4) AS median_ap12_ratio,
       round(avg((f.psfFlux - t.flux) / f.psfFluxErr) FILTER (WHERE t.is_star AND t.n_neighbours = 0), 3) AS mean_psf_pull,
       round(stddev((f.psfFlux - t.flux) / f.psfFluxErr) FILTER (WHERE t.is_star AND t.n_neighbours = 0), 3) AS std_psf_pull
FROM forced_source f
JOIN truth t ON t.id = f.objectId AND t.band = f.band AND t.tract = f.tract AND t.patch = f.patch
WHERE f.detect_isPrimary AND NOT f.psfFlux_flag AND t.flux > 0
GROUP BY ALL
ORDER BY f.band, kind DESC;
