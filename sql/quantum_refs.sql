-- The references of one patch joined to one band's footprints, in reference-file order.
-- has_footprint is false where the band has no footprint for a reference id; fp_row is the
-- footprint's row in the band's footprint table (its spans and values are gathered from there
-- once, by row, so the ragged columns are never copied through the join).
-- Reference columns added by later minor schema versions may be absent from older files;
-- the loader adds them as nulls.
-- deblend_zeroFlux is the footprint's (this band's deblender gave the object no flux; null where no
-- fit was made or the footprint file predates it).
-- Parameters: $ref_file; the band's footprints (without their list columns, plus fp_row) are the
-- registered relation `footprints`
SELECT r.* EXCLUDE (file_row_number),
       f.id IS NOT NULL AS has_footprint,
       f.parent AS footprint_parent,
       f.deblend_zeroFlux,
       f.fp_row,
       f.bbox_min_x AS fp_min_x, f.bbox_min_y AS fp_min_y, f.bbox_max_x AS fp_max_x, f.bbox_max_y AS fp_max_y
FROM read_parquet($ref_file, file_row_number = true) r
LEFT JOIN footprints f ON r.id = f.id
ORDER BY r.file_row_number;
