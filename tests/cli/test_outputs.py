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
    for folder in ("sae", "mt", "st"):
        (tmp_path / folder).mkdir()
    (tmp_path / "d.jsonl").write_text("")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, [command, "--out", url, *COMMANDS[command]])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    if "--out" in lines[0]:  # other inputs may be refused first: one line either way
        assert lines[0].startswith(f"error: --out {url}: this output is written to a local folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ./s3:/b/d


def test_detect_cache_url_is_refused(tmp_path):
    os.chdir(tmp_path)
    result = CliRunner().invoke(main, ["detect", "--cache", "s3://b/c", "--out", "o", "--data", "d", "--model", "m"])
    assert result.exit_code == 2 and "--cache s3://b/c: this output is written to a local folder" in result.output
    assert list(tmp_path.iterdir()) == []


def test_local_paths_pass_the_check(tmp_path):
    """A local path (a colon inside, a Windows drive letter) is not a URL."""
    from ghosttrack.run_config import check_local_output

    for value in ["runs/a", "./x:y", "C:\\runs", "/abs/s3/b", None]:
        check_local_output("--out", value)
