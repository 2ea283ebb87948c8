"""``lsst.pex.config`` fields generated from forcedphot's own config (one definition of the options).

Every field of :class:`forcedphot.config.ForcedPhotConfig` becomes a pex_config field of the same name,
default and documentation (the description of :class:`forcedphot.config_schema.ConfigSchema`): a
``Literal`` option a ``ChoiceField``, a tuple option a ``ListField`` of its element type, the others a
``Field`` of their type. ``validate()`` builds the :class:`ForcedPhotConfig` (so pydantic's ranges and
cross-checks apply, with forcedphot's one-line messages), and :func:`to_forcedphot` converts.
"""

from __future__ import annotations

import typing
from dataclasses import fields

from lsst.pex.config import ChoiceField, Field, ListField

from forcedphot.config import ForcedPhotConfig


def _plain(annotation):
    """``Annotated[str, Strict()]`` -> ``str``."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def make_fields() -> dict[str, Field]:
    """One pex_config field per :class:`ForcedPhotConfig` option, in its order."""
    from forcedphot.config_schema import ConfigSchema

    defaults = ForcedPhotConfig()
    out = {}
    for f in fields(ForcedPhotConfig):
        info = ConfigSchema.model_fields[f.name]
        doc = info.description or f.name
        default = getattr(defaults, f.name)
        ann = _plain(info.annotation)
        origin = typing.get_origin(ann)
        if origin is typing.Literal:
            out[f.name] = ChoiceField(doc=doc, dtype=str, default=default,
                                      allowed={v: f"{f.name} = {v!r}" for v in typing.get_args(ann)})
        elif origin in (tuple, list):
            item = _plain(typing.get_args(ann)[0])
            choices = typing.get_args(item) if typing.get_origin(item) is typing.Literal else None
            dtype = str if choices else item
            out[f.name] = ListField(doc=doc, dtype=dtype, default=list(default),
                                    itemCheck=(lambda v, c=choices: v in c) if choices else None)
        else:
            out[f.name] = Field(doc=doc, dtype=ann, default=default)
    return out


OPTION_NAMES = tuple(f.name for f in fields(ForcedPhotConfig))


def to_forcedphot(config) -> ForcedPhotConfig:
    """The :class:`ForcedPhotConfig` of a pex_config config carrying the generated fields (validated)."""
    values = {}
    for name in OPTION_NAMES:
        value = getattr(config, name)
        values[name] = value if isinstance(value, (str, int, float, bool)) else tuple(value)  # a pex List
    return ForcedPhotConfig(**values)
