"""forcedphot: forced photometry on coadds as a columnar ETL job.

Data flow (one module per stage)::

    datasets (repository, sim) -> plan (SQL) -> quantum loader -> source pixels (stages)
      -> plugins -> calibrate -> writer -> query
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("forcedphot")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
