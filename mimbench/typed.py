"""Config values checked against their type annotations, converted where that is unambiguous
(a YAML 3 for a float is 3.0); anything else is refused in one sentence naming the key."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Literal

from mimbench.errors import ConfigError, did_you_mean


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is unambiguous."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"'{key}' must be one of {', '.join(map(repr, allowed))}, "
                              f"not {value!r}{did_you_mean(str(value), map(str, allowed))}.")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"'{key}' must be a list, not {value!r}.")
            return tuple(coerce(v, args[0], key) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"'{key}' must be a list of {len(args)} values, not {value!r}.")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, not {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, not {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, not {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, not {value!r}.")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, not {value!r}.")
        return dict(value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def annotations(factory: Callable) -> dict[str, Any]:
    """The resolved parameter annotations of a factory function or class ({} if unresolvable)."""
    try:
        return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # annotations naming what the module cannot import: no conversion
        return {}
