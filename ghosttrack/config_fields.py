"""Config dataclass fields as user-facing settings: their attribute docstrings (the help text),
their command-line spelling, and the values a parsed command line gives them. The CLI builds its
options from this (ghosttrack.cli.options); library code maps option dicts back without click.

A field's `metadata` may say how it appears on the command line:
    flag     the option's name when it is not `--field-name` (e.g. "--warmup" for warmup_fraction)
    param    its key in the parsed options and a saved config.json when not the flag's name (sae_path)
    choices  the values it accepts (shown as a click.Choice)
    aliases  other accepted spellings, mapped to the value (e.g. {"fp32": "float32"})
    invert   a bool field shown as the flag that turns it off (e.g. --keep-flagged for skip_flagged)
    hidden   not a command-line option
    negatable  a bool shown as a --name/--no-name pair
    old_flags  {earlier spelling: its key} of a flag, still accepted (hidden from --help)
    check    a function of the value that raises GhostTrackError when it is wrong (e.g. a device name)
    argument a positional argument (e.g. the STORE of `ghosttrack info STORE`), not an --option
    required the command line must give it (its dataclass default is None: "not given")
    min, max       inclusive bounds of a number (checked by `check_fields`)
    above, below   exclusive bounds of a number

`check_fields`, called first in every config's __post_init__, checks each value against its type
hint (a list where an int belongs, NaN or inf where a number belongs) and its bounds, so that the
command line, `--config FILE` and the Python API are checked by the same rule, once.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from functools import lru_cache
from typing import Any

from ghosttrack.errors import GhostTrackError
from ghosttrack.store.rows import parse_positions


class ConfigError(GhostTrackError, ValueError):
    """A setting of the wrong type or out of range: one line naming the option, the value and what
    it accepts (a ValueError too, for library callers that catch that)."""


def skip_positions_setting(value) -> tuple[int, ...]:
    """--skip-positions as a tuple of positions (store.rows.parse_positions), or one line saying how to write it."""
    try:
        return parse_positions(value)
    except ValueError as exc:
        raise ConfigError(f"--skip-positions: {exc}; write e.g. 1 or 0,1 (or none)") from None


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its attribute docstring, as one line} for a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def base_type(hint: Any) -> type:
    """int for `int | None`, float for `float`, ..."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def flag_name(field: dataclasses.Field, flags: dict[str, str] | None = None) -> str:
    """The option's spelling: `flags` (a command's renames, e.g. run's --extract-batch-size) first,
    then the field's metadata, then --field-name."""
    if flags and field.name in flags:
        return flags[field.name]
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def param_name(field: dataclasses.Field, flags: dict[str, str] | None = None) -> str:
    """The option's key in a parsed command line and in a saved config.json: `param` in the metadata
    (e.g. sae_path for --sae), else the flag's name (warmup for --warmup)."""
    if "param" in field.metadata and not (flags and field.name in flags):
        return field.metadata["param"]
    return flag_name(field, flags).lstrip("-").replace("-", "_")


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def values_for(cls: type, options: dict[str, Any], *, skip: tuple[str, ...] = (),
               flags: dict[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments of `cls` that the parsed `options` give (None: not given)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        name = param_name(field, flags)
        if field.name in skip or name not in options or options[name] is None:
            continue
        value = options[name]
        if field.metadata.get("old_flags") and any(options.get(old) for old in field.metadata["old_flags"].values()):
            value = True  # an earlier spelling of the same flag was given
        if field.metadata.get("invert"):
            value = not value
        values[field.name] = field.metadata.get("aliases", {}).get(value, value)
    return values


def from_options(cls: type, options: dict[str, Any], *, flags: dict[str, str] | None = None, **given: Any):
    """`cls` built from parsed command-line options (plus `given` values), checked by its __post_init__."""
    try:
        return cls(**{**values_for(cls, options, flags=flags), **given})
    except ConfigError as exc:
        for field in dataclasses.fields(cls):  # the message names the flag as this command spells it
            default = flag_name(field)
            if flags and field.name in flags and str(exc).startswith(default + " "):
                raise ConfigError(flags[field.name] + str(exc)[len(default):]) from None
        raise


def _allowed_types(hint: Any) -> tuple[list[Any], bool]:
    """(the types a hint allows, besides None; whether None is allowed)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = list(typing.get_args(hint))
    else:
        args = [hint]
    return [a for a in args if a is not type(None)], type(None) in args


def _coerce(value: Any, kind: Any) -> tuple[bool, Any]:
    """(does `value` fit `kind`, the value as that kind): ints fit floats; bools fit only bools."""
    origin = typing.get_origin(kind) or kind
    if kind is Any:
        return True, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value) \
            if int in typing.get_args(kind) else isinstance(value, (list, tuple))
        return ok, origin(value) if ok else value
    return isinstance(value, origin), value


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _bounds_text(meta: Any) -> str:
    parts = []
    for key, op in (("above", ">"), ("min", ">="), ("below", "<"), ("max", "<=")):
        if key in meta:
            parts.append(f"{op} {meta[key]}")
    return " and ".join(parts)


def check_value(field: dataclasses.Field, hint: Any, value: Any) -> Any:
    """`value` checked against the field's type hint, finiteness and bounds (and converted: an int
    given for a float field becomes a float); ConfigError, one line, otherwise."""
    meta = field.metadata
    label = f"{flag_name(field)} {value!r}" if not isinstance(value, str) else f"{flag_name(field)} '{value}'"
    default = field_default(field)
    fix = f" (default: {default})" if default is not None and not meta.get("required") else ""
    kinds, optional = _allowed_types(hint)
    if value is None:
        if optional or meta.get("required"):
            return None
        raise ConfigError(f"{flag_name(field)} must be given{fix}")
    for kind in kinds:
        fits, converted = _coerce(value, kind)
        if fits:
            value = converted
            break
    else:
        wanted = " or ".join(_KIND_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds)
        raise ConfigError(f"{label}: expected {wanted}{fix}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{label}: must be a finite number{fix}")
        bounds = _bounds_text(meta)
        if (("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"])
                or ("above" in meta and value <= meta["above"]) or ("below" in meta and value >= meta["below"])):
            raise ConfigError(f"{label}: must be {bounds}{fix}")
    choices = meta.get("choices")
    if choices and isinstance(value, str):
        value = meta.get("aliases", {}).get(value, value)
        if value not in choices:
            raise ConfigError(f"{label}: must be one of {', '.join(map(str, choices))}{fix}")
    if "check" in meta:
        meta["check"](value)
    return value


def check_fields(obj: Any) -> None:
    """Check (and convert in place) every init field of the dataclass instance `obj`; call it first
    in __post_init__. Bounds and choices come from each field's metadata (see the module docstring)."""
    hints = _hints(type(obj))
    for field in dataclasses.fields(obj):
        if field.init:
            setattr(obj, field.name, check_value(field, hints[field.name], getattr(obj, field.name)))


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)
