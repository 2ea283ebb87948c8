-- Every quantum (tract, patch, band) that has a coadd or footprints, with its input files
-- and the inputs it lacks (heavy footprints; the planner swaps in the scarlet model data when
-- the run derives footprints from it). A quantum is ready when `missing` is empty.
-- Parameters: $coadd_glob, $footprints_glob, $ref_glob, $scarlet_glob, $skymap_file
WITH coadds AS (
    SELECT CAST(regexp_extract(file, 'tract=(-?\d+)', 1) AS BIGINT) AS tract,
           CAST(regexp_extract(file, 'patch=(\d+)', 1) AS BIGINT) AS patch,
           regexp_extract(file, 'band=([^/\\]+)', 1) AS band,
           file AS coadd_file
    FROM glob($coadd_glob)
), footprints AS (
    SELECT CAST(regexp_extract(file, 'tract=(-?\d+)', 1) AS BIGINT) AS tract,
           CAST(regexp_extract(file, 'patch=(\d+)', 1) AS BIGINT) AS patch,
           regexp_extract(file, 'band=([^/\\]+)', 1) AS band,
           file AS footprints_file
    FROM glob($footprints_glob)
), refs AS (
    SELECT CAST(regexp_extract(file, 'tract=(-?\d+)', 1) AS BIGINT) AS tract,
           CAST(regexp_extract(file, 'patch=(\d+)', 1) AS BIGINT) AS patch,
           file AS ref_file
    FROM glob($ref_glob)
), scarlet AS (
    SELECT CAST(regexp_extract(file, 'tract=(-?\d+)', 1) AS BIGINT) AS tract,
           CAST(regexp_extract(file, 'patch=(\d+)', 1) AS BIGINT) AS patch,
           file AS scarlet_file
    FROM glob($scarlet_glob)
), skymap AS (
    SELECT tract, patch FROM read_parquet($skymap_file)
), quanta AS (
    SELECT coalesce(c.tract, f.tract) AS tract, coalesce(c.patch, f.patch) AS patch,
           coalesce(c.band, f.band) AS band, c.coadd_file, f.footprints_file
    FROM coadds c FULL OUTER JOIN footprints f USING (tract, patch, band)
)
SELECT q.tract, q.patch, q.band, r.ref_file, q.footprints_file, q.coadd_file, m.scarlet_file,
       [m FOR m IN [
           CASE WHEN s.patch IS NULL THEN 'skymap' END,
           CASE WHEN r.ref_file IS NULL THEN 'ref' END,
           CASE WHEN q.footprints_file IS NULL THEN 'footprints' END,
           CASE WHEN q.coadd_file IS NULL THEN 'coadd' END
       ] IF m IS NOT NULL] AS missing
FROM quanta q
LEFT JOIN refs r USING (tract, patch)
LEFT JOIN scarlet m USING (tract, patch)
LEFT JOIN skymap s USING (tract, patch)
ORDER BY q.tract, q.patch, q.band;
