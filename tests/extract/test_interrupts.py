"""Interrupts never hang and never damage a store: a stop requested at random points (in the
tokenizer's input, mid-forward, in the writer thread) ends the extraction within a bounded time
with the store at a commit, and --resume completes it to the bytes of an uninterrupted run.

The stop is injected deterministically through hooks (no wall-clock races); each trial runs in a
worker thread that must finish within a time bound, so a hang fails instead of blocking the suite.
"""
import os
import signal
import threading

import numpy as np
import pytest

from ghosttrack.corpus.sources import open_corpus
from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.async_writer import AsyncStoreWriter
from ghosttrack.extract.extractor import ExtractionPlan, HiddenStateExtractor
from ghosttrack.extract.hooks import find_blocks
from ghosttrack.extract.models import load_model
from ghosttrack.interrupts import Interrupted, StopRequest
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.writer import StoreWriter

TRIALS = 30
TRIAL_LIMIT_S = 60  # generous: a trial takes well under a second; only a hang gets near it
PLAN = dict(layers=[0, 2], target_tokens=1024, seq_len=16, chunk_tokens=64)  # 64 sequences, 16 chunks
BATCH = 3  # not a divisor of the 4 sequences per chunk: batches straddle chunks


@pytest.fixture(scope="module")
def loaded(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), causal_lm=False)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


class _StoppingCorpus:
    """The real corpus, requesting a stop once `after` documents went to the tokenizer (its thread)."""

    def __init__(self, corpus, stop: StopRequest, after: int):
        self.corpus, self.stop, self.after = corpus, stop, after
        self.name = corpus.name

    def describe(self):
        return self.corpus.describe()

    def get_texts(self, max_texts=None):
        for i, text in enumerate(self.corpus.get_texts(max_texts)):
            if i == self.after:
                self.stop.request("test: in the corpus")
            yield text


