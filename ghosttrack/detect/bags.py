"""Tracks as features by identity: which latents the tracker followed on an answer, not only how many.

With TopK every token has exactly k active latents per layer, so counts of tracks are largely
constant by construction; what can differ between a true and a false answer is *which* features
are carried from layer to layer. Per example, over its answer tokens:

- memberships: (layer, latent) for every latent that continues a track to, or from, the adjacent
  tracked layer (a mutual best link of the tracker: the latent is *followed*, not merely active);
- edges: (layer step k, src latent, dst latent) for every such continuation.

Each column holds the share of the answer's tokens on which it occurs (0..1), in a sparse matrix.
The vocabulary (which columns exist) is every membership and edge seen on any example: it uses no
label. For the comparison "tracking versus no tracking", `latent_bag` gives the same pooled share
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


def track_bag(results: Sequence[TrackResult], n_tokens: np.ndarray, d_sae: dict[int, int]) -> tuple[sp.csr_matrix, list[str]]:
    """(N, F) shares of answer tokens per followed membership and edge, and the column names
    ("m L<layer>:<latent>" and "e L<src layer>-><dst layer>:<src>-><dst>")."""
    layers = results[0].layers if results else sorted(d_sae)
    offsets = np.concatenate([[0], np.cumsum([d_sae[layer] for layer in layers])])
    width = int(max(d_sae.values())) if d_sae else 1
    m_ex, m_key, m_tok, e_ex, e_key, e_tok = [], [], [], [], [], []
    for i, result in enumerate(results):
        for k in range(1, len(layers)):
            tok, src, dst = continuations(result, k)
            for key in (offsets[k - 1] + src, offsets[k] + dst):
                m_ex.append(np.full(len(tok), i)), m_key.append(key), m_tok.append(tok)
            e_ex.append(np.full(len(tok), i)), e_tok.append(tok)
            e_key.append((k * width + src) * width + dst)
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    blocks, names = [], []
    for kind, ex, key, tok in (("m", m_ex, m_key, m_tok), ("e", e_ex, e_key, e_tok)):
        rows, keys, counts = _pooled(cat(ex), cat(key), cat(tok), len(n_tokens))
        vocab, cols = np.unique(keys, return_inverse=True)
        blocks.append(sp.csr_matrix((counts / n_tokens[rows], (rows, cols)), shape=(len(n_tokens), len(vocab))))
        names += [_name(kind, int(v), layers, offsets, width) for v in vocab]
    return sp.hstack(blocks, format="csr"), names


def _name(kind: str, key: int, layers: list[int], offsets: np.ndarray, width: int) -> str:
    if kind == "m":
        k = int(np.searchsorted(offsets, key, side="right") - 1)
        return f"m L{layers[k]}:{key - offsets[k]}"
    step, rest = divmod(key, width * width)
    return f"e L{layers[step - 1]}->{layers[step]}:{rest // width}->{rest % width}"


def latent_bag(sae_active: dict[int, sp.csr_matrix]) -> tuple[sp.csr_matrix, list[str]]:
    """(N, sum of d_sae) share of answer tokens on which each (layer, latent) is active, every SAE
    layer side by side: the same pooling as `track_bag`, with no tracking."""
    layers = sorted(sae_active)
    names = [f"a L{layer}:{h}" for layer in layers for h in range(sae_active[layer].shape[1])]
    return sp.hstack([sae_active[layer] for layer in layers], format="csr"), names
