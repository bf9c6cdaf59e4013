"""Tracks as features by identity: which latents the tracker followed on an answer, not only how many.

With TopK every token has exactly k active latents per layer, so counts of tracks are largely
constant by construction; what can differ between a true and a false answer is *which* features
are carried from layer to layer. Per example, over its answer tokens:

- memberships: (layer, latent) for every latent that continues a track to, or from, the adjacent
  tracked layer (a mutual best link of the tracker: the latent is *followed*, not merely active);
- edges: (layer step k, src latent, dst latent) for every such continuation.

Each column holds the share of the answer's tokens on which it occurs (0..1), in a sparse matrix.
The columns are fixed by the tracker (every latent, every edge at or above its threshold): they
use no data and no label; columns constant on the training rows are dropped inside each fold. For the comparison "tracking versus no tracking", `latent_bag` gives the same pooled share
for every *active* (layer, latent), whether the tracker followed it or not.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ghosttrack.tracks.tracker import TrackResult


def continuations(result: TrackResult, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token, src latent at layer index k-1, dst latent at layer index k) of every continued track at step k."""
    prev_feature = np.full(result.n_tracks, -1, np.int64)
    prev_feature[result.entry_track[k - 1]] = result.entry_feature[k - 1]
    src = prev_feature[result.entry_track[k]]
    kept = src >= 0
    return result.entry_token[k][kept], src[kept], result.entry_feature[k][kept]


def _pooled(example: np.ndarray, keys: np.ndarray, tokens: np.ndarray, n_examples: int):
    """(rows, keys, values): per (example, key) the share of the example's tokens carrying the key
    (a key counted once per token)."""
    if not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    # One entry per (example, token, key); a token carries a membership once even if linked twice.
    triples = np.unique(np.stack([example, tokens, keys]), axis=1)
    pairs, counts = np.unique(triples[[0, 2]], axis=1, return_counts=True)
    return pairs[0], pairs[1], counts.astype(np.float64)


def edge_keys(tracker) -> list[np.ndarray]:
    """Per layer step, the sorted keys src * d_sae(dst layer) + dst of the tracker's edges (those at
    or above its min_score): an edge's position in this list is its column, the same for any data."""
    out = []
    for k, (ptr, dst, _) in enumerate(tracker._csr):
        src = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr.cpu().numpy()))
        out.append(src * tracker.d_sae[tracker.layers[k + 1]] + dst.cpu().numpy())
    return out


def track_bag(results: Sequence[TrackResult], n_tokens: np.ndarray, tracker) -> tuple[sp.csr_matrix, list[str]]:
    """(N, F) shares of answer tokens per followed membership and edge, and the column names
    ("m L<layer>:<latent>" and "e L<src layer>-><dst layer>:<src>-><dst>"). The columns are fixed by
    the tracker (every latent of every layer, then every edge it may follow), so two datasets tracked
    with the same SAEs and matches have the same columns (transfer needs that)."""
    layers = tracker.layers
    sizes = [tracker.d_sae[layer] for layer in layers]
    keys = edge_keys(tracker)
    m_off = np.concatenate([[0], np.cumsum(sizes)])
    e_off = m_off[-1] + np.concatenate([[0], np.cumsum([len(k) for k in keys])])
    ex, col, tok = [], [], []
    for i, result in enumerate(results):
        for k in range(1, len(layers)):
            t, src, dst = continuations(result, k)
            edge = e_off[k - 1] + np.searchsorted(keys[k - 1], src * sizes[k] + dst)
            for c in (m_off[k - 1] + src, m_off[k] + dst, edge):
                ex.append(np.full(len(t), i)), col.append(c), tok.append(t)
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    rows, cols, counts = _pooled(cat(ex), cat(col), cat(tok), len(n_tokens))
    bag = sp.csr_matrix((counts / n_tokens[rows], (rows, cols)), shape=(len(n_tokens), int(e_off[-1])))
    names = [f"m L{layer}:{h}" for layer, size in zip(layers, sizes) for h in range(size)]
    for k, key in enumerate(keys):
        width = sizes[k + 1]
        names += [f"e L{layers[k]}->{layers[k + 1]}:{v // width}->{v % width}" for v in key.tolist()]
    return bag, names


def latent_bag(sae_active: dict[int, sp.csr_matrix]) -> tuple[sp.csr_matrix, list[str]]:
    """(N, sum of d_sae) share of answer tokens on which each (layer, latent) is active, every SAE
    layer side by side: the same pooling as `track_bag`, with no tracking."""
    layers = sorted(sae_active)
    names = [f"a L{layer}:{h}" for layer in layers for h in range(sae_active[layer].shape[1])]
    return sp.hstack([sae_active[layer] for layer in layers], format="csr"), names
