"""Synthetic stores for tests and benchmarks: rows that are a pure function of their row index.

Because every value depends only on (layer, row, column), any process can regenerate any slice,
which is what crash-and-resume tests need (the resumed writer must append the same rows).
"""

from __future__ import annotations

import numpy as np

from .location import Location, as_location
from .writer import StoreWriter

SYNTHETIC_ATTRS = {
    "model": "synthetic", "revision": None, "hook": "resid_post", "context_length": 16,
    "tokenizer": "synthetic", "corpus": {"kind": "synthetic"},
}
"""Identity attributes of a synthetic store (context_length is overridden by the caller's)."""


def synthetic_acts(layer: int, start: int, stop: int, d_model: int) -> np.ndarray:
    """(stop - start, d_model) float32 activations of rows [start, stop): smooth, varied, finite."""
    rows = np.arange(start, stop, dtype=np.float64)[:, None]
    cols = np.arange(d_model, dtype=np.float64)[None, :]
    x = np.sin(rows * 0.6180339 + cols * 1.324718 + layer) * (1.0 + (rows * 7 + cols * 3) % 5)
    return x.astype(np.float32)


def synthetic_rows(start: int, stop: int, context_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, positions, sequence_ids) of rows [start, stop), packed into sequences of context_length."""
    idx = np.arange(start, stop, dtype=np.int64)
    return ((idx * 7919) % 50257).astype(np.int32), (idx % context_length).astype(np.int32), idx // context_length


def append_synthetic(writer: StoreWriter, start: int, stop: int, *, context_length: int,
                     piece: int = 1000) -> None:
    """Append synthetic rows [start, stop) in pieces of ``piece`` rows (as an extractor's batches would)."""
    for a in range(start, stop, piece):
        b = min(stop, a + piece)
        acts = {layer: synthetic_acts(layer, a, b, writer.d_model) for layer in writer.layers}
        writer.append(acts, *synthetic_rows(a, b, context_length))


def write_synthetic_store(path, *, layers: list[int], d_model: int, n_tokens: int, chunk_tokens: int,
                          context_length: int = 16, target_tokens: int | None = None,
                          complete: bool = True, piece: int = 1000) -> Location:
    """Write a store of synthetic rows [0, n_tokens) (complete, or interrupted after n_tokens)."""
    attrs = {**SYNTHETIC_ATTRS, "context_length": context_length}
    with StoreWriter.open(path, layers=layers, d_model=d_model, target_tokens=target_tokens or n_tokens,
                          chunk_tokens=chunk_tokens, attrs=attrs) as w:
        append_synthetic(w, 0, n_tokens, context_length=context_length, piece=piece)
        w.close(complete=complete)
    return as_location(path)
