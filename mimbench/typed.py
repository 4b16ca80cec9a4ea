"""Config values checked against their type annotations, converted where that is unambiguous
(a YAML 3 for a float is 3.0); anything else is refused in one sentence naming the key."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Literal

from mimbench.errors import ConfigError, did_you_mean


# type -> (what the sentence calls it, which values it accepts); YAML's true is no number
SCALARS = {bool: ("true or false", lambda v: isinstance(v, bool)),
           int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
           float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
           str: ("a string", lambda v: isinstance(v, str)),
           dict: ("a mapping", lambda v: isinstance(v, dict))}


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
    if tp in SCALARS:
        what, accepts = SCALARS[tp]
        if not accepts(value):
            raise ConfigError(f"'{key}' must be {what}, not {value!r}.")
        return tp(value)  # an int for a float becomes a float; a mapping is copied
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def annotations(factory: Callable) -> dict[str, Any]:
    """The resolved parameter annotations of a factory function or class ({} if unresolvable)."""
    try:
        return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # annotations naming what the module cannot import: no conversion
        return {}
