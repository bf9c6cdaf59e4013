"""Every command whose --out writes local files refuses a URL in one line (none writes ./s3:/...);
extract, which writes stores to object storage, parses it as a store location instead."""
import os

import pytest
from click.testing import CliRunner

from ghosttrack.cli import main

# Each command with the options it requires (after --out, which is parsed first and refused).
COMMANDS = {
    "train": ["--store", "st"],
    "run": [],
    "interpret": ["--store", "st", "--sae", "sae"],
    "evaluate": ["--sae", "sae"],
    "match": ["--sae", "sae"],
    "track": ["--model", "m", "--sae", "sae", "--matches", "mt", "--text", "x"],
    "detect": ["--data", "d.jsonl", "--model", "m"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("url", ["s3://b/d", "gs://bucket/run", "memory://x/y", "file:///tmp/x"])
def test_out_url_is_refused_in_one_line(tmp_path, command, url):
    os.chdir(tmp_path)
    (tmp_path / "sae").mkdir()
    result = CliRunner().invoke(main, [command, "--out", url, *COMMANDS[command]])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: --out {url}: {command} writes local folders only; pass a local path"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no ./s3:/b/d


def test_detect_cache_url_is_refused(tmp_path):
    os.chdir(tmp_path)
    result = CliRunner().invoke(main, ["detect", "--cache", "s3://b/c", "--out", "o", "--data", "d", "--model", "m"])
    assert result.exit_code == 2 and "--cache s3://b/c: detect writes local folders only" in result.output
    assert list(tmp_path.iterdir()) == []


def test_local_paths_pass_the_check(tmp_path):
    """A local path (a colon inside, a Windows drive letter) is not a URL."""
    from ghosttrack.cli.common import local_output

    class Param:
        opts = ["--out"]

    for value in ["runs/a", "./x:y", "C:\\runs", "/abs/s3/b"]:
        assert local_output(None, Param(), value) == value
