-- Footprint ids of one band that match no reference id (counted and reported, never dropped silently).
-- Parameters: $ref_file; the band's footprints are the registered relation `footprints`
SELECT f.id
FROM footprints f
ANTI JOIN read_parquet($ref_file) r ON f.id = r.id
ORDER BY f.id;
