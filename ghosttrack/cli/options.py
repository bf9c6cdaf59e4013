"""Click options generated from the config dataclasses (see ghosttrack.config_fields): every
default and help text is written once, in the dataclass, as sparsify builds its command line
from its config."""
from __future__ import annotations

import dataclasses
import typing

import click

from ghosttrack.config_fields import base_type, field_default, field_docs, flag_name


def dataclass_options(cls: type, *, skip: tuple[str, ...] = (), defaults_in_help: bool = False,
                      help_overrides: dict[str, str] | None = None) -> list:
    """One click option per field of `cls` (minus `skip` and hidden ones).

    defaults_in_help: the option's own default is None ("not given": the dataclass decides, as for
    options that only some architectures have) and the help says what that default is.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    options = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if field.name in skip or meta.get("hidden") or not field.init:
            continue
        default = field_default(field)
        help_text = (help_overrides or {}).get(field.name, docs.get(field.name, ""))
        kind = base_type(hints[field.name])
        if kind is bool:
            flag_default = not default if meta.get("invert") else bool(default)
            options.append(click.option(flag_name(field), is_flag=True, default=flag_default, help=help_text))
            continue
        choices = meta.get("choices")
        click_type = click.Choice([*choices, *meta.get("aliases", {})]) if choices else kind
        if defaults_in_help:
            if default is not None:
                help_text += f" [default: {default}]"
            options.append(click.option(flag_name(field), type=click_type, default=None, help=help_text))
        else:
            options.append(click.option(flag_name(field), type=click_type, default=default,
                                        show_default=True, help=help_text))
    return options


def apply(options: list, func):
    """Decorate `func` with `options`, first option first in --help."""
    for option in reversed(options):
        func = option(func)
    return func


def store_access_options(func):
    """--trust-store and --allow-partial-store (``StoreAccess``'s fields): every command that reads
    activations from a store spells its opt-outs the same way."""
    from ghosttrack.stores import StoreAccess

    return apply(dataclass_options(StoreAccess), func)


def store_access(options: dict):
    """The ``StoreAccess`` the parsed options ask for."""
    from ghosttrack.config_fields import values_for
    from ghosttrack.stores import StoreAccess

    return StoreAccess(**values_for(StoreAccess, options))
