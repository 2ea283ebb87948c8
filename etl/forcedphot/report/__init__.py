"""``forcedphot report``: a self-contained HTML page of QA plots over a measured repository.

The numbers come from the SQL library (``sql/examples/*.sql`` and ``sql/report_*.sql``, run through
:func:`forcedphot.query.sql`) and the loaders (:func:`forcedphot.query.load_forced_source`,
:func:`~forcedphot.query.load_object`); the cutouts read the coadds. See :func:`write_report`.
"""

from forcedphot.report.build import write_report

__all__ = ["write_report"]
