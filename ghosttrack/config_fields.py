"""Config dataclass fields as user-facing settings: their attribute docstrings (the help text),
their command-line spelling, and the values a parsed command line gives them. The CLI builds its
options from this (ghosttrack.cli.options); library code maps option dicts back without click.

A field's `metadata` may say how it appears on the command line:
    flag     the option's name when it is not `--field-name` (e.g. "--warmup" for warmup_fraction)
    choices  the values it accepts (shown as a click.Choice)
    aliases  other accepted spellings, mapped to the value (e.g. {"fp32": "float32"})
    invert   a bool field shown as the flag that turns it off (e.g. --keep-flagged for skip_flagged)
    hidden   not a command-line option
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import lru_cache
from typing import Any


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


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def param_name(field: dataclasses.Field) -> str:
    return flag_name(field).lstrip("-").replace("-", "_")


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def values_for(cls: type, options: dict[str, Any], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword arguments of `cls` that the parsed `options` give (None: not given)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        name = param_name(field)
        if field.name in skip or name not in options or options[name] is None:
            continue
        value = options[name]
        if field.metadata.get("invert"):
            value = not value
        values[field.name] = field.metadata.get("aliases", {}).get(value, value)
    return values
