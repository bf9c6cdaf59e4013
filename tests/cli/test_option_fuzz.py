"""Every option of every command, given hostile values (0, negative, NaN, inf, huge, the wrong type, a
URL where a path goes, an empty string): the command exits 0, or exits 2 with exactly one line on
stderr (`error: ...`) and leaves nothing behind; never a traceback.

The required inputs point at an empty folder or at nothing, so a value that is accepted stops at the
first input check, in one line, without loading a model; invalid values are refused before that.
"""
from __future__ import annotations

import random

import click
import pytest
from click.testing import CliRunner

from ghosttrack.cli import main

HOSTILE = ["0", "-1", "nan", "inf", "-inf", "1e308", "99999999999999999999", "abc", "[1, 2]", "",
           "ftp://host/x", "memory://fuzz/x", "1.5", "-0"]
SEED = 23
COMMANDS = ("extract", "run", "train", "interpret", "evaluate", "match", "track", "detect", "verify", "info")


def _base_args(name: str, empty: str, missing: str, out: str) -> list[str]:
    """Arguments that make an accepted command stop at its first input check (nothing to read there)."""
    return {
        "extract": ["--model", empty, "--out", out, "--tokens", "4096"],
        "run": ["--model", empty, "--out", out, "--tokens", "4096"],
        "train": ["--store", missing, "--out", out],
        "interpret": ["--store", missing, "--sae", empty, "--out", out],
        "evaluate": ["--sae", empty, "--model", empty, "--out", f"{out}/evaluation.json"],
        "match": ["--sae", empty, "--out", out],
        "track": ["--model", empty, "--sae", empty, "--matches", empty, "--text", "a b c", "--out", out],
        "detect": ["--data", f"{missing}.jsonl", "--model", empty, "--out", out],
        "verify": [missing],
        "info": [missing],
    }[name]


def _with(args: list[str], option: str | None, value: str) -> list[str]:
    """`args` with `option` set to `value` (replacing it when present); option None: the positional."""
    if option is None:
        return [value]
    if option in args:
        i = args.index(option)
        return [*args[:i], option, value, *args[i + 2:]]
    return [*args, option, value]


def _cases(command: click.Command) -> list[str | None]:
    """Every option that takes a value (flags take none), and None for a positional argument."""
    cases: list[str | None] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            cases.append(None)
        elif isinstance(param, click.Option) and not param.is_flag and param.name != "config":
            cases.append(max(param.opts, key=len))
    return cases


def _snapshot(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", COMMANDS)
def test_hostile_option_values_exit_0_or_2_in_one_line(name, tmp_path):
    empty, missing, out = tmp_path / "empty", tmp_path / "missing", tmp_path / "out"
    empty.mkdir()
    command = main.get_command(click.Context(main), name)
    base = _base_args(name, str(empty), str(missing), str(out))
    rng = random.Random(f"{SEED}-{name}")
    before = _snapshot(tmp_path)
    runner = CliRunner()
    tried = 0
    for option in _cases(command):
        # Every hostile value for the numeric and choice options, a seeded half of them for the rest.
        values = HOSTILE if rng.random() < 0.5 or option is None else rng.sample(HOSTILE, len(HOSTILE) // 2)
        for value in values:
            args = [name, *_with(base, option, value)]
            result = runner.invoke(main, args)
            tried += 1
            where = f"ghosttrack {' '.join(args)!r}"
            assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
                f"{where}: {result.exception!r}"
            assert "Traceback" not in result.output, f"{where}: {result.output}"
            assert result.exit_code in (0, 2), f"{where}: exit {result.exit_code}: {result.output}"
            if result.exit_code == 2:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), f"{where}: {result.stderr!r}"
                assert _snapshot(tmp_path) == before, f"{where} left {_snapshot(tmp_path) - before}"
    assert tried > 0
