-- Answers: how are the PSF-flux signal-to-noise ratios distributed, per band? Counts of primary,
--   unflagged sources in bins of log10(psfFlux / psfFluxErr) (S/N <= 0 in the bin "<= 0").
-- Parameters: $bins_per_decade (e.g. 4: bins of 0.25 in log10 S/N).
-- Run: forcedphot sql --repo repo --example snr_histogram --param bins_per_decade=4
SELECT band,
       CASE WHEN psfFlux <= 0 THEN '<= 0'
            ELSE printf('%.2f', floor(log10(psfFlux / psfFluxErr) * $bins_per_decade) / $bins_per_decade) END
           AS log10_snr_bin,
       min(psfFlux / psfFluxErr) AS snr_min,
       count(*) AS n
FROM forced_source
WHERE detect_isPrimary AND NOT psfFlux_flag AND psfFluxErr > 0
GROUP BY ALL
ORDER BY band, snr_min;
