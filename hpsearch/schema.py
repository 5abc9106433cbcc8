"""Mapping -> frozen dataclass, with the checks every config section needs.

Written here rather than taken from pydantic/attrs to keep the dependency list to the one the
project promises; it is ~100 lines and covers exactly what study files use: scalars, optional
scalars, tuples of scalars and nested dataclasses, unknown keys with a close-match suggestion,
and the PyYAML quirk that `1e-5` loads as a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

from hpsearch.errors import ConfigError

T = TypeVar("T")


def suggest(word: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(mapping: dict, valid: typing.Iterable[str], where: str) -> None:
    valid = list(valid)
    for key in mapping:
        if key not in valid:
            raise ConfigError(
                f"{where}: unknown key '{key}'{suggest(str(key), valid)}; valid keys: {', '.join(valid)}"
            )


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a ConfigError naming `where`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        item = args[0]
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {value!r}")
        return build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads `1e-5` (no dot) as a string; accept it as the number it means.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: must be a string, got {value!r}")
    return value


def build(cls: type[T], mapping: dict, where: str) -> T:
    """Build dataclass `cls` from `mapping`: unknown keys and wrong types are ConfigErrors.

    The dataclass's `__post_init__` checks invariants; a ValueError it raises is re-raised as a
    ConfigError prefixed with `where`.
    """
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: must be a mapping, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(mapping, fields, where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in mapping.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def as_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj
