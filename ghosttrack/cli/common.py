"""Shared pieces of the CLI: `--config FILE` and the corpus options."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ghosttrack.errors import GhostTrackError
from ghosttrack.run_config import check_local_output, parse_token_count

def token_count(ctx: click.Context, param: click.Parameter, value: str | int | None) -> int | None:
    """Click callback for token-count options: the error names the option (click.BadParameter)."""
    if value is None:
        return None
    try:
        return parse_token_count(value)
    except GhostTrackError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def corpus_options(func):
    """The corpus options, shared by `extract`, `run` and `evaluate`."""
    options = [
        click.option("--corpus", default="wikipedia", show_default=True,
                     help="'wikipedia' (HF wikimedia/wikipedia), another HF dataset id[:config], or a local "
                          "file/folder: .txt, .jsonl, .parquet, MediaWiki .xml/.xml.bz2 dump."),
        click.option("--wiki-language", default="en", show_default=True, help="Wikipedia language (with --corpus wikipedia)."),
        click.option("--wiki-date", default="20231101", show_default=True, help="Wikipedia dump date (with --corpus wikipedia)."),
        click.option("--text-field", default="text", show_default=True, help="Text field of .jsonl/.parquet/HF rows."),
        click.option("--min-chars", default=200, show_default=True, type=int, help="Skip documents shorter than this."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise click.BadParameter(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"config file {path} must hold a mapping of option names to values")
    return data


def _config_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Load the file into ctx.default_map, so that flags given on the command line override it."""
    if value is None:
        return None
    data = read_config_file(value)
    command = ctx.command.name
    # A saved resolved config has {"command": ..., "options": {...}}; a hand-written one is flat,
    # or has one section per command (`extract:`, `train:`), as the seed's extract_and_train --config.
    if "options" in data and isinstance(data["options"], dict):
        options = dict(data["options"])
    else:
        known = {p.name for p in ctx.command.params}
        # A mapping under a section name is a section; under one of this command's options, a wrong value.
        options = {k: v for k, v in data.items()
                   if not isinstance(v, dict) or k == "corpus_options" or k.replace("-", "_") in known}
        for section in ("extract", "train", command) if command == "run" else (command,):
            if isinstance(data.get(section), dict):
                options.update(data[section])
    options = {key.replace("-", "_"): val for key, val in options.items()}
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(options) - known - {"config"})
    if unknown:
        raise click.BadParameter(f"config file {value} has unknown option(s) {', '.join(unknown)} for `{command}`")
    options.pop("config", None)
    params = {p.name: p for p in ctx.command.params}
    for key, val in options.items():
        options[key] = _config_value(value, params[key], val)
    ctx.default_map = {**(ctx.default_map or {}), **options}
    return value


def _config_value(path: str, param: click.Parameter, value: Any) -> Any:
    """A value from a config file as the option takes it: a list where one value belongs is refused
    in one line (click would raise a TypeError), except a list of numbers for a text option, which is
    how a saved config.json holds positions and layers ([1, 2] -> "1,2")."""
    if not isinstance(value, (list, tuple, dict)) or param.multiple or (param.nargs or 1) != 1:
        return value
    if isinstance(param.type, click.types.StringParamType) and isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value)) or "none"
    kind = "a mapping" if isinstance(value, dict) else "a list"
    raise click.BadParameter(f"config file {path}: {param.name} takes one value, got {kind} ({json.dumps(value)})")


def local_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback of --out options that write local files (see run_config.check_local_output)."""
    check_local_output(param.opts[0], value)
    return value


def config_option(func):
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=True,
        callback=_config_callback,
        help="YAML or JSON file supplying any option of this command; flags on the command line override it.",
    )(func)
