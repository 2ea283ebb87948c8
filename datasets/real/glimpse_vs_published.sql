-- GLIMPSE IRAC 4.5 um mosaic against the published catalog (spitzer_example_catalog.xml through
-- reference_sql.py --row row --as glimpse): our fluxes (nJy) over f4_5 (mJy -> nJy), joined by catalog
-- row (the catalog has no id column, so externalId is each row's 0-based number in the file), PSF flux
-- and its undeblended twin, the 3 px (3.6 arcsec) aperture with no aperture correction, and the Kron
-- flux; the pull is (psfFlux - f4_5) over the two errors in quadrature. Sources without a flag on that
-- flux; n of 'rows joined' counts the catalog rows joined.
, m AS (
  SELECT f.*, g.f4_5 * 1e6 AS pub, g.df4_5 * 1e6 AS pub_err
  FROM forced_source f JOIN glimpse g ON g.row = f.externalId
  WHERE f.deblend_nChild = 0)
, r AS (
  SELECT 'psfFlux / f4_5' AS ratio, psfFlux / pub AS v FROM m WHERE NOT psfFlux_flag
  UNION ALL SELECT 'undeblended_psfFlux / f4_5', undeblended_psfFlux / pub FROM m WHERE NOT undeblended_psfFlux_flag
  UNION ALL SELECT 'ap03Flux / f4_5', ap03Flux / pub FROM m WHERE NOT ap03Flux_flag
  UNION ALL SELECT 'kronFlux / f4_5', kronFlux / pub FROM m WHERE NOT kronFlux_flag
  UNION ALL SELECT 'psf pull', (psfFlux - pub) / sqrt(psfFluxErr ^ 2 + pub_err ^ 2) FROM m WHERE NOT psfFlux_flag
  UNION ALL SELECT 'rows joined', 1.0 FROM m)
SELECT ratio, count(v) AS n, round(quantile_cont(v, 0.16), 3) AS p16, round(median(v), 3) AS median,
       round(quantile_cont(v, 0.84), 3) AS p84
FROM r GROUP BY ratio ORDER BY ratio
