"""Track statistics per token and per example: the signals the detection stage tests.

Per token t and layer index k (columns of `token_statistics`):

    alive[t, k]    tracks alive at layer k (the competing hypotheses there)
    births[t, k]   tracks born at k from nothing (every latent of the first layer is a birth)
    splits[t, k]   tracks split off at k from a track of layer k-1
    deaths[t, k]   tracks that ended at k because none of their successors fired
    merges[t, k]   tracks that ended at k by merging into another track

and per token: n_tracks, length_mean / length_max (layers a track lives), full_tracks (alive at
every layer), competing_final (alive at the last layer), and the dominant track (largest strength
= sum of its activations): dominant_share = its strength / all tracks' strength, dominant_margin =
(its strength - the runner-up's) / all tracks' strength, dominant_length (layers it lives).
Tokens without tracks get zeros.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ghosttrack.tracks.tracker import TrackResult

PER_LAYER = ("alive", "births", "splits", "deaths", "merges")
PER_TOKEN = ("n_tracks", "length_mean", "length_max", "full_tracks", "competing_final", "dominant_share",
             "dominant_margin", "dominant_length")


def token_statistics(result: TrackResult) -> dict[str, np.ndarray]:
    """PER_LAYER arrays of shape (n_tokens, n_layers) and PER_TOKEN arrays of shape (n_tokens,), float64."""
    T, L = result.n_tokens, len(result.layers)
    tok, birth, end = result.track_token, result.track_birth, result.track_end
    split, merged = result.track_split_from, result.track_merged_into
    died = result.track_died()

    def per_layer(mask: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.bincount(tok[mask] * L + k[mask], minlength=T * L).reshape(T, L).astype(np.float64)

    alive = np.stack([np.bincount(result.entry_token[k], minlength=T) for k in range(L)], 1).astype(np.float64) \
        if T else np.zeros((0, L))
    out = {
        "alive": alive,
        "births": per_layer(split < 0, birth),
        "splits": per_layer(split >= 0, birth),
        "deaths": per_layer(died, end + 1),
        "merges": per_layer(merged >= 0, end + 1),
    }
    length = (end - birth + 1).astype(np.float64)
    n_tracks = np.bincount(tok, minlength=T).astype(np.float64)
    out["n_tracks"] = n_tracks
    out["length_mean"] = np.divide(np.bincount(tok, weights=length, minlength=T), n_tracks,
                                   out=np.zeros(T), where=n_tracks > 0)
    out["length_max"] = np.zeros(T)
    np.maximum.at(out["length_max"], tok, length)
    out["full_tracks"] = np.bincount(tok, weights=(length == L).astype(np.float64), minlength=T)
    out["competing_final"] = alive[:, -1].copy() if T else np.zeros(0)
    strength = result.track_strength()
    total = np.bincount(tok, weights=strength, minlength=T)
    # Strongest and runner-up per token: sort by (token, strength descending).
    order = np.lexsort((-strength, tok))
    tok_s = tok[order]
    first = np.ones(len(order), bool)
    first[1:] = tok_s[1:] != tok_s[:-1]
    second = np.zeros(len(order), bool)
    second[1:] = first[:-1] & ~first[1:]
    top1, top2, top_len = np.zeros(T), np.zeros(T), np.zeros(T)
    top1[tok_s[first]] = strength[order[first]]
    top_len[tok_s[first]] = length[order[first]]
    top2[tok_s[second]] = strength[order[second]]
    out["dominant_share"] = np.divide(top1, total, out=np.zeros(T), where=total > 0)
    out["dominant_margin"] = np.divide(top1 - top2, total, out=np.zeros(T), where=total > 0)
    out["dominant_length"] = top_len
    return out


def feature_names(layers: Sequence[int]) -> list[str]:
    """Names of the columns `track_statistics` returns for these layers, in order."""
    names = [f"{stat}_layer{layer}_mean" for stat in PER_LAYER for layer in layers]
    names += [f"{stat}_{agg}" for stat in PER_TOKEN for agg in ("mean", "max")]
    return names + ["n_tokens"]


def track_statistics(results: Sequence[TrackResult],
                     spans: Sequence[tuple[int, int]] | None = None) -> tuple[np.ndarray, list[str]]:
    """One fixed-width float32 feature vector per example, and the column names.

    results[e] holds the tracks of example e's sequence; spans[e] = (start, stop) selects the tokens
    whose statistics are pooled (e.g. the answer's tokens; default: all). Columns: the mean over the
    span of every PER_LAYER count at every layer, the mean and max of every PER_TOKEN statistic, and
    the span length. Every result must cover the same layers.
    """
    if not results:
        raise ValueError("track_statistics needs at least one result")
    layers = results[0].layers
    names = feature_names(layers)
    X = np.zeros((len(results), len(names)), np.float32)
    for e, result in enumerate(results):
        if result.layers != layers:
            raise ValueError(f"example {e} was tracked over layers {result.layers}, example 0 over {layers}")
        start, stop = spans[e] if spans is not None else (0, result.n_tokens)
        if not 0 <= start < stop <= result.n_tokens:
            raise ValueError(f"span {start}:{stop} of example {e} is empty or outside its {result.n_tokens} tokens")
        stats = token_statistics(result)
        row = [stats[stat][start:stop, k].mean() for stat in PER_LAYER for k in range(len(layers))]
        for stat in PER_TOKEN:
            row += [stats[stat][start:stop].mean(), stats[stat][start:stop].max()]
        X[e] = row + [stop - start]
    return X, names