def _run_bounded(target):
    """Run target() in a thread; returns its outcome ("done" or the exception), failing on a hang."""
    outcome = {}

    def body():
        try:
            target()
            outcome["result"] = "done"
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["result"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(TRIAL_LIMIT_S)
    assert not thread.is_alive(), "the extraction hung after a stop request"
    return outcome["result"]


def test_stops_at_random_points_end_quickly_and_resume_to_identical_bytes(loaded, corpus_file, tmp_path, monkeypatch):
    corpus = open_corpus(str(corpus_file))
    reference = tmp_path / "reference"
    HiddenStateExtractor(loaded, corpus, reference).extract(ExtractionPlan(**PLAN), batch_size=BATCH, progress=False)
    expected = _files(reference)
    block0 = find_blocks(loaded.model)[0]
    original_append = StoreWriter.append
    rng = np.random.default_rng(8)
    n_batches = -(-64 // BATCH)
    outcomes = []
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        stop = StopRequest()
        where = ["corpus", "forward", "writer-before", "writer-after"][trial % 4]
        at = int(rng.integers(0, n_batches))
        calls = {"n": 0}
        source, handle = corpus, None
        # A stop set on the main thread (mid-forward) is seen before the next batch's forward starts;
        # one set on the tokenizer or writer thread may race with the forward then in flight.
        late = []
        watch = block0.register_forward_pre_hook(
            lambda module, args: late.append(trial) if stop.requested and where == "forward" else None)
        if where == "corpus":
            source = _StoppingCorpus(corpus, stop, after=int(rng.integers(0, 200)))
        elif where == "forward":
            def on_forward(module, args, output):
                calls["n"] += 1
                if calls["n"] == at + 1:
                    stop.request("test: mid-forward")
            handle = block0.register_forward_hook(on_forward)
        else:
            def append(self, *args, _before=where == "writer-before", **kwargs):
                calls["n"] += 1
                if _before and calls["n"] == at + 1:
                    stop.request("test: in the writer thread")
                original_append(self, *args, **kwargs)
                if not _before and calls["n"] == at + 1:
                    stop.request("test: in the writer thread")
            monkeypatch.setattr(StoreWriter, "append", append)
        try:
            result = _run_bounded(lambda: HiddenStateExtractor(loaded, source, out).extract(
                ExtractionPlan(**PLAN), batch_size=BATCH, progress=False, stop=stop))
        finally:
            watch.remove()
            if handle is not None:
                handle.remove()
            monkeypatch.setattr(StoreWriter, "append", original_append)
        assert result == "done" or isinstance(result, Interrupted), (trial, where, result)
        assert not late, f"trial {trial}: a forward pass started after the stop ({where})"
        outcomes.append(result == "done")
        if out.exists():
            # At a commit: whole chunks only, no temporary files, the committed rows are the reference's.
            store = ActivationStore.open(out)
            assert store.complete or store.n_tokens % PLAN["chunk_tokens"] == 0, (trial, store.n_tokens)
            assert not list(out.rglob("*.partial")), trial
            ref = ActivationStore.open(reference)
            for layer in PLAN["layers"]:
                np.testing.assert_array_equal(store.read_rows(layer, 0, store.n_tokens),
                                              ref.read_rows(layer, 0, store.n_tokens))
        else:  # stopped while the first sequence was tokenized: set-up ended before any store was made
            assert isinstance(result, Interrupted) and where == "corpus", (trial, where, result)
        # The lock was released: --resume finishes it to the uninterrupted bytes.
        result = _run_bounded(lambda: HiddenStateExtractor(loaded, corpus, out).extract(
            ExtractionPlan(**PLAN), batch_size=BATCH, mode="resume", progress=False))
        assert result == "done", (trial, result)
        assert _files(out) == expected, trial
    assert not all(outcomes), "no trial was interrupted: the injection points never fired"


class _StalledWriter:
    """A store writer whose disk never answers: append blocks until released."""

    def __init__(self, path):
        self.path = path
        self.release = threading.Event()
        self.appended = 0
        self.closed_with = None

    def append(self, *args):
        self.release.wait()
        self.appended += 1

    def close(self, complete):
        self.closed_with = complete


def _batch():
    import torch

    return dict(acts={0: torch.zeros(4, 8, dtype=torch.float16)}, tokens=np.zeros(4, np.int32),
                positions=np.zeros(4, np.int32), sequence_ids=np.zeros(4, np.int64))


def test_a_stalled_writer_becomes_an_error_and_a_stop_ends_the_wait(tmp_path):
    stalled = _StalledWriter(tmp_path)
    sink = AsyncStoreWriter(stalled, pinned=False, max_pending=2, stall_timeout=0.3)
    for _ in range(3):  # one being written (blocked), two queued
        sink.submit(**_batch())
    with pytest.raises(GhostTrackError, match=r"made no progress for 0.3 s \(waiting for a place in the write queue\)"):
        sink.submit(**_batch())
    # Closing does not wait forever either, and leaves the store alone while the thread is stuck.
    with pytest.raises(GhostTrackError, match="made no progress"):
        sink.close(complete=False)
    assert stalled.closed_with is None
    stalled.release.set()

    stalled = _StalledWriter(tmp_path)
    stop = StopRequest()
    sink = AsyncStoreWriter(stalled, pinned=False, max_pending=2, should_stop=lambda: stop.requested,
                            stall_timeout=60)
    for _ in range(3):
        sink.submit(**_batch())
    stop.request()
    with pytest.raises(Interrupted):
        sink.submit(**_batch())  # returns at the next poll, not after the 60 s stall limit
    stalled.release.set()
    sink.close(complete=False)  # queued batches are dropped: the store stays at its last commit
    assert stalled.closed_with is False and stalled.appended <= 1


def test_signals_set_the_flag_a_second_one_raises_and_ignored_signals_stay_ignored():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.signal_name == "SIGTERM"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        # A shell starts background jobs with SIGINT ignored: that choice is kept.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
