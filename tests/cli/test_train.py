"""`ghosttrack train` end to end through click: per-layer failures, exit codes, --config and the
resolved config saved beside each checkpoint."""
import json

import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from ghosttrack.cli import main

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--arch", "topk", "--d-hidden", "64", "--k", "3", "--epochs", "1", "--batch-size", "256",
        "--device", "cpu", "--log-every", "5", "--lr", "0.01"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "store"
    write_store(path, n_tokens=4096)
    return path


def _train(*args):
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def test_failing_layers_are_each_reported_and_exit_2_while_the_others_train(tmp_path, store):
    result = _train("--store", str(store), "--layers", "0,5,2", *FAST, "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "layer 5: error: layer 5 is not in store" in result.stderr
    assert "1 of 3 layers failed (5)" in result.stderr
    for layer in (0, 2):
        assert (tmp_path / f"layer_{layer}" / "sae_weights.safetensors").is_file()
        assert f"layer {layer}: " in result.stderr and "val FVU" in result.stderr
    # Rerunning into the same folder without --resume is refused, nothing is touched; --resume finishes.
    before = (tmp_path / "layer_0" / "sae_weights.safetensors").read_bytes()
    again = _train("--store", str(store), "--layer", "0", *FAST, "--out", str(tmp_path))
    assert again.exit_code == 2 and "pass --resume to continue it or --overwrite" in again.stderr
    assert (tmp_path / "layer_0" / "sae_weights.safetensors").read_bytes() == before
    resumed = _train("--store", str(store), "--layer", "0", *FAST, "--out", str(tmp_path), "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert (tmp_path / "layer_0" / "sae_weights.safetensors").read_bytes() == before


def test_config_file_flags_override_and_the_saved_config_reproduces_the_run(tmp_path, store):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"train": {"store": str(store), "arch": "relu", "l1": 0.3, "d_hidden": 48,
                                                "epochs": 1, "batch_size": 256, "device": "cpu", "lr": 0.5}}))
    result = _train("--config", str(config), "--layer", "2", "--lr", "0.01", "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.stderr
    saved = json.loads((tmp_path / "a" / "layer_2" / "config.json").read_text())
    assert saved["command"] == "train"
    opts = saved["options"]
    assert (opts["arch"], opts["l1"], opts["d_hidden"], opts["lr"], opts["layers"]) == ("relu", 0.3, 48, 0.01, "2")
    assert (tmp_path / "a" / "layer_2" / "final" / "config.json").read_text() == \
        (tmp_path / "a" / "layer_2" / "config.json").read_text()
    cfg = json.loads((tmp_path / "a" / "layer_2" / "cfg.json").read_text())
    assert cfg["d_sae"] == 48 and cfg["architecture"] == "standard"

    again = _train("--config", str(tmp_path / "a" / "layer_2" / "config.json"), "--out", str(tmp_path / "b"))
    assert again.exit_code == 0, again.stderr
    redo = json.loads((tmp_path / "b" / "layer_2" / "config.json").read_text())["options"]
    assert {k: v for k, v in redo.items() if k != "out"} == {k: v for k, v in opts.items() if k != "out"}
    a = load_file(str(tmp_path / "a" / "layer_2" / "final" / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "layer_2" / "final" / "sae_weights.safetensors"))
    assert all((a[name] == b[name]).all() for name in a)


def test_bad_options_and_stores_exit_2(tmp_path, store):
    bad_k = _train("--store", str(store), "--layer", "0", *FAST, "--k", "500", "--out", str(tmp_path))
    assert bad_k.exit_code == 2 and "k must be in [1, d_sae=64]" in bad_k.stderr
    missing = _train("--store", str(tmp_path / "nope"), "--layer", "0", *FAST, "--out", str(tmp_path))
    assert missing.exit_code == 2 and "no activation store" in missing.stderr


def test_help_documents_every_option():
    text = CliRunner().invoke(main, ["train", "--help"]).output
    for flag in ("--store", "--layer", "--layers", "--arch", "--expansion", "--d-hidden", "--k", "--l1", "--epochs",
                 "--batch-size", "--lr", "--dtype", "--device", "--seed", "--resume", "--fused", "--out", "--config",
                 "--max-norm-ratio"):
        assert flag in text
