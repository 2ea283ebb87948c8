-- HSC forced at HST/ACS positions (hst_catalog.csv of hsc_hst_to_fits.py through reference_sql.py --as hst):
-- per HST source, the HSC i-band centroid measured at the forced position (sdssCentroid) minus that
-- position, in arcsec (0.168"/px), and the HSC i-band fluxes (image units, zero point 27) over the HST
-- segment flux: one ratio across sources if the i - F814W colours are alike (the HST units are not
-- calibrated here, so only the spread of the ratio means something). Deblended: noise replacement.
SELECT h.id, round(any_value(h.hst_flux), 1) AS hst_flux,
       round(any_value(f.sdssCentroid_x - f.centroid_x) * 0.168, 3) AS dx_arcsec,
       round(any_value(f.sdssCentroid_y - f.centroid_y) * 0.168, 3) AS dy_arcsec,
       round(any_value(f.psfFlux) / 57.544 / any_value(h.hst_flux), 4) AS i_psf_over_hst,
       round(any_value(f.undeblended_psfFlux) / 57.544 / any_value(h.hst_flux), 4) AS i_psf_undeblended_over_hst,
       round(any_value(f.ap06Flux) / 57.544 / any_value(h.hst_flux), 4) AS i_ap6_over_hst,
       any_value(f.psfFlux_flag) AS psf_flag
FROM forced_source f JOIN hst h ON h.id = f.externalId
WHERE f.band = 'i' AND f.deblend_nChild = 0
GROUP BY h.id ORDER BY h.id
