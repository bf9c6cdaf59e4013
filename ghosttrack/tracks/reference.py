"""The tracking rules of tracker.py in plain Python, one token and one latent at a time.

Slow and obvious on purpose: the tests check the vectorised tracker against it on random inputs.
"""
from __future__ import annotations

import numpy as np

from ghosttrack.tracks.tracker import TrackResult


def track_reference(layers: list[int], active: list[list[dict[int, float]]],
                    edges: dict[tuple[int, int], list[tuple[int, int, float]]], *, min_score: float) -> TrackResult:
    """active[k][t]: {latent: activation} of token t at layers[k]; edges[(i, j)]: (src, dst, score) triples."""
    n_tokens = len(active[0])
    out_edges = []
    for i, j in zip(layers[:-1], layers[1:]):
        best: dict[tuple[int, int], float] = {}
        for src, dst, score in edges[(i, j)]:
            if score >= min_score:
                best[(src, dst)] = max(score, best.get((src, dst), -np.inf))
        succ: dict[int, list[tuple[int, float]]] = {}
        for (src, dst), score in best.items():
            succ.setdefault(src, []).append((dst, score))
        out_edges.append(succ)

    track_of: list[dict[tuple[int, int], int]] = []  # per layer: (token, latent) -> track id
    tracks: list[dict] = []

    def start(token: int, k: int, parent: int) -> int:
        tracks.append({"token": token, "birth": k, "end": len(layers) - 1, "split_from": parent, "merged_into": -1})
        return len(tracks) - 1

    first = {}
    for t in range(n_tokens):
        for f in sorted(active[0][t]):
            first[(t, f)] = start(t, 0, -1)
    track_of.append(first)
    for k in range(1, len(layers)):
        current: dict[tuple[int, int], int] = {}
        ended: list[tuple[int, int]] = []  # (track, best successor latent or -1, token)
        for t in range(n_tokens):
            prev, now = active[k - 1][t], active[k][t]
            links = [(p, q, s) for p in sorted(prev) for q, s in out_edges[k - 1].get(p, []) if q in now]
            best_succ, best_pred = {}, {}
            for p, q, s in links:  # best = highest score, then lowest latent id
                if p not in best_succ or (s, -q) > (best_succ[p][1], -best_succ[p][0]):
                    best_succ[p] = (q, s)
                if q not in best_pred or (s, -p) > (best_pred[q][1], -best_pred[q][0]):
                    best_pred[q] = (p, s)
            continued = {}
            for p, (q, _) in best_succ.items():
                if best_pred[q][0] == p:
                    continued[q] = track_of[k - 1][(t, p)]
            for q in sorted(now):
                if q in continued:
                    current[(t, q)] = continued[q]
                else:
                    parent = track_of[k - 1][(t, best_pred[q][0])] if q in best_pred else -1
                    current[(t, q)] = start(t, k, parent)
            for p in sorted(prev):
                if p in best_succ and best_pred[best_succ[p][0]][0] == p:
                    continue
                ended.append((track_of[k - 1][(t, p)], best_succ[p][0] if p in best_succ else -1, t))
        for track, q, t in ended:
            tracks[track]["end"] = k - 1
            if q >= 0:
                tracks[track]["merged_into"] = current[(t, q)]
        track_of.append(current)

    def entries(k: int, what: str) -> np.ndarray:
        rows = [(t, f) for t in range(n_tokens) for f in sorted(active[k][t])]
        if what == "token":
            return np.array([t for t, _ in rows], np.int64)
        if what == "feature":
            return np.array([f for _, f in rows], np.int64)
        if what == "activation":
            return np.array([active[k][t][f] for t, f in rows], np.float32)
        return np.array([track_of[k][(t, f)] for t, f in rows], np.int64)

    col = lambda key: np.array([tr[key] for tr in tracks], np.int64)  # noqa: E731
    return TrackResult(
        layers=list(layers), n_tokens=n_tokens,
        entry_token=[entries(k, "token") for k in range(len(layers))],
        entry_feature=[entries(k, "feature") for k in range(len(layers))],
        entry_activation=[entries(k, "activation") for k in range(len(layers))],
        entry_track=[entries(k, "track") for k in range(len(layers))],
        track_token=col("token"), track_birth=col("birth"), track_end=col("end"),
        track_split_from=col("split_from"), track_merged_into=col("merged_into"))
