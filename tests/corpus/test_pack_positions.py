"""Packing from a recorded position gives exactly the sequences packing from the top gives from there:
for every sequence's position, on random documents (empty, short, longer than a sequence), with and
without a separator token, for odd sequence lengths and document batch sizes."""
import numpy as np
import pytest

from ghosttrack.corpus.packing import PackPosition, pack_sequences, pack_with_positions


class _CharTokenizer:
    """One token per character (ord % 97), optionally an EOS separator."""

    def __init__(self, eos: int | None):
        self.eos_token_id = eos
        self.bos_token_id = self.sep_token_id = self.pad_token_id = None

    def __call__(self, docs, **kwargs):
        return {"input_ids": [[ord(c) % 97 for c in doc] for doc in docs]}


def _docs(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 1, 3, 17, 40, 95], size=60)
    return ["".join(chr(97 + int(x)) for x in rng.integers(0, 26, n)) for n in lengths]


@pytest.mark.parametrize("eos", [99, None])
@pytest.mark.parametrize("seq_len, batch_docs", [(7, 5), (16, 64), (33, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_packing_from_every_recorded_position_continues_identically(eos, seq_len, batch_docs, seed):
    docs, tok = _docs(seed), _CharTokenizer(eos)
    plain = [s.copy() for s in pack_sequences(docs, tok, seq_len, batch_docs=batch_docs)]
    with_positions = list(pack_with_positions(docs, tok, seq_len, batch_docs=batch_docs))
    assert len(plain) == len(with_positions) > 10
    assert all(np.array_equal(a, b) for a, (b, _) in zip(plain, with_positions))
    for k, (_, position) in enumerate(with_positions):
        resumed = [s for s, _ in pack_with_positions(docs, tok, seq_len, start=position, batch_docs=batch_docs)]
        assert len(resumed) == len(plain) - k, (k, position)
        assert all(np.array_equal(a, b) for a, b in zip(plain[k:], resumed)), (k, position)
    assert with_positions[0][1] == PackPosition(0, 0)


def test_documents_before_the_position_are_not_tokenized():
    calls = []

    class Counting(_CharTokenizer):
        def __call__(self, docs, **kwargs):
            calls.extend(docs)
            return super().__call__(docs, **kwargs)

    docs = _docs(3)
    tok = Counting(99)
    positions = [p for _, p in pack_with_positions(docs, tok, 16, batch_docs=4)]
    calls.clear()
    middle = positions[len(positions) // 2]
    list(pack_with_positions(docs, tok, 16, start=middle, batch_docs=4))
    assert len(calls) == len(docs) - middle.doc
