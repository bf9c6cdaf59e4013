"""Shared pieces of the CLI: `--config FILE`, layer and token-count parsing, resolved-config files."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

CONFIG_FILENAME = "config.json"


def parse_token_count(text: str | int) -> int:
    """'10M' -> 10_000_000, '200k' -> 200_000, '1.5m' -> 1_500_000, '4096' -> 4096."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGbB]?)\s*", str(text))
    if not match:
        raise click.BadParameter(f"'{text}' is not a token count; write e.g. 200k, 10M or 1500000")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[match.group(2).lower()]
    value = int(float(match.group(1)) * scale)
    if value < 1:
        raise click.BadParameter(f"'{text}' must be at least 1 token")
    return value


def parse_layers(spec: str | list[int], n_layers: int | None = None) -> list[int] | str:
    """'0-11' -> [0..11], '0,6,11' -> [0, 6, 11], 'all' -> every layer (needs n_layers, else returned as 'all')."""
    if isinstance(spec, list):
        return sorted(set(int(x) for x in spec))
    spec = str(spec).strip().lower()
    if spec == "all":
        return list(range(n_layers)) if n_layers is not None else "all"
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise click.BadParameter(f"'{spec}' is not a layer spec; write e.g. 0-11, 0,6,11 or all")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
        if hi < lo:
            raise click.BadParameter(f"layer range '{part}' is reversed; write {hi}-{lo}")
        layers.update(range(lo, hi + 1))
    return sorted(layers)


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


def config_option(func):
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=True,
        callback=_config_callback,
        help="YAML or JSON file supplying any option of this command; flags on the command line override it.",
    )(func)


def save_resolved_config(directory: str | Path, command: str, options: dict[str, Any]) -> Path:
    """Write {command, options} so that `--config` on that file reproduces the run exactly."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in options.items() if k != "config"}
    path = directory / CONFIG_FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"command": command, "options": clean}, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path
