"""Feature pages on the planted store: per-token activations, quantile examples, boundaries,
nearest features, and the rows that are the top example of many features."""
import numpy as np
import pytest
import torch

from ghosttrack.interpret.features import FeatureInterpreter, InterpretConfig
from ghosttrack.interpret.neighbors import nearest_by_decoder
from ghosttrack.store.reader import ActivationStore
from interpret.test_features import D_SAE, N_SEQ, SEQ, planted_sae, planted_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_tokenizer, sample_texts):
    path, E, outliers, ids = planted_store(tmp_path_factory.mktemp("pages") / "store", tiny_tokenizer, sample_texts)
    sae, common = planted_sae(E, ids)
    return path, sae, common, outliers, ids


def plain_acts(sae, store):
    """Every row through the encoder at once, and the rows the default rule keeps."""
    x = torch.from_numpy(store.read_rows(0, 0, store.n_tokens).astype(np.float32))
    with torch.no_grad():
        acts = sae.encode(x).numpy()
    norms = x.norm(dim=1).numpy()
    pos = store.positions()
    keep = (pos != 0) & (norms <= 3.0 * np.median(norms[pos != 0]))
    return acts, keep


def test_every_token_of_every_shown_context(planted, tiny_tokenizer):
    path, sae, common, outliers, ids = planted
    store = ActivationStore.open(path)
    interp = FeatureInterpreter(sae, store, config=InterpretConfig(top_k=4, context_before=6, context_after=3,
                                                                   batch_size=29, progress=False))
    acts, keep = plain_acts(sae, store)
    eos = tiny_tokenizer.eos_token
    seen_eos = seen_skipped = 0
    for rec in interp.interpret_all_features().values():
        f = rec["feature_id"]
        shown = rec["top_examples"] + [ex for q in rec["quantiles"] for ex in q["examples"]]
        for ex in shown:
            first = ex["row"] - ex["token_index"]
            assert len(ex["acts"]) == len(ex["tokens"])
            for j, a in enumerate(ex["acts"]):
                row = first + j
                assert row // SEQ == ex["row"] // SEQ  # never crosses into another sequence
                if keep[row]:
                    assert a == pytest.approx(acts[row, f], rel=1e-3, abs=1e-6)
                else:
                    assert a is None  # a skipped row (position 0 or outlier) is never encoded
                    seen_skipped += 1
            assert ex["acts"][ex["token_index"]] == pytest.approx(ex["activation"], rel=1e-3)
            # Boundaries: the window starts a sequence exactly when its first row is at position 0,
            # and EOS separators are listed where the tokens are EOS.
            assert ex["doc_start"] == (first % SEQ == 0)
            assert ex["eos"] == [j for j, t in enumerate(ex["tokens"]) if t == eos]
            seen_eos += len(ex["eos"])
    assert seen_eos > 0 and seen_skipped > 0


def test_quantile_examples_in_records(planted):
    path, sae, common, outliers, ids = planted
    store = ActivationStore.open(path)
    interp = FeatureInterpreter(sae, store, config=InterpretConfig(top_k=3, quantile_bands=4, examples_per_band=2,
                                                                   sample_size=16, progress=False))
    acts, keep = plain_acts(sae, store)
    for f in range(D_SAE):
        rec = interp.interpret_feature(f)
        if not rec["active"]:
            assert rec["quantiles"] == []
            continue
        fired = np.sort(acts[keep, f][acts[keep, f] > 0])
        assert [q["band"] for q in rec["quantiles"]] == [0, 1, 2, 3]
        assert rec["quantiles"][-1]["hi"] == pytest.approx(rec["top_activation"])
        for q in rec["quantiles"]:
            assert len(q["examples"]) <= 2
            for ex in q["examples"]:
                assert q["lo"] <= ex["activation"] <= q["hi"]
                assert ex["activation"] == pytest.approx(acts[ex["row"], f], rel=1e-5) and keep[ex["row"]]
            # Each band's range holds about a quarter of the activations (the edges are within a bin),
            # unless ties collapse it (feature 8 is 1.0 on every row: all in the top band).
            share = np.mean((fired >= q["lo"]) & (fired < q["hi"]))
            assert abs(share - 0.25) < 0.15 or len(fired) < 40 or fired[0] == fired[-1]
        if len(fired) >= 16 and fired[0] < fired[-1]:  # the sample reaches every band here
            assert sum(len(q["examples"]) for q in rec["quantiles"]) >= 6


def test_nearest_by_decoder_matches_full_matrix():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(37, 11, generator=g) * torch.rand(37, 1, generator=g)  # rows of different norms
    W[5] = 0  # a zero row: cosine 0 with everything
    ids, cos = nearest_by_decoder(W, 6, block=8)  # blocks of 8: the last one partial
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    full = (unit @ unit.T).numpy()
    np.fill_diagonal(full, -np.inf)
    for h in range(37):
        want = np.argsort(-full[h], kind="stable")[:6]
        if h != 5:
            np.testing.assert_array_equal(ids[h], want)
        np.testing.assert_allclose(cos[h], full[h][want], atol=1e-5)
        assert h not in ids[h]
    assert ids.shape == (37, 6) and nearest_by_decoder(W[:1], 3)[0].shape == (1, 0)


def test_rows_peaking_many_features_are_reported(planted):
    path, sae, common, outliers, ids = planted
    store = ActivationStore.open(path)
    # Keeping every row, the 40x sinks at position 0 are the top example of most random features.
    loose = FeatureInterpreter(sae, store, config=InterpretConfig(top_k=2, skip_flagged=False, max_norm_ratio=None,
                                                                  progress=False)).summary()
    assert loose["peak_positions"][0]["position"] == 0 and loose["peak_positions"][0]["share"] > 0.5
    assert loose["peak_rows"] and all(r["features"] >= 3 for r in loose["peak_rows"])
    top = loose["peak_rows"][0]
    assert top["tokens"] and top["position"] in (0,) + tuple(int(o) % SEQ for o in outliers)
    assert "--skip-positions 0" in loose["peak_hint"]
    # With the default rule, no position stands out.
    assert FeatureInterpreter(sae, store, config=InterpretConfig(top_k=2, progress=False)).summary()["peak_hint"] is None


def test_skip_positions_rule(planted):
    path, sae, common, outliers, ids = planted
    store = ActivationStore.open(path)
    interp = FeatureInterpreter(sae, store, config=InterpretConfig(top_k=3, skip_positions=(1, 2), progress=False))
    stats = interp.run()
    summary = interp.summary()
    assert summary["skip_positions"] == [1, 2] and summary["rows_skipped_positions"] == 2 * N_SEQ
    assert stats.n_rows == N_SEQ * SEQ - 3 * N_SEQ - stats.skipped_outliers
    shown = stats.top_rows[stats.top_rows >= 0]
    assert not np.isin(shown % SEQ, [0, 1, 2]).any()
    # Recorded with the SAE by the trainer, the rule is the default here too.
    sae.metadata = {**sae.metadata, "ghosttrack": {"trainer_config": {"skip_positions": [1]}}}
    assert FeatureInterpreter(sae, store, config=InterpretConfig(progress=False)).skip_positions == (1,)
    assert FeatureInterpreter(sae, store, config=InterpretConfig(skip_positions=(), progress=False)).skip_positions == ()
