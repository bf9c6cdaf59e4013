"""Extraction overlaps its stages without changing a byte: tokenization runs on a thread ahead of the
forward passes, the host buffers are capped by bytes, and resuming a complete store tokenizes nothing
beyond the first sequence."""
import json
import threading

import pytest

from ghosttrack.corpus.sources import open_corpus
from ghosttrack.extract.extractor import MAX_PENDING, ExtractionPlan, HiddenStateExtractor, pending_batches
from ghosttrack.extract.models import load_model

PLAN = dict(layers=[1], target_tokens=20480, seq_len=64, chunk_tokens=1024)  # ~2.5 x 64 documents


class _CountingCorpus:
    """The real corpus, noting which thread read each document."""

    def __init__(self, corpus):
        self.corpus, self.name, self.threads = corpus, corpus.name, []

    def describe(self):
        return self.corpus.describe()

    def get_texts(self, max_texts=None):
        for text in self.corpus.get_texts(max_texts):
            self.threads.append(threading.current_thread().name)
            yield text


@pytest.mark.parametrize("batch_bytes, cap, expected", [
    (1 << 20, 2 << 30, MAX_PENDING),  # small batches: the usual ring
    (1 << 30, 2 << 30, 1),  # big batches: still one waits
    (600 << 20, 2 << 30, 1),  # 4 x 600 MiB would exceed 2 GiB: 3 slots
    (100, 350, 1),
])
def test_host_buffers_are_capped_by_bytes(batch_bytes, cap, expected):
    assert pending_batches(batch_bytes, cap) == expected
    if expected > 1:
        assert (expected + 2) * batch_bytes <= cap


def test_tokenizing_runs_ahead_on_a_thread_and_a_complete_store_is_not_tokenized_again(
        tiny_gpt2_dir, corpus_file, tmp_path):
    loaded = load_model(str(tiny_gpt2_dir), causal_lm=False)
    full = _CountingCorpus(open_corpus(str(corpus_file)))
    HiddenStateExtractor(loaded, full, tmp_path / "s").extract(ExtractionPlan(**PLAN), batch_size=16, progress=False)
    assert len(full.threads) >= 128, len(full.threads)  # more than the first batch of documents packed
    assert set(full.threads[64:]) == {"ghosttrack-tokenize"}, set(full.threads[64:])  # all but the first batch
    again = _CountingCorpus(open_corpus(str(corpus_file)))
    HiddenStateExtractor(loaded, again, tmp_path / "s").extract(ExtractionPlan(**PLAN), batch_size=16, mode="resume",
                                                                 progress=False)
    assert len(again.threads) <= 64  # only the first sequence's batch of documents (the corpus check)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def test_resume_starts_from_the_recorded_corpus_position(tiny_gpt2_dir, corpus_file, tmp_path, monkeypatch):
    from ghosttrack.corpus import packing
    from ghosttrack.extract.resume_point import RESUME_FILE
    from ghosttrack.interrupts import Interrupted, StopRequest
    from ghosttrack.store.writer import StoreWriter

    loaded = load_model(str(tiny_gpt2_dir), causal_lm=False)
    corpus = open_corpus(str(corpus_file))
    HiddenStateExtractor(loaded, corpus, tmp_path / "full").extract(ExtractionPlan(**PLAN), batch_size=16,
                                                                    progress=False)
    tokenized = []
    real_tokenize = packing.tokenize_documents
    monkeypatch.setattr(packing, "tokenize_documents", lambda tok, docs: tokenized.extend(docs) or real_tokenize(tok, docs))
    stop, append = StopRequest(), StoreWriter.append

    def append_then_stop(self, *args):
        append(self, *args)
        if self.committed_tokens >= 16384:
            stop.request()
    monkeypatch.setattr(StoreWriter, "append", append_then_stop)
    with pytest.raises(Interrupted):
        HiddenStateExtractor(loaded, corpus, tmp_path / "cut").extract(ExtractionPlan(**PLAN), batch_size=16,
                                                                       progress=False, stop=stop)
    monkeypatch.setattr(StoreWriter, "append", append)
    recorded = json.loads((tmp_path / "cut" / RESUME_FILE).read_text())
    assert recorded["committed_tokens"] >= 16384 and recorded["doc"] > 64
    tokenized.clear()
    HiddenStateExtractor(loaded, corpus, tmp_path / "cut").extract(ExtractionPlan(**PLAN), batch_size=16,
                                                                   mode="resume", progress=False)
    # The corpus check's first batch (documents 0-63), then only the documents from the recorded one on:
    # none of those in between, which re-tokenizing the prefix would need.
    number = {text: i for i, text in enumerate(corpus.get_texts())}
    again = sorted(number[t] for t in tokenized)
    assert again and all(i < 64 or i >= recorded["doc"] for i in again), again
    assert _files(tmp_path / "cut") == _files(tmp_path / "full") and not (tmp_path / "cut" / RESUME_FILE).exists()
