-- Report (forcedphot report): measured against true fluxes, source by source. Primary sources with an
--   unflagged PSF flux joined to `truth` on (objectId, band, tract, patch): the true flux, the PSF flux
--   and its error, star or galaxy and the number of neighbours (isolated: 0). Empty without truth.
-- Parameters: none.
-- Run: forcedphot sql --repo repo --file sql/report_truth_sources.sql
SELECT f.band, t.is_star, t.n_neighbours, t.flux AS true_flux, f.psfFlux, f.psfFluxErr
FROM forced_source f
JOIN truth t ON t.id = f.objectId AND t.band = f.band AND t.tract = f.tract AND t.patch = f.patch
WHERE f.detect_isPrimary AND NOT f.psfFlux_flag AND t.flux > 0 AND f.psfFluxErr > 0
ORDER BY f.band, t.id;
