-- The references of one patch joined to one band's footprints, in reference-file order.
-- has_footprint is false where the band has no footprint for a reference id.
-- Parameters: $ref_file, $footprints_file
SELECT r.id, r.parent, r.tract, r.patch, r.coord_ra, r.coord_dec, r.centroid_x, r.centroid_y,
       r.shape_xx, r.shape_yy, r.shape_xy, r.kron_radius, r.deblend_nChild, r.detect_isPrimary, r.refBand,
       f.id IS NOT NULL AS has_footprint,
       f.parent AS footprint_parent,
       f.span_y, f.span_x0, f.span_x1
FROM read_parquet($ref_file, file_row_number = true) r
LEFT JOIN read_parquet($footprints_file) f ON r.id = f.id
ORDER BY r.file_row_number;
