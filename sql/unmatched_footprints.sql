-- Footprint ids of one band that match no reference id (counted and reported, never dropped silently).
-- Parameters: $ref_file, $footprints_file
SELECT f.id
FROM read_parquet($footprints_file) f
ANTI JOIN read_parquet($ref_file) r ON f.id = r.id
ORDER BY f.id;
