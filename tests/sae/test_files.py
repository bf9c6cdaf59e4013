"""Everything that loads an SAE checks its files: a missing, truncated or malformed file, or weights
that disagree with cfg.json, is one line naming the file (exit 2 from the CLI), never a traceback."""
import json

import pytest
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.errors import GhostTrackError
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder
from ghosttrack.sae.module import load_sae


def save(directory, layer=1, d_in=16, d_sae=24):
    SparseAutoencoder(ReluSAEConfig(d_in=d_in, d_sae=d_sae),
                      {"hook_layer": layer, "hook_name": f"blocks.{layer}.hook_resid_post", "model_name": "m"}
                      ).save(directory)
    return directory


def edit_cfg(directory, **changes):
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg.update(changes)
    (directory / "cfg.json").write_text(json.dumps(cfg))


def truncate(f, keep=0.5):
    raw = f.read_bytes()
    f.write_bytes(raw[: int(len(raw) * keep)])


DAMAGE = {
    "weights truncated": (lambda d: truncate(d / "sae_weights.safetensors"),
                          "sae_weights.safetensors is damaged or truncated"),
    "weights header cut": (lambda d: truncate(d / "sae_weights.safetensors", 0.001),
                           "sae_weights.safetensors is damaged or truncated"),
    "weights missing": (lambda d: (d / "sae_weights.safetensors").unlink(), "sae_weights.safetensors is missing"),
    "cfg missing": (lambda d: (d / "cfg.json").unlink(), "cfg.json is missing"),
    "cfg not JSON": (lambda d: (d / "cfg.json").write_text('{"d_in": 16,'), "cfg.json is not valid JSON"),
    "cfg a list": (lambda d: (d / "cfg.json").write_text("[1, 2]"), "cfg.json is malformed (a JSON list"),
    "cfg d_in a string": (lambda d: edit_cfg(d, d_in="16"), "cfg.json is malformed: d_in is '16'"),
    "cfg d_in disagrees": (lambda d: edit_cfg(d, d_in=8, ghosttrack={}), "disagrees with"),
    "cfg d_sae disagrees": (lambda d: edit_cfg(d, d_sae=12, ghosttrack={}), "W_enc has shape (16, 24), but d_in=16, d_sae=12"),
    "cfg d_sae disagrees with its own section": (lambda d: edit_cfg(d, d_sae=12), "contradicts itself"),
    "cfg metadata not an object": (lambda d: edit_cfg(d, metadata=[1]), "its metadata is not an object"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_load_sae_names_the_file_and_the_problem(tmp_path, damage):
    directory = save(tmp_path / "sae")
    load_sae(directory)  # untouched: loads
    hurt, expected = DAMAGE[damage]
    hurt(directory)
    with pytest.raises(GhostTrackError) as e:
        load_sae(directory)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert str(directory) in str(e.value)


def cli(args, cwd):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["interpret", "evaluate", "match"])
@pytest.mark.parametrize("damage", ["weights truncated", "cfg d_sae disagrees", "cfg not JSON", "weights missing"])
def test_commands_exit_2_with_one_line(tmp_path, command, damage):
    root = tmp_path / "saes"
    for layer in (1, 2):
        save(root / f"layer_{layer}", layer)
    DAMAGE[damage][0](root / "layer_2")
    args = {"interpret": ["interpret", "--store", tmp_path / "no-store", "--sae", root / "layer_2", "--out",
                          tmp_path / "o", "--device", "cpu"],
            "evaluate": ["evaluate", "--sae", root / "layer_2", "--model", "unused", "--device", "cpu"],
            "match": ["match", "--sae", root, "--out", tmp_path / "o", "--device", "cpu"]}
    result = cli(args[command], tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "layer_2" in lines[0] and ("sae_weights.safetensors" in lines[0] or "cfg.json" in lines[0])
