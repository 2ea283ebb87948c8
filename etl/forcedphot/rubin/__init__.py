"""forcedphot inside Rubin's middleware (``pip install forcedphot[rubin]``, Python >= 3.12).

* :class:`ForcedPhotCoaddTask` / :class:`ForcedPhotObjectTask`: PipelineTasks that ``pipetask run`` executes
  (``pipeline.yaml`` in this package: :data:`PIPELINE`);
* :func:`forcedphot.rubin.export.export_butler`: a butler repository from a forcedphot repository
  (``forcedphot export butler``);
* :mod:`forcedphot.rubin.datasets`: the dataset types and the conversions.
"""

from __future__ import annotations

from importlib.resources import files

from forcedphot.rubin.tasks import (ForcedPhotCoaddConfig, ForcedPhotCoaddTask, ForcedPhotObjectConfig,
                                    ForcedPhotObjectTask)

PIPELINE = str(files("forcedphot.rubin") / "pipeline.yaml")

__all__ = ["PIPELINE", "ForcedPhotCoaddConfig", "ForcedPhotCoaddTask", "ForcedPhotObjectConfig",
           "ForcedPhotObjectTask"]
