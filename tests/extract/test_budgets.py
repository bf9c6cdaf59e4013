"""Absurd budgets are refused before anything is written; set-up has no unbounded loop and honours a
stop request at every step; a corpus that runs out before --tokens is reported and recorded."""
import numpy as np
import pytest
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.corpus.sources import open_corpus
from ghosttrack.extract.extractor import ExtractionPlan, HiddenStateExtractor
from ghosttrack.extract.models import load_model
from ghosttrack.interrupts import Interrupted, StopRequest
from ghosttrack.store import format as fmt
from ghosttrack.store.lock import live_holder
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS
from ghosttrack.store.writer import StoreWriter, _own_rows


def extract(model_dir, corpus, out, *extra):
    return CliRunner().invoke(main, ["extract", "--model", str(model_dir), "--corpus", str(corpus), "--layers", "1",
                                     "--seq-len", "32", "--batch-size", "8", "--device", "cpu", "--out", str(out),
                                     *extra])


@pytest.mark.parametrize("extra,message", [
    (["--tokens", "999999G"], "--tokens 999999G is more than one store takes"),
    (["--tokens", "2G", "--chunk-tokens", "64"], "more than a store holds (16,777,216 per array); pass fewer "
                                                 "--tokens or a larger --chunk-tokens"),
])
def test_absurd_budget_is_refused_before_anything_is_written(tiny_gpt2_dir, corpus_file, tmp_path, monkeypatch,
                                                             extra, message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the budget was checked")

    monkeypatch.setattr("ghosttrack.extract.models.load_model", no_model)
    result = extract(tiny_gpt2_dir, corpus_file, tmp_path / "store", *extra)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "store").exists()


def test_writer_refuses_a_budget_past_the_format(tmp_path):
    with pytest.raises(ValueError, match="more than a store holds"):
        StoreWriter.open(tmp_path / "s", layers=[0], d_model=4, target_tokens=fmt.MAX_TOKENS + 1, chunk_tokens=1 << 16,
                         attrs={**SYNTHETIC_ATTRS, "context_length": 8})
    assert not (tmp_path / "s").exists()


def own_rows_by_loop(total, rank, world_size, chunk_tokens):
    n_chunks = -(-total // chunk_tokens)
    return sum(min(chunk_tokens, total - c * chunk_tokens) for c in range(rank, n_chunks, world_size))


def test_own_rows_is_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(5000):
        ws = int(rng.integers(1, 6))
        rank, ct, total = int(rng.integers(ws)), int(rng.integers(1, 10)), int(rng.integers(1, 300))
        assert _own_rows(total, rank, ws, ct) == own_rows_by_loop(total, rank, ws, ct)
    # The largest budget the format allows in the smallest chunks: a loop would take minutes.
    assert _own_rows(fmt.MAX_TOKENS, 1, 3, 1) == fmt.MAX_TOKENS // 3 + (fmt.MAX_TOKENS % 3 > 1)


@pytest.fixture(scope="module")
def loaded(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), causal_lm=False)


@pytest.mark.parametrize("step", ["open the store", "save the tokenizer"])
def test_a_stop_during_set_up_is_honoured_when_the_step_ends(loaded, corpus_file, tmp_path, monkeypatch, step):
    """A SIGTERM arriving during a set-up step (simulated by requesting the stop inside it) ends the run
    right after that step: the next step never starts, the store is at its (empty) commit and unlocked."""
    stop = StopRequest()

    def went_on(*args, **kwargs):
        raise AssertionError("set-up went on after the stop")

    if step == "open the store":
        real_open = StoreWriter.open.__func__

        def open_and_stop(cls, *args, **kwargs):
            writer = real_open(cls, *args, **kwargs)
            stop.request("SIGTERM")
            return writer

        monkeypatch.setattr(StoreWriter, "open", classmethod(open_and_stop))
        monkeypatch.setattr(HiddenStateExtractor, "_save_tokenizer", went_on)
    else:
        monkeypatch.setattr(HiddenStateExtractor, "_save_tokenizer", lambda self: stop.request("SIGTERM"))
        monkeypatch.setattr("ghosttrack.extract.extractor.AsyncStoreWriter", went_on)
    extractor = HiddenStateExtractor(loaded, open_corpus(str(corpus_file)), tmp_path / "s")
    with pytest.raises(Interrupted, match="SIGTERM"):
        extractor.extract(ExtractionPlan([1], 1024, 16, chunk_tokens=64), stop=stop, progress=False)
    store = ActivationStore.open(tmp_path / "s", trust=True)
    assert store.n_tokens == 0 and not store.complete
    assert all(live_holder(p) is None for p in (tmp_path / "s").glob(".lock*"))  # the lock was released


def test_corpus_that_runs_out_is_reported_and_recorded(tiny_gpt2_dir, corpus_file, tmp_path):
    out = tmp_path / "store"
    result = extract(tiny_gpt2_dir, corpus_file, out, "--tokens", "10M", "--chunk-tokens", "256")
    assert result.exit_code == 0, result.output
    store = ActivationStore.open(out)
    n = store.n_tokens
    assert store.complete and store.corpus_ran_out and 0 < n < 10_000_000
    lines = [line for line in result.output.splitlines() if "corpus ran out" in line]
    assert lines == [f"corpus ran out at {n:,} of 10,000,000 tokens: {out} is complete with {n:,} tokens; "
                     "pass a bigger --corpus for more"]
    info = CliRunner().invoke(main, ["info", str(out)])
    assert f"complete: corpus ran out at {n:,} of 10,000,000 tokens" in info.output
