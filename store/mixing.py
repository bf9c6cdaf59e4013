"""Shuffle rows across chunks with a bounded buffer: a pure generator, no I/O.

Rows arrive chunk by chunk (each chunk is one stretch of consecutive text); training wants
batches that mix many chunks. The buffer is filled to at least ``buffer_rows``, shuffled, and its
first half is emitted as batches; the rest stays to be mixed with the next chunks.

What happens depends only on the row counts and on ``rng``, never on the values, so running the
same generator over arrays of row indices reproduces exactly the order it gives the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def mix_rows(chunks: Iterable[np.ndarray], buffer_rows: int, batch_size: int,
             rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield every row of ``chunks`` exactly once, in (batch_size, ...) batches of mixed order.

    All batches are full except possibly the last one. Batches are views of arrays the generator
    never writes to again, so they stay valid after the next ``next()``.
    """
    if batch_size < 1 or buffer_rows < 2 * batch_size:
        raise ValueError(f"need batch_size >= 1 and buffer_rows >= 2 * batch_size, "
                         f"got batch_size={batch_size}, buffer_rows={buffer_rows}")
    pending: list[np.ndarray] = []
    n_pending = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        pending.append(chunk)
        n_pending += len(chunk)
        if n_pending < buffer_rows:
            continue
        buffer = np.concatenate(pending)
        buffer = buffer[rng.permutation(len(buffer))]
        n_out = (len(buffer) // 2) // batch_size * batch_size  # >= one batch: buffer >= 2 batches
        for start in range(0, n_out, batch_size):
            yield buffer[start:start + batch_size]
        pending, n_pending = [buffer[n_out:]], len(buffer) - n_out
    if n_pending:  # drain: shuffle what is left (it may never have been shuffled) and emit it all
        buffer = np.concatenate(pending)
        buffer = buffer[rng.permutation(len(buffer))]
        for start in range(0, len(buffer), batch_size):
            yield buffer[start:start + batch_size]
