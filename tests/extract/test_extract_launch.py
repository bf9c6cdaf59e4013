"""`accelerate launch` with two CPU processes extracts the very store one process writes."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ghosttrack.cli import main

from launch import accelerate_launch


def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's; config.json's --out differs between two stores by design."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and not p.name.startswith(".lock")}
    config = json.loads(files.pop("config.json"))
    config["options"].pop("out")
    files["config.json"] = json.dumps(config, sort_keys=True).encode()
    return files


@pytest.mark.slow
def test_two_launched_processes_write_the_single_process_store(tiny_gpt2_dir, corpus_file, tmp_path):
    args = ["extract", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--layers", "0,2",
            "--tokens", "1024", "--seq-len", "32", "--batch-size", "4", "--chunk-tokens", "256", "--device", "cpu"]
    done = accelerate_launch("-m", "ghosttrack.cli", *args, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(two) == sorted(one) and any(name.startswith("layers/") for name in one)
    assert [name for name in one if two[name] != one[name]] == []
