"""Shared pieces of the CLI: `--config FILE` and the corpus options."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from ghosttrack.errors import GhostTrackError
from ghosttrack.run_config import parse_token_count

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
        options = {k: v for k, v in data.items() if not isinstance(v, dict) or k == "corpus_options"}
        for section in ("extract", "train", command) if command == "run" else (command,):
            if isinstance(data.get(section), dict):
                options.update(data[section])
    options = {key.replace("-", "_"): val for key, val in options.items()}
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(options) - known - {"config"})
    if unknown:
        raise click.BadParameter(f"config file {value} has unknown option(s) {', '.join(unknown)} for `{command}`")
    options.pop("config", None)
    ctx.default_map = {**(ctx.default_map or {}), **options}
    return value


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")


def local_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback of every output option that writes local files (SAEs, reports, edge lists, caches):
    a URL there would otherwise become a local folder named 's3:'. One line, exit 2, before any work.
    Only `extract --out` writes to object stores (its store location parses the URL itself)."""
    m = _URL.match(str(value)) if value is not None else None
    if m is not None and not (len(m.group(1)) == 1 and not m.group(2)):  # not C:\ on Windows
        command = ctx.command.name if ctx is not None and ctx.command is not None else "this command"
        raise GhostTrackError(f"{param.opts[0]} {value}: {command} writes local folders only; pass a local path")
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
