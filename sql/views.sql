-- Views over a forcedphot repository for `forcedphot sql` and query.connect(), created in this order.
-- @files(NAME)@ is the repository's Parquet files of dataset NAME (a repository dataset, or any folder
-- <root>/NAME whose columns are schemas/NAME.yaml), checked (readable, written by
-- forcedphot with a schema major version this code reads) and handed to DuckDB as an Arrow dataset with
-- the columns of schemas/NAME.yaml: files of an older minor version read their missing columns as NULL,
-- and a dataset with no files yet is an empty view with those columns. DuckDB itself has no file access,
-- so a view cannot read a path (@root@ is refused).
-- @object_select@ is sql/object.sql rendered for the bands of the repository (see query.py).

-- name: forced_source
CREATE OR REPLACE VIEW forced_source AS SELECT * FROM @files(forced_source)@;

-- name: ref
CREATE OR REPLACE VIEW ref AS SELECT * FROM @files(ref)@;

-- name: truth
CREATE OR REPLACE VIEW truth AS SELECT * FROM @files(truth)@;

-- name: skymap
CREATE OR REPLACE VIEW skymap AS SELECT * FROM @files(skymap)@;

-- name: object
CREATE OR REPLACE VIEW object AS @object_select@;
