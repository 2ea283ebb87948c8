-- HSC blend against scarlet's SEP catalog (catalog.csv of hsc_npz_to_fits.py through reference_sql.py
-- --as sep): SEP measured isophotal fluxes (4 sigma) on the mean of the g r i z y images, so each flux
-- here is the mean over the five bands, in image units (zero point 27: 57.544 nJy per unit), over
-- sep_flux; deblended (neighbours replaced by noise) and undeblended (original image). The blend's zero
-- weights (pixels outside its footprint) are NO_DATA, so every PSF flux carries psfFlux_flag_edge: flags
-- are reported, not applied.
SELECT s.id, any_value(f.parentObjectId <> 0) AS in_blend, round(any_value(s.sep_flux), 2) AS sep_flux,
       round(avg(f.psfFlux) / 57.544 / any_value(s.sep_flux), 3) AS psf,
       round(avg(f.undeblended_psfFlux) / 57.544 / any_value(s.sep_flux), 3) AS psf_undeblended,
       round(avg(f.ap06Flux) / 57.544 / any_value(s.sep_flux), 3) AS ap6,
       round(avg(f.undeblended_ap06Flux) / 57.544 / any_value(s.sep_flux), 3) AS ap6_undeblended,
       round(avg(f.kronFlux) / 57.544 / any_value(s.sep_flux), 3) AS kron,
       round(avg(f.undeblended_kronFlux) / 57.544 / any_value(s.sep_flux), 3) AS kron_undeblended
FROM forced_source f JOIN sep s ON s.id = f.externalId
WHERE f.deblend_nChild = 0
GROUP BY s.id ORDER BY s.id
