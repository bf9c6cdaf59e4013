"""`ghosttrack match` and `ghosttrack track` end to end on the tiny GPT-2, and their bad-input errors."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.tracks.codes import SparseCodes
from ghosttrack.tracks.edges import read_matches
from ghosttrack.tracks.tracker import HypothesisTracker
from tracks_helpers import random_sae, save_layer

D_MODEL = 32  # the tiny GPT-2 of conftest
LAYERS = (0, 1, 2)
TEXT = "the quick brown fox jumps over the lazy dog by the river"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_gpt2_dir, corpus_file):
    root = tmp_path_factory.mktemp("tracks_cli")
    result = run("extract", "--model", tiny_gpt2_dir, "--corpus", corpus_file, "--layers", "0,1,2", "--tokens", "2048",
                 "--seq-len", "32", "--batch-size", "8", "--chunk-tokens", "64", "--device", "cpu", "--out",
                 root / "store")
    assert result.exit_code == 0, result.output
    for layer in LAYERS:
        sae = random_sae(D_MODEL, 40 + 8 * layer, seed=layer, bias=0.0)
        sae.metadata["hook_name"] = f"blocks.{layer}.hook_resid_post"
        save_layer(sae, root / "sae", layer)
    return root, tiny_gpt2_dir


def test_match_with_and_without_store(run_dirs):
    root, _ = run_dirs
    result = run("match", "--sae", root / "sae", "--out", root / "free", "--top", 3, "--device", "cpu",
                 "--src-block", 7, "--dst-block", 11)
    assert result.exit_code == 0, result.output
    assert "layer 0 -> 1: 120 edges" in result.output
    result = run("match", "--sae", root / "sae", "--out", root / "coact", "--store", root / "store", "--top", 3,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "coact" / "summary.json").read_text())
    assert summary["method"] == "coactivation" and [p["dst_layer"] for p in summary["pairs"]] == [1, 2]
    assert all(p["rows"] > 0 for p in summary["pairs"])
    columns = pq.read_schema(root / "coact" / "layer_1_to_2.parquet").names
    assert columns[:4] == ["src", "dst", "score", "rank"] and "coact_jaccard" in columns and "decoder_cosine" in columns


def test_track_end_to_end(run_dirs, tmp_path, tiny_tokenizer):
    root, model = run_dirs
    assert run("match", "--sae", root / "sae", "--out", tmp_path / "m", "--top", 4, "--device", "cpu").exit_code == 0
    interp = tmp_path / "interp"
    for layer in LAYERS:
        (interp / f"layer_{layer}").mkdir(parents=True)
        (interp / f"layer_{layer}" / "index.html").write_text("<html></html>")
    out = tmp_path / "T"
    result = run("track", "--model", model, "--sae", root / "sae", "--matches", tmp_path / "m", "--text", TEXT,
                 "--out", out, "--interp", interp, "--min-score", 0.0, "--device", "cpu")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "tracks.json").read_text())
    ids = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert saved["token_ids"] == ids and saved["layers"] == list(LAYERS)
    stats = pq.read_table(out / "token_stats.parquet").to_pydict()
    assert stats["token"] == list(range(len(ids)))
    assert "../interp/layer_1/index.html" in (out / "tracks_data.js").read_text()
    # The same tracks from the model's own hidden states (HF hidden_states[i + 1] is block i's output).
    from transformers import AutoModel

    net = AutoModel.from_pretrained(model).eval()
    with torch.no_grad():
        hidden = net(torch.tensor([ids]), output_hidden_states=True).hidden_states
    from ghosttrack.sae import load_sae

    codes = {layer: SparseCodes.from_dense(load_sae(root / "sae" / f"layer_{layer}").encode(hidden[layer + 1][0]))
             for layer in LAYERS}
    tracker = HypothesisTracker(list(LAYERS), read_matches(tmp_path / "m", list(LAYERS)),
                                {layer: 40 + 8 * layer for layer in LAYERS}, min_score=0.0)
    want = tracker.track(codes)
    assert saved["n_tracks"] == want.n_tracks > len(ids)
    want_tracks = want.tracks()
    assert [[c[:2] for c in t["chain"]] for t in saved["tracks"]] == [[[l, f] for l, f, _ in t.chain] for t in want_tracks]
    np.testing.assert_allclose([c[2] for t in saved["tracks"] for c in t["chain"]],
                               [a for t in want_tracks for _, _, a in t.chain], rtol=1e-3, atol=1e-5)
    got_births = [t["birth_layer"] for t in saved["tracks"]]
    assert got_births == [LAYERS[k] for k in want.track_birth.tolist()]
    assert [t["merged_into"] for t in saved["tracks"]] == [None if m < 0 else int(m) for m in want.track_merged_into]
    assert stats["alive_layer2"] == [float(x) for x in np.bincount(want.entry_token[2], minlength=len(ids))]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load weights fails the test: bad inputs must be refused before."""
    import ghosttrack.extract.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(models, "load_model", refuse)


def test_bad_inputs_exit_2_before_the_model_loads(run_dirs, tmp_path, no_model_load):
    root, model = run_dirs
    assert run("match", "--sae", root / "sae", "--out", tmp_path / "m", "--device", "cpu").exit_code == 0
    base = ["track", "--model", model, "--matches", tmp_path / "m", "--out", tmp_path / "T"]

    def error(*args) -> str:
        result = run(*args)
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert line.startswith("error: ") and "\n" not in line, line
        return line

    assert "exactly one of" in error(*base, "--sae", root / "sae")
    assert "exactly one of" in error(*base, "--sae", root / "sae", "--text", "x", "--input", tmp_path / "f.txt")
    one = tmp_path / "one"
    save_layer(random_sae(D_MODEL, 8), one, 1)
    assert "at least 2" in error(*base, "--sae", one, "--text", TEXT)
    narrow = tmp_path / "narrow"
    for layer in (0, 1):
        save_layer(random_sae(16, 8, seed=layer), narrow, layer)
    assert run("match", "--sae", narrow, "--out", tmp_path / "mn").exit_code == 0
    assert "d_model=16" in error("track", "--model", model, "--matches", tmp_path / "mn", "--out", tmp_path / "T",
                                 "--sae", narrow, "--text", TEXT)
    extra = tmp_path / "extra"
    for layer in (0, 1, 2, 3):
        save_layer(random_sae(D_MODEL, 8, seed=layer), extra, layer)
    assert "layer_2_to_3.parquet" in error(*base, "--sae", extra, "--text", TEXT)
    deep = tmp_path / "deep"
    for layer in (2, 7):
        save_layer(random_sae(D_MODEL, 8, seed=layer), deep, layer)
    assert run("match", "--sae", deep, "--out", tmp_path / "md").exit_code == 0
    assert "layers 0-3" in error("track", "--model", model, "--matches", tmp_path / "md", "--out", tmp_path / "T",
                                 "--sae", deep, "--text", TEXT)
    assert "no feature browser" in error(*base, "--sae", root / "sae", "--text", TEXT, "--interp", tmp_path)
    assert "empty" in error(*base, "--sae", root / "sae", "--text", "   ")
    assert "lacks layer" in error("match", "--sae", extra, "--out", tmp_path / "mx", "--store", root / "store")
