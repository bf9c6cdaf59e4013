"""Click options generated from the config dataclasses (see ghosttrack.config_fields): every
default and help text is written once, in the dataclass, as sparsify builds its command line
from its config. Click only converts the text to the field's type; the dataclass checks the value
(ranges, finiteness), so the command line, `--config FILE` and the Python API share one rule."""
from __future__ import annotations

import dataclasses
import types
import typing

import click

from ghosttrack.config_fields import field_default, field_docs, flag_name, param_name


def _click_type(hint) -> type:
    """The type click converts the text to: str when the field also takes text (e.g. '10M' or 'auto'
    for a count, '0,1' for positions), else the field's number type."""
    args = typing.get_args(hint) if (isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union) \
        else (hint,)
    args = [a for a in args if a is not type(None)]
    if str in args:
        return str
    simple = [a for a in args if a in (int, float, bool)]
    return simple[0] if simple else str


def dataclass_options(cls: type, *, skip: tuple[str, ...] = (), defaults_in_help: bool = False,
                      help_overrides: dict[str, str] | None = None, flags: dict[str, str] | None = None,
                      only: tuple[str, ...] | None = None) -> list:
    """One click option (or argument) per field of `cls` (minus `skip` and hidden ones; `only`: just these).

    defaults_in_help: the option's own default is None ("not given": the dataclass decides, as for
    options that only some architectures have) and the help says what that default is.
    flags: a command's own spelling of some fields (e.g. run's --extract-batch-size).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    options = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if field.name in skip or meta.get("hidden") or not field.init or (only is not None and field.name not in only):
            continue
        default = field_default(field)
        help_text = (help_overrides or {}).get(field.name, docs.get(field.name, ""))
        kind = _click_type(hints[field.name])
        name = param_name(field, flags)
        if meta.get("argument"):
            extra = {"default": default} if default is not None else {}
            options.append(click.argument(name, type=kind, required=bool(meta.get("required")), **extra))
            continue
        flag = flag_name(field, flags)
        if kind is bool:
            if meta.get("negatable"):  # --progress/--no-progress
                options.append(click.option(f"{flag}/--no-{flag[2:]}", name, default=bool(default),
                                            show_default=True, help=help_text))
                continue
            flag_default = not default if meta.get("invert") else bool(default)
            options.append(click.option(flag, name, is_flag=True, default=flag_default, help=help_text))
            for old_flag, old_name in meta.get("old_flags", {}).items():  # earlier spellings, kept working
                options.append(click.option(old_flag, old_name, is_flag=True, default=flag_default, hidden=True))
            continue
        choices = meta.get("choices")
        click_type = click.Choice([*choices, *meta.get("aliases", {})]) if choices else kind
        if meta.get("required"):
            options.append(click.option(flag, name, type=click_type, required=True, help=help_text))
        elif defaults_in_help:
            if default is not None:
                help_text += f" [default: {default}]"
            options.append(click.option(flag, name, type=click_type, default=None, help=help_text))
        else:
            options.append(click.option(flag, name, type=click_type, default=default,
                                        show_default=default is not None, help=help_text))
    return options


def apply(options: list, func):
    """Decorate `func` with `options`, first option first in --help."""
    for option in reversed(options):
        func = option(func)
    return func


def config_command_options(cls: type, **kwargs):
    """Decorator: the options of `cls` (see dataclass_options)."""
    return lambda func: apply(dataclass_options(cls, **kwargs), func)
