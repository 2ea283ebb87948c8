-- Per-band summary of the forced-source table (printed by `forcedphot run` and `make demo`).
SELECT band,
       count(*) AS n_rows,
       count(*) FILTER (WHERE detect_isPrimary) AS n_primary,
       count(*) FILTER (WHERE psfFlux_flag) AS n_psf_flagged,
       round(median(psfFlux) FILTER (WHERE NOT psfFlux_flag), 1) AS median_psfFlux_nJy,
       round(median(psfFlux / psfFluxErr) FILTER (WHERE NOT psfFlux_flag), 1) AS median_psf_snr
FROM forced_source
GROUP BY band
ORDER BY band;
