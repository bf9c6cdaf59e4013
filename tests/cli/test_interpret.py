"""`ghosttrack interpret` end to end on a store the extractor wrote, and its bad-input errors (exit 2)."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder, TopKSAEConfig
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore

D_MODEL = 32  # the tiny GPT-2 of conftest


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_gpt2_dir, corpus_file):
    out = tmp_path_factory.mktemp("interp_cli") / "store"
    result = CliRunner().invoke(main, [
        "extract", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--layers", "1,2",
        "--tokens", "1536", "--seq-len", "32", "--batch-size", "8", "--chunk-tokens", "256", "--device", "cpu",
        "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def save_sae(directory, layer, d_in=D_MODEL, arch="relu"):
    torch.manual_seed(layer)
    cfg = ReluSAEConfig(d_in=d_in, d_sae=48) if arch == "relu" else TopKSAEConfig(d_in=d_in, d_sae=48, k=4)
    sae = SparseAutoencoder(cfg, {"hook_layer": layer, "hook_name": f"blocks.{layer}.hook_resid_post",
                                  "model_name": "tiny"})
    sae.save(directory)
    return directory


def run(*args):
    return CliRunner().invoke(main, ["interpret", *map(str, args)])


def test_interpret_end_to_end(extracted, tmp_path, tiny_tokenizer):
    sae_dir = save_sae(tmp_path / "sae" / "layer_2", 2, arch="topk")
    out = tmp_path / "interp"
    result = run("--store", extracted, "--sae", sae_dir, "--top-k", 3, "--out", out, "--device", "cpu",
                 "--show", "0,1")
    assert result.exit_code == 0, result.output
    layer_dir = out / "layer_2"
    assert f"feature browser: {layer_dir / 'index.html'}" in result.output
    assert "Feature 0 (" in result.output and "Feature 1 (" in result.output
    records = json.loads((layer_dir / "features.json").read_text())
    assert len(records) == 48
    store = ActivationStore.open(extracted)
    tokens = store.tokens()
    live = [r for r in records if r["active"]]
    assert live, "a random TopK SAE has live features"
    for rec in live:
        assert 1 <= len(rec["top_examples"]) <= 3
        for ex in rec["top_examples"]:
            # Contexts are decoded by the tokenizer the extractor saved beside the store.
            assert ex["token"] == tiny_tokenizer.decode([int(tokens[ex["row"]])]) and ex["position"] > 0
    saved = json.loads((layer_dir / "config.json").read_text())
    assert saved["command"] == "interpret" and saved["options"]["top_k"] == 3
    # --config on the saved file reproduces the run.
    again = run("--config", layer_dir / "config.json", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "layer_2" / "features.json").read_text()) == records


def test_folder_of_layer_saes(extracted, tmp_path):
    for layer in (1, 2):
        save_sae(tmp_path / "sae" / f"layer_{layer}", layer)
    result = run("--store", extracted, "--sae", tmp_path / "sae", "--top-k", 2, "--out", tmp_path / "o", "--no-html")
    assert result.exit_code == 0, result.output
    for layer in (1, 2):
        assert (tmp_path / "o" / f"layer_{layer}" / "features.json").is_file()
        assert not (tmp_path / "o" / f"layer_{layer}" / "index.html").exists()


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any(all(n in line for n in needles) for line in lines), result.output


def test_bad_input_exits_2(extracted, tmp_path):
    sae_dir = save_sae(tmp_path / "sae", 2)
    out = tmp_path / "o"
    _one_error_line(run("--store", extracted, "--sae", sae_dir, "--top-k", 0, "--out", out), "--top-k")
    _one_error_line(run("--store", extracted, "--sae", sae_dir, "--layer", 5, "--out", out),
                    "error: the SAE", "trained on blocks.2.hook_resid_post", "--allow-layer-mismatch")
    _one_error_line(run("--store", extracted, "--sae", sae_dir, "--layer", 5, "--allow-layer-mismatch", "--out", out),
                    "error: layer 5 is not in store", "layers 1, 2")
    wide = save_sae(tmp_path / "wide", 2, d_in=D_MODEL + 8)
    _one_error_line(run("--store", extracted, "--sae", wide, "--out", out), "error:", "d_in=40", "d_model=32")
    _one_error_line(run("--store", tmp_path / "nowhere", "--sae", sae_dir, "--out", out), "error:", "no activation store")
    _one_error_line(run("--store", extracted, "--sae", tmp_path, "--out", out), "error:", "holds no SAE")


def test_store_without_token_ids_exits_2(extracted, tmp_path):
    sae_dir = save_sae(tmp_path / "sae", 1)
    no_array = tmp_path / "no_tokens_array"
    shutil.copytree(extracted, no_array)
    shutil.rmtree(no_array / "tokens")
    _one_error_line(run("--store", no_array, "--sae", sae_dir, "--out", tmp_path / "o"), "error:", "no token ids")
    never_written = tmp_path / "tokens_never_written"
    shutil.copytree(extracted, never_written)
    shutil.rmtree(never_written / "tokens" / "c")  # chunk files gone: a damaged store, named as such
    with pytest.raises(StoreError, match="chunk 0 of tokens is missing"):  # never read as zeros
        ActivationStore.open(never_written).tokens()
    _one_error_line(run("--store", never_written, "--sae", sae_dir, "--out", tmp_path / "o"), "error:",
                    "chunk 0 of tokens is missing", "--repair")
