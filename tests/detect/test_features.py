"""Detection features from one batched forward pass equal a plain one-example-at-a-time reference."""
import numpy as np
import pytest
import torch

from ghosttrack.detect.data import Examples
from ghosttrack.detect.features import (add_sae_features, compute_features, encode_example, load_features,
                                        save_features)


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    from ghosttrack.extract.models import load_model

    return load_model(str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def tiny_saes():
    from ghosttrack.sae import SparseAutoencoder, TopKSAEConfig

    torch.manual_seed(1)
    return {layer: SparseAutoencoder(TopKSAEConfig(d_in=32, d_sae=48, k=5)) for layer in (1, 2)}


def _examples(n: int = 11, seed: int = 0) -> Examples:
    from conftest import WORDS

    rng = np.random.default_rng(seed)
    questions = [" ".join(rng.choice(WORDS, rng.integers(2, 12))) + "?" for _ in range(n)]
    answers = [" ".join(rng.choice(WORDS, rng.integers(1, 7))) for _ in range(n)]
    return Examples(questions, answers, rng.integers(0, 2, n), np.arange(n), [str(i) for i in range(n)], "test")


def _reference(loaded, saes, question, answer, layers):
    """Plain path: HF hidden_states and log_softmax on one unpadded example."""
    ids, start = encode_example(loaded.tokenizer, question, answer, 128, 48)
    out = loaded.model(torch.tensor([ids]), output_hidden_states=True)
    logp = torch.log_softmax(out.logits[0, :-1].double(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    # hidden_states[i + 1] is block i's output (the last block's has the final norm; not probed here).
    hidden = {layer: out.hidden_states[layer + 1][0] for layer in layers}
    return {
        "mean": {layer: h[start:].mean(0) for layer, h in hidden.items()},
        "last": {layer: h[-1] for layer, h in hidden.items()},
        "prompt": {layer: h[start - 1] for layer, h in hidden.items()},
        "sae_mean": {layer: sae.encode(hidden[layer][start:]).mean(0) for layer, sae in saes.items()},
        "sae_last": {layer: sae.encode(hidden[layer][-1:])[0] for layer, sae in saes.items()},
        "logprob": logp[start - 1:].mean().item(), "n": len(ids) - start,
    }


@torch.no_grad()
def test_batched_features_equal_the_plain_reference(tiny, tiny_saes):
    examples = _examples()
    layers = [0, 1, 2]
    features = compute_features(tiny, examples, layers, sorted(tiny_saes), batch_size=4, progress=False)
    add_sae_features(features, tiny_saes)
    for i in range(len(examples)):
        ref = _reference(tiny, tiny_saes, examples.questions[i], examples.answers[i], layers)
        for k, layer in enumerate(layers):
            torch.testing.assert_close(torch.from_numpy(features.resid_mean[k, i]).float(), ref["mean"][layer],
                                       rtol=2e-3, atol=2e-3)  # stored as float16
            torch.testing.assert_close(torch.from_numpy(features.resid_last[k, i]).float(), ref["last"][layer],
                                       rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(torch.from_numpy(features.resid_prompt[k, i]).float(), ref["prompt"][layer],
                                       rtol=2e-3, atol=2e-3)
        for layer in tiny_saes:
            torch.testing.assert_close(torch.from_numpy(features.sae_mean[layer][i].toarray()[0]).float(),
                                       ref["sae_mean"][layer], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(torch.from_numpy(features.sae_last[layer][i].toarray()[0]).float(),
                                       ref["sae_last"][layer], rtol=1e-4, atol=1e-5)
        assert features.answer_logprob[i] == pytest.approx(ref["logprob"], abs=1e-4)
        assert features.answer_tokens[i] == ref["n"]


def test_answer_tokens_are_the_answer_alone_and_long_questions_are_cut_from_the_left(tiny):
    tok = tiny.tokenizer
    ids, start = encode_example(tok, "the river", "the dog", 128, 48)
    assert tok.decode(ids[start:]) == " the dog" and tok.decode(ids[:start]) == "Q: the river\nA:"
    ids, start = encode_example(tok, "war " * 200, "the king of the village", 40, 3)
    prompt = tok.decode(ids[:start])
    assert len(ids) == 40 and len(ids) - start == 3 and prompt.endswith("war \nA:") and not prompt.startswith("Q:")


def test_cache_round_trip(tmp_path, tiny, tiny_saes):
    features = compute_features(tiny, _examples(5), [1, 3], [2, 1], batch_size=2, progress=False)
    save_features(features, tmp_path / "key")
    loaded = load_features(tmp_path / "key")
    for name in ("resid_mean", "resid_last", "resid_prompt", "answer_logprob", "answer_tokens", "token_rows"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(features, name))
    assert loaded.layers == [1, 3] and loaded.token_layers == [1, 2] and loaded.track_stats is None
    assert loaded.token_rows.shape == (2, features.answer_tokens.sum(), 32)
    assert load_features(tmp_path / "missing") is None


def random_edges(saes: dict, per_source: int = 3, seed: int = 0) -> dict:
    """Edges from every latent of each layer to a few random latents of the next, all above threshold."""
    rng = np.random.default_rng(seed)
    layers = sorted(saes)
    edges = {}
    for i, j in zip(layers[:-1], layers[1:]):
        src = np.repeat(np.arange(saes[i].cfg.d_sae), per_source)
        edges[(i, j)] = {"src": src, "dst": rng.integers(0, saes[j].cfg.d_sae, len(src)),
                         "score": rng.uniform(0.5, 1.0, len(src)).astype(np.float32)}
    return edges


@torch.no_grad()
def test_tracker_statistics_of_the_answer_rows_equal_tracking_the_whole_text(tiny, tiny_saes):
    """Tracks follow one token across layers: tracking the cached answer rows alone must give what the
    tracks stage gives for the whole text pooled over the answer's span."""
    from ghosttrack.detect.features import add_track_features
    from ghosttrack.tracks.pipeline import TrackingPipeline
    from ghosttrack.tracks.stats import track_statistics
    from ghosttrack.tracks.tracker import HypothesisTracker

    examples = _examples(6, seed=3)
    tracker = HypothesisTracker(sorted(tiny_saes), random_edges(tiny_saes), {k: 48 for k in tiny_saes})
    features = compute_features(tiny, examples, [0], sorted(tiny_saes), batch_size=4, progress=False)
    add_track_features(features, tracker, add_sae_features(features, tiny_saes))

    pipe = TrackingPipeline(tiny, tiny_saes, tracker, "resid_post")
    results, spans = [], []
    for question, answer in zip(examples.questions, examples.answers):
        ids, start = encode_example(tiny.tokenizer, question, answer, 128, 48)
        results.append(pipe.track_ids(torch.tensor([ids])))
        spans.append((start, len(ids)))
    expected, names = track_statistics(results, spans)
    assert features.track_names == names
    assert expected[:, names.index("n_tracks_mean")].min() > 0  # the edges link something
    np.testing.assert_allclose(features.track_stats, expected, rtol=1e-5, atol=1e-6)
