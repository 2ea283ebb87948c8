-- Views over a forcedphot repository for `forcedphot sql` and query.connect().
-- @root@ is replaced by the repository path as a quoted SQL string.
-- union_by_name keeps the views valid across schema minor versions (added columns read as NULL).

-- name: forced_source
CREATE OR REPLACE VIEW forced_source AS
SELECT * FROM read_parquet(@root@ || '/forced_source/**/*.parquet', hive_partitioning = true, union_by_name = true);

-- name: ref
CREATE OR REPLACE VIEW ref AS
SELECT * FROM read_parquet(@root@ || '/ref/**/*.parquet', hive_partitioning = true, union_by_name = true);

-- name: truth
CREATE OR REPLACE VIEW truth AS
SELECT * FROM read_parquet(@root@ || '/truth/**/*.parquet', hive_partitioning = true, union_by_name = true);

-- name: skymap
CREATE OR REPLACE VIEW skymap AS
SELECT * FROM read_parquet(@root@ || '/skymap/skymap.parquet');
