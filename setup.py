"""Packaging beyond pyproject.toml: the top-level ``sql/``, ``schemas/`` and ``datasets/`` folders ship
inside the package as ``forcedphot.sql``, ``forcedphot.schemas`` and ``forcedphot.datasets``
(read with ``importlib.resources``; see ``etl/forcedphot/resources.py``)."""

from setuptools import find_packages, setup

PACKAGE_DATA = {"sql": ["*.sql"], "sql.examples": ["*.sql"], "datasets": ["*.toml"], "datasets.real": ["*.py", "*.sql"],
                "schemas": ["*.yaml", "migrations/*.yaml", "history/*/*.yaml"]}  # older majors: schema.migrate

setup(
    packages=find_packages("etl") + [f"forcedphot.{name}" for name in PACKAGE_DATA],
    package_dir={"": "etl", **{f"forcedphot.{name}": name.replace(".", "/") for name in PACKAGE_DATA}},
    package_data={**{f"forcedphot.{name}": globs for name, globs in PACKAGE_DATA.items()},
                  "forcedphot.rubin": ["pipeline.yaml"]},  # the PipelineTask's pipeline (pipetask run -p)
)
