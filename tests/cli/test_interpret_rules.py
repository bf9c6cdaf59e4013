"""`ghosttrack interpret --skip-positions`: parsed, applied, saved and reproduced; bad values exit 2."""
import json

import pytest
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.sae import SparseAutoencoder, TopKSAEConfig


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_gpt2_dir, corpus_file):
    root = tmp_path_factory.mktemp("rules")
    done = CliRunner().invoke(main, [
        "extract", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--layers", "1", "--tokens", "1024",
        "--seq-len", "32", "--batch-size", "8", "--chunk-tokens", "256", "--device", "cpu", "--out", str(root / "s")],
        catch_exceptions=False)
    assert done.exit_code == 0, done.output
    SparseAutoencoder(TopKSAEConfig(d_in=32, d_sae=24, k=3), {"hook_layer": 1, "hook_name": "blocks.1.hook_resid_post",
                                                              "model_name": "tiny"}).save(root / "sae")
    return root


def interpret(pair, *args):
    return CliRunner().invoke(main, ["interpret", "--store", str(pair / "s"), "--sae", str(pair / "sae"),
                                     "--top-k", "2", "--no-html", "--device", "cpu", *map(str, args)])


def test_skip_positions_applied_saved_and_reproduced(pair, tmp_path):
    done = interpret(pair, "--skip-positions", "1, 2", "--out", tmp_path / "a")
    assert done.exit_code == 0, done.output
    assert "positions 1,2 skipped (64 rows)" in done.output  # 32 sequences of 32 tokens
    layer_dir = tmp_path / "a" / "layer_1"
    summary = json.loads((layer_dir / "summary.json").read_text())
    assert summary["skip_positions"] == [1, 2] and summary["rows_skipped_positions"] == 64
    records = json.loads((layer_dir / "features.json").read_text())
    assert all(ex["position"] not in (0, 1, 2) for r in records for ex in r["top_examples"])
    again = CliRunner().invoke(main, ["interpret", "--config", str(layer_dir / "config.json"), "--out",
                                      str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "b" / "layer_1" / "features.json").read_text()) == records
    plain = interpret(pair, "--out", tmp_path / "c")  # the SAE recorded no rule: nothing but position 0
    assert plain.exit_code == 0 and json.loads((tmp_path / "c" / "layer_1" / "summary.json").read_text())[
        "skip_positions"] == []


@pytest.mark.parametrize("value", ["1,x", "-1"])
def test_bad_skip_positions_exit_2(pair, tmp_path, value):
    done = interpret(pair, "--skip-positions", value, "--out", tmp_path)
    assert done.exit_code == 2 and "--skip-positions" in done.output


def test_bad_model_exits_2_before_the_pass(pair, tmp_path):
    done = interpret(pair, "--model", tmp_path / "nowhere", "--out", tmp_path)
    assert done.exit_code == 2 and "error: --model" in done.output and "neither a local model directory" in done.output
