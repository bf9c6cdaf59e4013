"""An SAE is applied to the layer and hook it was trained on (interpret and evaluate refuse others
unless told), its cfg.json paths resolve from any folder, and evaluate uses its training norm rule."""
import json

import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.errors import GhostTrackError
from ghosttrack.evaluate import splice_mask
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder
from ghosttrack.sae.agreement import check_layer_agreement, resolve_recorded_path, trained_norm_rule

D_MODEL = 32  # the tiny GPT-2 of conftest


def _meta(layer, hook="resid_post", **extra):
    return {"hook_layer": layer, "hook_name": f"blocks.{layer}.hook_{hook}", **extra}


def test_layer_or_hook_mismatch_is_refused_naming_both_unless_allowed():
    with pytest.raises(GhostTrackError, match=r"trained on blocks.15.hook_resid_post \(layer 15, resid_post\) but "
                                              r"layer 6 was asked for;.*--allow-layer-mismatch"):
        check_layer_agreement(_meta(15), 6, None, sae="runs/sae/layer_15")
    with pytest.raises(GhostTrackError, match="but hook resid_pre was asked for"):
        check_layer_agreement(_meta(15), 15, "resid_pre", sae="s")
    check_layer_agreement(_meta(15), 6, "resid_pre", sae="s", allow_mismatch=True)
    check_layer_agreement(_meta(15), 15, "resid_post", sae="s")
    check_layer_agreement(_meta(15), None, None, sae="s")  # nothing asked for: the SAE's own


def test_recorded_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    (tmp_path / "models" / "m").mkdir(parents=True)
    sae_dir = tmp_path / "sae" / "layer_3"
    sae_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_recorded_path("models/m", sae_dir) == str(tmp_path / "models" / "m")
    assert resolve_recorded_path("gpt2", sae_dir) == "gpt2"  # a hub id stays one
    assert resolve_recorded_path(str(tmp_path / "models" / "m"), sae_dir) == str(tmp_path / "models" / "m")


def test_trained_norm_rule_and_the_splice_mask_that_uses_it():
    assert trained_norm_rule({"ghosttrack": {"skipped": {"max_norm_ratio": 3.0, "median_norm": 2.5}}}) == (3.0, 2.5)
    assert trained_norm_rule({"ghosttrack": {"skipped": {"max_norm_ratio": None, "median_norm": 2.5}}}) == (None, 2.5)
    assert trained_norm_rule({"hook_layer": 1}) is None
    x = torch.ones(1, 5, 4)  # every row has norm 2
    x[0, 2] *= 4  # norm 8
    # The batch's own median (2) keeps row 2 out; the SAE's training median 10 keeps it in, 0.5 keeps all out.
    assert splice_mask(x, 3.0, False).tolist() == [[False, True, False, True, True]]
    assert splice_mask(x, 3.0, False, median_norm=10.0).tolist() == [[False, True, True, True, True]]
    assert splice_mask(x, 3.0, False, median_norm=0.5).tolist() == [[False] * 5]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_gpt2_dir, corpus_file):
    out = tmp_path_factory.mktemp("agreement") / "store"
    result = CliRunner().invoke(main, [
        "extract", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--layers", "1,2",
        "--tokens", "512", "--seq-len", "32", "--batch-size", "8", "--chunk-tokens", "128", "--device", "cpu",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _save(directory, layer, **meta):
    torch.manual_seed(layer)
    SparseAutoencoder(ReluSAEConfig(d_in=D_MODEL, d_sae=16), {**_meta(layer), **meta}).save(directory)
    return directory


def test_interpret_refuses_another_layer_unless_allowed(store, tmp_path):
    sae = _save(tmp_path / "sae", 2, model_name="tiny")
    base = ["interpret", "--store", str(store), "--sae", str(sae), "--top-k", "2", "--device", "cpu", "--no-html"]
    refused = CliRunner().invoke(main, base + ["--layer", "1", "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2, refused.output
    assert "trained on blocks.2.hook_resid_post" in refused.output and "layer 1 was asked for" in refused.output
    assert not (tmp_path / "a").exists()
    allowed = CliRunner().invoke(main, base + ["--layer", "1", "--allow-layer-mismatch", "--out", str(tmp_path / "b")])
    assert allowed.exit_code == 0, allowed.output
    pre = _save(tmp_path / "pre", 2, hook_name="blocks.2.hook_resid_pre")
    other_hook = CliRunner().invoke(main, ["interpret", "--store", str(store), "--sae", str(pre), "--device", "cpu",
                                           "--no-html", "--out", str(tmp_path / "c")])
    assert other_hook.exit_code == 2 and "hook resid_post was asked for" in other_hook.output, other_hook.output


def test_evaluate_refuses_another_layer_finds_relative_paths_and_uses_the_training_rule(
        tiny_gpt2_dir, corpus_file, tmp_path, monkeypatch):
    # cfg.json written where training ran (tmp_path), with the model path relative to it.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_gpt2_dir, target_is_directory=True)
    sae = _save(tmp_path / "runs" / "layer_1", 1, model_name="models/tiny",
                ghosttrack={"skipped": {"max_norm_ratio": 3.0, "median_norm": 1e-6}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    base = ["evaluate", "--sae", str(sae), "--corpus", str(corpus_file), "--tokens", "96", "--seq-len", "24",
            "--batch-size", "4", "--device", "cpu"]
    refused = CliRunner().invoke(main, base + ["--layer", "2", "--out", str(tmp_path / "a.json")])
    assert refused.exit_code == 2 and "trained on blocks.1.hook_resid_post" in refused.output, refused.output
    assert "layer 2 was asked for" in refused.output
    result = CliRunner().invoke(main, base + ["--out", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    # The SAE's training median (1e-6) puts every row over 3x it: nothing is spliced. The batch's
    # own median would have spliced most rows.
    assert json.loads((tmp_path / "b.json").read_text())["spliced_rows"] == 0
    own = CliRunner().invoke(main, base + ["--max-norm-ratio", "0", "--out", str(tmp_path / "c.json")])
    assert own.exit_code == 0 and json.loads((tmp_path / "c.json").read_text())["spliced_rows"] > 0
