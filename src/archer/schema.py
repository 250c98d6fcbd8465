"""YAML blocks into typed dataclasses, with one-line errors: the one checker behind recipes and evaluation suites.

A block is a mapping read from YAML. :func:`build_dataclass` checks every key against the dataclass's fields
(unknown keys, with a guess at the intended one), every value against the field's type hint (numeric strings such
as ``1e-6``, which YAML reads as text, become numbers) and against an optional range (``limits``), and turns the
class's own ``__post_init__`` errors into one :class:`UserError` line naming the file and ``block.key``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archer.errors import UserError, one_line
from archer.files import short

Limit = tuple[Callable[[Any], bool], str]  # (check, what is valid) of a numeric field


def at_least(low: float) -> Limit:
    return (lambda v: v >= low, f">= {low}")


POSITIVE: Limit = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Limit = (lambda v: v >= 0, ">= 0")
FRACTION: Limit = (lambda v: 0 < v <= 1, "in (0, 1]")


def build_dataclass(
    cls: type, block: dict[str, Any], path: Path, where: str, limits: dict[str, Limit] | None = None
) -> Any:
    """Build ``cls(**block)``: unknown keys, wrong types and values outside ``limits`` become one-line UserErrors
    naming ``where.key``; so do the errors the class's own ``__post_init__`` raises."""
    if not isinstance(block, dict):
        raise UserError(f"{path}: {where}: expected a mapping, got {short(block)}")
    values = {key: check_field(cls, key, value, path, where, limits) for key, value in block.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError, ArithmeticError, UserError) as err:
        message = one_line(err)
        named = message if message.startswith(f"{where}: ") else f"{where}: {message}"  # batch errors name it
        raise UserError(f"{path}: {named}") from None


def check_field(
    cls: type, key: Any, value: Any, path: Path, where: str, limits: dict[str, Limit] | None = None
) -> Any:
    """One key of a block: a field of ``cls``, of the field's type, inside its limit; returns the value as typed."""
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    if key not in fields:
        close = [n for n in fields if n.startswith(str(key)[:4])][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"{path}: {where}.{one_line(key, 40)}: unknown key{hint}; see {cls.__module__}.{cls.__name__}")
    try:
        value = coerce(value, typing.get_type_hints(cls).get(key, Any))
    except TypeError as err:
        raise UserError(f"{path}: {where}.{key}: {err}") from None
    if limits and key in limits and value is not None:
        check, valid = limits[key]
        if not check(value):
            raise UserError(f"{path}: {where}.{key}={short(value)}: must be {valid}")
    return value


def coerce(value: Any, hint: Any) -> Any:
    """Check ``value`` against a type hint; numeric strings become numbers (YAML reads ``1e-6`` as a string)."""
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise TypeError(f"expected null, got {short(value)}")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            try:
                return coerce(value, option)
            except TypeError:
                continue
        raise TypeError(f"expected {_name(hint)}, got {short(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError(f"expected one of {list(args)}, got {short(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is list and args:
                return [coerce(v, args[0]) for v in value]
            if origin is tuple and len(args) == 2 and args[-1] is Ellipsis:
                return tuple(coerce(v, args[0]) for v in value)
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise TypeError(f"expected {len(args)} values, got {short(value)}")
                return tuple(coerce(v, a) for v, a in zip(value, args, strict=True))
            return list(value) if (origin or hint) is list else tuple(value)
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            if len(args) == 2:
                return {k: coerce(v, args[1]) for k, v in value.items()}
            return value
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        choices = [member.value for member in hint]
        if value in choices:
            return value
        raise TypeError(f"expected one of {short(choices, 200)}, got {short(value)}")
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        return value  # typing constructs this parser does not know: left to the dataclass's own checks
    raise TypeError(f"expected {_name(hint)}, got {short(value)} ({type(value).__name__})")


def _name(hint: Any) -> str:
    """A type hint as a reader says it: ``int or null``, ``bool or 'auto'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_name(option) for option in args)
    if origin is typing.Literal:
        return " or ".join(repr(option) for option in args)
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
