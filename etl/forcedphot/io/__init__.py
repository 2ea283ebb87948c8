"""File formats: atomic writes, schema-stamped Parquet, memory-mapped Arrow coadds."""
