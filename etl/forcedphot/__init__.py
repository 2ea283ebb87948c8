"""forcedphot: forced photometry on coadds as a columnar ETL job.

Data flow (one module per stage)::

    datasets (repository, sim) -> plan (SQL) -> quantum loader -> source pixels (stages)
      -> plugins -> calibrate -> writer -> query
"""

__all__ = ["__version__"]


def __getattr__(name: str):
    """``__version__``, read from the installed package's metadata when first asked for (importing
    ``importlib.metadata`` costs more than the rest of ``forcedphot --help``)."""
    if name != "__version__":
        raise AttributeError(f"module 'forcedphot' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("forcedphot")
    except PackageNotFoundError:  # running from a source tree without install
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
