"""The real-data recipes' helper scripts (README "Real data"), installed with the package:
``python -m forcedphot.datasets.real.hsc_npz_to_fits ...`` runs one without a source checkout."""
