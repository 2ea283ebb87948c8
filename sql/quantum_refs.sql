-- The references of one patch joined to one band's footprints, in reference-file order.
-- has_footprint is false where the band has no footprint for a reference id.
-- Reference columns added by later minor schema versions may be absent from older files;
-- the loader adds them as nulls.
-- Parameters: $ref_file; the band's footprints are the registered relation `footprints`
SELECT r.* EXCLUDE (file_row_number),
       f.id IS NOT NULL AS has_footprint,
       f.parent AS footprint_parent,
       f.span_y, f.span_x0, f.span_x1,
       f.bbox_min_x AS fp_min_x, f.bbox_min_y AS fp_min_y, f.bbox_max_x AS fp_max_x, f.bbox_max_y AS fp_max_y,
       f."values" AS fp_values
FROM read_parquet($ref_file, file_row_number = true) r
LEFT JOIN footprints f ON r.id = f.id
ORDER BY r.file_row_number;
