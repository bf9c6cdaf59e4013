"""Interpretation on a store with planted features: each "token feature" fires on one token only."""
import io
import json

import numpy as np
import pytest
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.interpret.features import (FeatureInterpreter, InterpretConfig, analyze_sae, print_feature_summary,
                                  write_records)
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.writer import StoreWriter

D, SEQ, N_SEQ, CHUNK = 24, 16, 40, 96  # 640 rows in 7 chunks (the last one partial)
TOKEN_FEATURES = 8  # features 0..7 fire on one token each; 8 is dense, 9 dead, the rest random
D_SAE = 29


def planted_store(path, tokenizer, texts, *, layers=(0, 3), n_seq=N_SEQ):
    """A store of real token ids; each row is the token's random embedding plus noise.

    Position-0 rows get 40x norms (attention sinks); two more rows are 20x outliers.
    Returns (store path, embedding table E (vocab, D), outlier rows).
    """
    ids = tokenizer("".join(t + tokenizer.eos_token for t in texts), add_special_tokens=False)["input_ids"]
    ids = np.array(ids[: n_seq * SEQ], dtype=np.int32)
    assert len(ids) == n_seq * SEQ
    rng = np.random.default_rng(0)
    E = rng.standard_normal((len(tokenizer), D)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    x = E[ids] + 0.05 * rng.standard_normal((len(ids), D)).astype(np.float32)
    positions = np.tile(np.arange(SEQ, dtype=np.int32), n_seq)
    x[positions == 0] *= 40
    outliers = np.array([37, 301])
    x[outliers] *= 20
    attrs = {"model": "planted", "revision": None, "hook": "resid_post", "context_length": SEQ,
             "tokenizer": "planted", "corpus": {"kind": "planted"}}
    with StoreWriter.open(path, layers=list(layers), d_model=D, target_tokens=len(ids), chunk_tokens=CHUNK,
                          attrs=attrs) as w:
        for s in range(0, len(ids), 50):
            w.append({layer: x[s:s + 50] * (1 + layer) for layer in layers}, ids[s:s + 50], positions[s:s + 50],
                     np.arange(s, min(s + 50, len(ids))) // SEQ)
        w.close(complete=True)
    tokenizer.save_pretrained(path / "tokenizer")
    return path, E, outliers, ids


def planted_sae(E, ids, layer=0):
    """Features 0..7 detect the 8 most frequent tokens; 8 fires everywhere; 9 never."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(ReluSAEConfig(d_in=D, d_sae=D_SAE), {"hook_layer": layer, "hook_name":
                                                                  f"blocks.{layer}.hook_resid_post"})
    common = [int(t) for t in np.bincount(ids).argsort()[::-1][:TOKEN_FEATURES]]
    scale = 1 + layer
    with torch.no_grad():
        sae.W_enc.mul_(0.1)
        sae.b_enc.fill_(-0.5 * scale)
        for f, t in enumerate(common):
            sae.W_enc[:, f] = torch.from_numpy(E[t])
            sae.b_enc[f] = -0.6 * scale  # own token gives ~1 x scale, others ~N(0, 1/D) x scale
        sae.W_enc[:, 8] = 0
        sae.b_enc[8] = 1.0  # fires on every row: dense
        sae.W_enc[:, 9] = 0
        sae.b_enc[9] = -1.0  # never fires: dead
    return sae, common


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_tokenizer, sample_texts):
    path, E, outliers, ids = planted_store(tmp_path_factory.mktemp("planted") / "store", tiny_tokenizer, sample_texts)
    sae, common = planted_sae(E, ids)
    return path, sae, common, outliers, ids


def test_matches_plain_computation(planted):
    path, sae, common, outliers, ids = planted
    store = ActivationStore.open(path)
    interp = FeatureInterpreter(sae, store, config=InterpretConfig(top_k=5, batch_size=37, progress=False))
    stats = interp.run()
    # Plain path: every row at once, flagged and outlier rows removed by the same rule.
    x = torch.from_numpy(store.read_rows(0, 0, store.n_tokens).astype(np.float32))
    pos = store.positions()
    norms = x.norm(dim=1).numpy()
    median = np.median(norms[pos != 0])
    keep = (pos != 0) & (norms <= 3.0 * median)
    assert stats.skipped_flagged == N_SEQ and stats.skipped_outliers == len(outliers)
    assert stats.n_rows == keep.sum()
    with torch.no_grad():
        acts = sae.encode(x[keep]).numpy()
    rows = np.flatnonzero(keep)
    np.testing.assert_array_equal(stats.counts, (acts > 0).sum(0))
    np.testing.assert_allclose(stats.mean_values, np.where((acts > 0).sum(0) > 0, acts.sum(0) / np.maximum(
        (acts > 0).sum(0), 1), 0), rtol=1e-5)
    for f in range(D_SAE):
        nz = np.flatnonzero(acts[:, f])
        best = nz[np.argsort(-acts[nz, f], kind="stable")][:5]
        np.testing.assert_array_equal(stats.top_rows[f, :len(best)], rows[best])
        np.testing.assert_allclose(stats.top_values[f, :len(best)], acts[best, f], rtol=1e-5)


def test_records_contexts_and_lists(planted, tiny_tokenizer):
    path, sae, common, outliers, ids = planted
    store = ActivationStore.open(path)
    interp = FeatureInterpreter(sae, store, config=InterpretConfig(top_k=6, context_before=5, context_after=2,
                                                                   progress=False))
    records = interp.interpret_all_features()
    for f, t in enumerate(common):
        rec = records[f]
        token = tiny_tokenizer.decode([t])
        assert rec["active"] and rec["common_tokens"][0] == [token, len(rec["top_examples"])]
        for ex in rec["top_examples"]:
            row = ex["row"]
            assert ids[row] == t and ex["token"] == token and ex["position"] == row % SEQ != 0
            i = ex["token_index"]
            assert ex["tokens"][i] == token and i == min(5, row % SEQ)
            assert len(ex["tokens"]) == i + 1 + min(2, SEQ - 1 - row % SEQ)  # never crosses into another sequence
            lo = row - i
            assert ex["text"] == tiny_tokenizer.decode(ids[lo:lo + len(ex["tokens"])].tolist())
        acts = [ex["activation"] for ex in rec["top_examples"]]
        assert acts == sorted(acts, reverse=True) and rec["top_activation"] == acts[0]
        assert sum(rec["histogram"]["counts"]) == rec["num_activations"]
        assert rec["histogram"]["bin_edges"][-1] == pytest.approx(rec["top_activation"])
    assert interp.interpret_feature(3) == records[3]  # one feature alone gives the same record
    assert [r for block in interp.iter_records(block=7) for r in block] == list(records.values())
    assert records[9]["active"] is False and records[9]["top_examples"] == [] and records[9]["num_activations"] == 0
    assert records[8]["density"] == 1.0
    summary = interp.summary()
    assert summary["dead"]["features"][:1] == [9] and 9 in summary["dead"]["features"]
    assert 8 in [d["feature_id"] for d in summary["dense"]["features"]]
    assert sum(summary["density_histogram"]["counts"]) == D_SAE - summary["dead"]["count"]
    buf = io.StringIO()
    print_feature_summary(records[0], file=buf)
    text = buf.getvalue()
    assert text.startswith("Feature 0 (active)") and "[[" + tiny_tokenizer.decode([common[0]]) + "]]" in text


def test_keep_all_rows_shows_sinks(planted):
    path, sae, common, outliers, ids = planted
    interp = FeatureInterpreter(sae, ActivationStore.open(path), config=InterpretConfig(
        top_k=3, skip_flagged=False, max_norm_ratio=None, progress=False))
    stats = interp.run()
    assert stats.n_rows == N_SEQ * SEQ and stats.skipped_flagged == stats.skipped_outliers == 0
    # The 40x sink rows (and 20x outliers) now dominate the random features' top examples.
    top = stats.top_rows[10:][stats.top_rows[10:] >= 0]
    assert np.mean([r % SEQ == 0 or r in outliers for r in top]) > 0.8


def test_analyze_sae_writes_files(planted, tmp_path):
    path, sae, common, outliers, ids = planted
    sae_dir = tmp_path / "sae"
    sae.save(sae_dir)
    out = tmp_path / "interp"
    summary = analyze_sae(sae_dir, path, out, config=InterpretConfig(top_k=4, progress=False))
    layer_dir = out / "layer_0"
    records = json.loads((layer_dir / "features.json").read_text())
    assert [r["feature_id"] for r in records] == list(range(D_SAE))
    assert set(records[0]) >= {"feature_id", "active", "num_activations", "top_activation", "mean_activation",
                               "common_tokens", "top_examples", "density"}
    assert set(records[0]["top_examples"][0]) >= {"text", "position", "activation"}
    on_disk = json.loads((layer_dir / "summary.json").read_text())
    assert on_disk["dead"] == summary["dead"] and on_disk["files"]["html"].endswith("index.html")
    assert (layer_dir / "index.html").is_file() and (layer_dir / "browser_data" / "overview.js").is_file()
    # JSON Lines for large dictionaries (forced here), the old .json removed.
    analyze_sae(sae_dir, path, out, config=InterpretConfig(top_k=4, output_format="jsonl", html=False, progress=False))
    lines = (layer_dir / "features.jsonl").read_text().splitlines()
    assert [json.loads(line)["feature_id"] for line in lines] == list(range(D_SAE))
    assert not (layer_dir / "features.json").exists()


def test_other_layer_and_errors(planted, tmp_path):
    path, sae, common, outliers, ids = planted
    store = ActivationStore.open(path)
    with pytest.raises(GhostTrackError, match="layer 5 is not in store"):
        FeatureInterpreter(sae, store, layer=5)
    wide = SparseAutoencoder(ReluSAEConfig(d_in=D + 1, d_sae=4))
    with pytest.raises(GhostTrackError, match="d_in=25"):
        FeatureInterpreter(wide, store, layer=0)
    with pytest.raises(GhostTrackError, match="--top-k 0: must be >= 1"):
        InterpretConfig(top_k=0)
    with pytest.raises(GhostTrackError, match="names no layer"):
        FeatureInterpreter(SparseAutoencoder(ReluSAEConfig(d_in=D, d_sae=4)), store)
    interp = FeatureInterpreter(sae, store, config=InterpretConfig(top_k=2, progress=False))
    with pytest.raises(GhostTrackError, match="does not exist"):
        interp.interpret_feature(D_SAE)


@pytest.mark.parametrize("jsonl", [False, True])
def test_write_records_streams_blocks(tmp_path, jsonl):
    blocks = [[{"feature_id": 0, "x": "a"}, {"feature_id": 1, "x": "</b>"}], [], [{"feature_id": 2, "x": "\u00e9"}]]
    path = write_records(iter(blocks), tmp_path, jsonl=jsonl)
    text = path.read_text()
    got = [json.loads(line) for line in text.splitlines()] if jsonl else json.loads(text)
    assert got == [r for b in blocks for r in b]
    empty = write_records(iter([]), tmp_path, jsonl=jsonl)
    assert (json.loads(empty.read_text()) if not jsonl else empty.read_text()) in ([], "")
