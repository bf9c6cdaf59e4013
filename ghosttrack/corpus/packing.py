"""Tokenize documents and pack them into fixed-length token sequences.

Documents are tokenized in batches (one fast-tokenizer call per batch, no special tokens,
no truncation: long documents are fine), a separator token is appended after each one,
the token stream is concatenated and cut into `seq_len` pieces; a trailing partial
sequence is dropped. Sequences never depend on how documents were batched, so the same
documents always give the same sequences, and a resumed extraction can skip the ones it
already has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import numpy as np

from ghosttrack.errors import GhostTrackError

T = TypeVar("T")


def separator_token_id(tokenizer) -> int | None:
    """The token put after every document: EOS, else BOS, else SEP, else PAD.

    None when the tokenizer has none of them: documents are then simply concatenated,
    so a sequence may run from one document into the next without a marker.
    """
    for attr in ("eos_token_id", "bos_token_id", "sep_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, attr, None)
        if token_id is not None:
            return int(token_id)
    return None


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def tokenize_documents(tokenizer, docs: list[str]) -> list[list[int]]:
    """Token ids of each document: no BOS/EOS added, never truncated, no length warning."""
    # verbose=False silences "Token indices sequence length is longer than ...": a long
    # document is cut into several sequences, it never reaches the model whole.
    encoded = tokenizer(docs, add_special_tokens=False, truncation=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
    return encoded["input_ids"]


@dataclass(frozen=True)
class PackPosition:
    """Where a packed sequence starts: token `offset` of document `doc` (documents counted from 0 as
    the corpus yields them; a document's tokens include the separator after it)."""

    doc: int = 0
    offset: int = 0


def pack_with_positions(texts: Iterable[str], tokenizer, seq_len: int, *, start: PackPosition = PackPosition(),
                        batch_docs: int = 64) -> Iterator[tuple[np.ndarray, PackPosition]]:
    """`pack_sequences` from `start` on, each sequence with the position it starts at.

    The documents before start.doc are skipped without being tokenized and the first start.offset
    tokens of start.doc are dropped: from the position recorded with sequence k, this yields
    exactly sequences k, k+1, ... of pack_sequences (a resume starts there, not from the top).
    """
    if seq_len < 1:
        raise GhostTrackError(f"seq_len must be at least 1, got {seq_len}; pass --seq-len 1 or more")
    if batch_docs < 1:
        raise GhostTrackError(f"batch_docs must be at least 1, got {batch_docs}")
    return _pack(islice(texts, start.doc, None), tokenizer, seq_len, batch_docs, start)


def pack_sequences(texts: Iterable[str], tokenizer, seq_len: int, *, batch_docs: int = 64) -> Iterator[np.ndarray]:
    """Token sequences of exactly `seq_len` (int32, shape (seq_len,)) from `texts`, in order.

    The concatenation of all yielded sequences equals "each document's tokens followed by
    the separator token" with the incomplete tail dropped. `batch_docs` documents are
    tokenized per call; it changes speed only, never the output. Yielded arrays are
    read-only views: copy one to modify it.
    """
    if seq_len < 1:
        raise GhostTrackError(f"seq_len must be at least 1, got {seq_len}; pass --seq-len 1 or more")
    if batch_docs < 1:
        raise GhostTrackError(f"batch_docs must be at least 1, got {batch_docs}")
    # bad arguments fail here, not at first next()
    return (ids for ids, _ in _pack(texts, tokenizer, seq_len, batch_docs, PackPosition()))


def _pack(texts: Iterable[str], tokenizer, seq_len: int, batch_docs: int,
          start: PackPosition) -> Iterator[tuple[np.ndarray, PackPosition]]:
    sep = separator_token_id(tokenizer)
    sep_1 = np.array([] if sep is None else [sep], dtype=np.int32)
    tail = np.empty(0, dtype=np.int32)
    # The stream's pieces: (stream offset, document, token offset in that document) where each starts.
    tail_pieces: list[tuple[int, int, int]] = []
    doc, skip = start.doc, start.offset
    for docs in batched(texts, batch_docs):
        parts, pieces, at = [tail], list(tail_pieces), len(tail)
        for ids in tokenize_documents(tokenizer, docs):
            tokens = np.concatenate([np.asarray(ids, dtype=np.int32), sep_1])[skip:]
            pieces.append((at, doc, skip))
            parts.append(tokens)
            at, doc, skip = at + len(tokens), doc + 1, 0
        stream = np.concatenate(parts)
        stream.flags.writeable = False
        starts = np.array([p[0] for p in pieces], dtype=np.int64)
        n_full = len(stream) // seq_len

        def position(offset: int) -> PackPosition:
            # The last piece starting at or before `offset` (empty documents start where the next does).
            j = int(np.searchsorted(starts, offset, side="right")) - 1
            return PackPosition(pieces[j][1], pieces[j][2] + offset - pieces[j][0])

        for i in range(n_full):
            yield stream[i * seq_len:(i + 1) * seq_len], position(i * seq_len)
        cut = n_full * seq_len
        # Copied, so the batch's stream is freed once its sequences are consumed.
        tail = stream[cut:].copy()
        first = position(cut)
        tail_pieces = [(0, first.doc, first.offset)] if len(tail) else []
        tail_pieces += [(s - cut, d, o) for s, d, o in pieces if s > cut]


def pack_batches(texts: Iterable[str], tokenizer, seq_len: int, batch_size: int, *,
                 max_sequences: int | None = None, skip_sequences: int = 0) -> Iterator[np.ndarray]:
    """`pack_sequences` stacked into (b, seq_len) int32 batches, b = batch_size except maybe the last.

    The first `skip_sequences` sequences are skipped (resume: they are tokenized again,
    which is what makes the rest identical), then at most `max_sequences` are yielded,
    i.e. sequences skip_sequences .. skip_sequences + max_sequences - 1 of the stream.
    """
    if batch_size < 1:
        raise GhostTrackError(f"batch_size must be at least 1, got {batch_size}; pass --batch-size 1 or more")
    if skip_sequences < 0:
        raise GhostTrackError(f"skip_sequences must be >= 0, got {skip_sequences}")
    if max_sequences is not None and max_sequences < 0:
        raise GhostTrackError(f"max_sequences must be >= 0, got {max_sequences}")
    stop = None if max_sequences is None else skip_sequences + max_sequences
    sequences = islice(pack_sequences(texts, tokenizer, seq_len), skip_sequences, stop)
    return (np.stack(group) for group in batched(sequences, batch_size))
