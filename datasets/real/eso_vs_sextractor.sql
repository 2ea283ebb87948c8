-- ESO NTT image against SExtractor (image.cat through reference_sql.py --as sex): our flux over
-- FLUX_AUTO (kron: undeblended forced Kron on SExtractor's own ellipse) and over FLUX_APER (radius 5 px; the schema's
-- apertures are 4.5 and 6 px, so ap5 is the curve of growth interpolated linearly in radius to 5 px).
-- SExtractor FLAGS = 0 only; pixels are taken as nJy (--assume-njy), so fluxes are image units.
, m AS (
  SELECT s.*, f.kronFlux_flag, f.undeblended_kronFlux AS kron, f.ap04p5Flux AS a45, f.ap06Flux AS a6,
         f.undeblended_ap04p5Flux AS ua45, f.undeblended_ap06Flux AS ua6
  FROM forced_source f JOIN sex s ON s.NUMBER = f.externalId
  WHERE f.deblend_nChild = 0 AND s.FLAGS = 0)
, r AS (
  SELECT 'kron / FLUX_AUTO' AS ratio, kron / FLUX_AUTO AS v FROM m WHERE NOT kronFlux_flag
  UNION ALL SELECT 'ap4.5 / FLUX_APER', a45 / FLUX_APER FROM m
  UNION ALL SELECT 'ap6 / FLUX_APER', a6 / FLUX_APER FROM m
  UNION ALL SELECT 'ap5 / FLUX_APER', (a45 + (a6 - a45) / 3) / FLUX_APER FROM m
  UNION ALL SELECT 'ap5 undeblended / FLUX_APER', (ua45 + (ua6 - ua45) / 3) / FLUX_APER FROM m)
SELECT ratio, count(v) AS n, round(quantile_cont(v, 0.16), 4) AS p16, round(median(v), 4) AS median,
       round(quantile_cont(v, 0.84), 4) AS p84
FROM r GROUP BY ratio ORDER BY ratio
