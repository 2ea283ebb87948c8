"""Exceptions with one-line messages that name the file, data ID or object ids."""

from __future__ import annotations


class ForcedPhotError(Exception):
    """Base class: the CLI prints ``str(exc)`` as the one-line cause and exits non-zero."""


class InputError(ForcedPhotError):
    """An input file is missing, unreadable or inconsistent."""


class SchemaError(ForcedPhotError):
    """A table does not match its schema file."""


class SchemaVersionError(SchemaError):
    """A file was written with a schema major version this code does not know."""


class MissingFootprintError(ForcedPhotError, LookupError):
    """Reference ids with no footprint in the band (the seed task's ``LookupError``)."""

    def __init__(self, data_id: str, ids: list[int]):
        self.data_id = data_id
        self.ids = list(ids)
        shown = ", ".join(str(i) for i in self.ids[:20])
        more = f" (+{len(self.ids) - 20} more)" if len(self.ids) > 20 else ""
        super().__init__(
            f"{data_id}: {len(self.ids)} reference id(s) have no footprint: {shown}{more}; "
            "check that the footprint ids are compatible with the reference ids"
        )


class QuantumError(ForcedPhotError):
    """A quantum failed; other quanta still run."""


class QueryError(ForcedPhotError):
    """A SQL query over the repository failed (syntax, unknown column...)."""
