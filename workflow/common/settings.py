"""Typed settings: a config section as a frozen dataclass whose field names are the schema's keys.

The rules hand each job the settings it depends on as JSON (``--settings``), made from the validated config by
the settings class itself (:meth:`Settings.of`); the script turns the JSON back into the class
(:meth:`Settings.from_json`) and the library reads attributes, never raw dicts. The JSON schema
(``resources/config.schema.yaml``) has already filled the defaults and checked every value, so conversion
only builds nested settings classes and turns lists into tuples; a key the class does not know is an error
naming it, so a section and its class cannot drift apart (tests/test_settings.py checks every class against
the schema).

A class declares where its section is (``SECTION``, e.g. ``("diffusion", "train")``). Keys that are the
job's resources rather than settings of the computation (``gpus``: ``resources: gpu=`` of the rule) are left
out, so changing them never reruns a job. A schema key that is not a Python name (``mimic-cxr``) is given as
the field's ``key`` metadata: ``field(metadata={"key": "mimic-cxr"})``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from workflow.common.errors import InputError

RESOURCE_KEYS = frozenset({"gpus"})


def config_key(field: dataclasses.Field) -> str:
    """The schema key of a settings field (its name, or its ``key`` metadata)."""
    return field.metadata.get("key", field.name)


def section(config: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    """The config section at ``path`` (e.g. ``("diffusion", "train")``)."""
    for key in path:
        config = config[key]
    return config


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every stage's settings classes (module docstring)."""

    SECTION: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        """The settings of ``config``'s section ``SECTION`` (validated config), less its resource keys."""
        if not cls.SECTION:
            raise TypeError(f"{cls.__name__} is part of a section; build that section's settings instead")
        values = section(config, cls.SECTION)
        return cls.from_dict({k: v for k, v in values.items() if k not in RESOURCE_KEYS})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], key: str | None = None) -> Self:
        """Build the settings from a mapping with exactly the class's keys (nested sections included).

        Raises:
            InputError: naming the config key that is unknown or missing.
        """
        key = key or ".".join(cls.SECTION) or cls.__name__
        hints = typing.get_type_hints(cls)
        known = {config_key(f): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"{key}: unknown setting(s) {unknown}; known: {sorted(known)}")
        converted = {}
        for name, field in known.items():
            if name in values:
                converted[field.name] = _convert(hints[field.name], values[name], f"{key}.{name}")
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise InputError(f"{key}.{name} is missing")
        return cls(**converted)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Build the settings from the JSON a rule passed (:meth:`to_json`)."""
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        """The settings as the config mapping they came from (schema keys, lists for tuples)."""
        return {config_key(f): _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        """The settings as one JSON string, what a rule hands its script (mappings keep their order: a
        mapping of sampling weights draws differently in another order)."""
        return json.dumps(self.to_dict())


def _plain(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _convert(hint: Any, value: Any, key: str) -> Any:
    """``value`` as the annotated type: nested settings built, lists as tuples, optionals passed through."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in args if a is not type(None)]
        return _convert(options[0], value, key) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Settings):
        if not isinstance(value, Mapping):
            raise InputError(f"{key} must be a mapping, got {value!r}")
        return hint.from_dict(value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(f"{key} must be a list, got {value!r}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        pairs = enumerate(zip(items, value, strict=False))
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in pairs)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        value_hint = args[1] if len(args) == 2 else Any
        return {k: _convert(value_hint, v, f"{key}.{k}") for k, v in value.items()}
    return value
