"""The original GhostTrack's names import from `ghosttrack` and work as its users expect."""
import ghosttrack
from ghosttrack.store.reader import ActivationStore


def test_every_seed_name_resolves():
    for name in ghosttrack.__all__:
        assert getattr(ghosttrack, name) is not None, name


def test_extract_for_layer_writes_that_layer(tiny_gpt2_dir, corpus_file, tmp_path):
    model = ghosttrack.load_model(str(tiny_gpt2_dir), causal_lm=False)
    corpus = ghosttrack.open_corpus(str(corpus_file))
    extractor = ghosttrack.HiddenStateExtractor(model, corpus, tmp_path / "store")
    path = extractor.extract_for_layer(layer_idx=2, num_tokens=512, batch_size=4, seq_len=32)
    assert path == tmp_path / "store" / "layers" / "2"
    store = ActivationStore.open(tmp_path / "store")
    assert store.layers == [2] and store.n_tokens == 512 and store.complete
