-- Answers: how are the PSF magnitudes distributed, per band (number counts)? Primary, unflagged
--   sources with a finite psfMag in bins of $bin_width magnitudes (bin = its lower edge).
-- Parameters: $bin_width (mag, e.g. 0.5).
-- Run: forcedphot sql --repo repo --example mag_histogram --param bin_width=0.5
SELECT band,
       floor(psfMag / $bin_width) * $bin_width AS psfMag_bin,
       count(*) AS n
FROM forced_source
WHERE detect_isPrimary AND NOT psfFlux_flag AND isfinite(psfMag)
GROUP BY ALL
ORDER BY band, psfMag_bin;
