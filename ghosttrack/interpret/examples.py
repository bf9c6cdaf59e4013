"""Context windows of the examples a feature page shows, and the feature's activation on every token.

A window is the rows around an example row inside its own packed sequence (never crossing
into another one). The store holds every row's residual, so a token's activation needs no
model run: it is the SAE encoder on that stored row. After the pass, the rows of all kept
windows (top examples and quantile examples of every feature) are collected, each distinct
row is read and encoded once, in batches and in store order, and only the (row, feature)
values the pages show are kept. This costs at most one more encoder pass over the rows the
windows cover (for small stores, fewer rows than the pass read); keeping the neighbours during
the pass would cost more, since a feature's top examples are only final when the pass ends.
Rows the pass skipped (position 0, norm outliers) get no value (NaN): their huge norms would
give activations the SAE never saw in training.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def window_rows(rows: np.ndarray, seqs: np.ndarray, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (..., W) of each window, mask of those inside the example's sequence); rows may hold -1 (no example)."""
    offsets = np.arange(-before, after + 1)
    idx = rows[..., None] + offsets
    inside = (rows[..., None] >= 0) & (idx >= 0) & (idx < len(seqs))
    idx = np.clip(idx, 0, len(seqs) - 1)
    same = inside & (seqs[idx] == seqs[np.clip(rows, 0, len(seqs) - 1)][..., None])
    return idx, same


def encode_pairs(store, layer: int, encode: Callable[[torch.Tensor], torch.Tensor], rows_P: np.ndarray,
                 feats_P: np.ndarray, *, batch_size: int, device: torch.device | str = "cpu") -> np.ndarray:
    """The activation of feature feats_P[i] on store row rows_P[i], each distinct row encoded once."""
    vals = np.full(len(rows_P), np.nan, dtype=np.float32)
    if len(rows_P) == 0:
        return vals
    order = np.argsort(rows_P, kind="stable")
    uniq, first = np.unique(rows_P[order], return_index=True)
    first = np.append(first, len(order))
    chunk_of = uniq // store.chunk_tokens
    for s in range(0, len(uniq), batch_size):
        batch = uniq[s:s + batch_size]
        parts = []
        for c in np.unique(chunk_of[s:s + batch_size]):  # one read per chunk the batch touches
            lo, _ = store.chunk_bounds(int(c))
            in_c = batch[chunk_of[s:s + batch_size] == c]
            parts.append(np.asarray(store.read_chunk(layer, int(c))[in_c - lo]))
        x_BD = torch.from_numpy(np.concatenate(parts)).to(device).float()
        with torch.inference_mode():
            acts_BH = encode(x_BD).float().cpu().numpy()
        sel = order[first[s]:first[min(s + batch_size, len(uniq))]]
        vals[sel] = acts_BH[np.searchsorted(batch, rows_P[sel]), feats_P[sel]]
    return vals


def window_activations(store, layer: int, encode, example_rows_HE: np.ndarray, seqs: np.ndarray,
                       keep_mask: np.ndarray | None, *, before: int, after: int, batch_size: int,
                       device: torch.device | str = "cpu", block: int = 2048) -> np.ndarray:
    """(H, E, W) float32: feature h's activation on every token of the window of its example e.

    NaN where the window leaves the sequence, where the example slot is empty (-1), and on rows
    the pass skipped (keep_mask False).
    """
    n_feats, n_ex = example_rows_HE.shape
    width = before + after + 1
    cells, rows = [], []
    for start in range(0, n_feats, block):  # blocks keep the (block, E, W) index arrays small
        ex = example_rows_HE[start:start + block]
        idx, same = window_rows(ex, seqs, before, after)
        if keep_mask is not None:
            same &= keep_mask[idx]
        flat = np.flatnonzero(same)
        cells.append(flat + start * n_ex * width)
        rows.append(idx.reshape(-1)[flat])
    cell_P = np.concatenate(cells) if cells else np.zeros(0, np.int64)
    rows_P = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    feats_P = cell_P // (n_ex * width)
    out = np.full(n_feats * n_ex * width, np.nan, dtype=np.float32)
    out[cell_P] = encode_pairs(store, layer, encode, rows_P, feats_P, batch_size=batch_size, device=device)
    return out.reshape(n_feats, n_ex, width)
