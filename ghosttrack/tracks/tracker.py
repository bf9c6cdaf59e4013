"""Hypothesis tracks: every token's active SAE latents chained from layer to layer through the edges.

The rules, per token, for each step from layer k-1 to layer k (layers in ascending order):

- A *link* joins an active latent p of layer k-1 to an active latent q of layer k when the edge
  list holds (p -> q) with score >= min_score.
- p's best successor is its link of highest score, q's best predecessor its link of highest score
  (ties: the lower latent id). A link that is both is a *continuation*: q carries p's track.
- Every other active q starts a track: a *split* of the track of its best predecessor when it has
  links, a *birth* otherwise. Every latent of the first layer is a birth.
- A track whose latent p is not continued ends at layer k: it *merged into* the track its best
  successor carries when p has links, it *died* otherwise (none of its successors fired).

Mutual best links are an order-free rule, so all tokens and latents of a layer step are handled
at once with sorts, searchsorted and scatters (no Python loop per token or latent); the only
loop is over the layer steps. `reference.py` implements the same rules in plain Python.
Track ids: tracks of earlier layers first; inside a layer, by (token, latent).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ghosttrack.tracks.codes import SparseCodes, one_cpu_thread


@dataclass
class Track:
    """One semantic hypothesis of one token: a latent chain through consecutive layers."""

    id: int
    token: int
    """Position of the token in its sequence."""
    birth_layer: int
    chain: list[tuple[int, int, float]]
    """(layer, latent, activation) for every layer the track is alive in, ascending."""
    death_layer: int | None
    """The first layer the track is no longer alive in (None: alive at the last layer)."""
    split_from: int | None = None
    """The track this one split off from (None: born from nothing)."""
    merged_into: int | None = None
    """The track this one merged into at death_layer (None: it died out, or is alive)."""

    @property
    def strength(self) -> float:
        """Sum of the chain's activations: the evidence the track gathered."""
        return float(sum(a for _, _, a in self.chain))

    def to_dict(self) -> dict:
        return {"id": self.id, "token": self.token, "birth_layer": self.birth_layer,
                "death_layer": self.death_layer, "split_from": self.split_from, "merged_into": self.merged_into,
                "strength": round(self.strength, 6),
                "chain": [[layer, feat, round(act, 6)] for layer, feat, act in self.chain]}


@dataclass
class TrackResult:
    """The tracks of one sequence as flat arrays (index k below is a position in `layers`)."""

    layers: list[int]
    n_tokens: int
    entry_token: list[np.ndarray] = field(repr=False)
    """Per layer: token of every active latent (entries sorted by token, then latent)."""
    entry_feature: list[np.ndarray] = field(repr=False)
    entry_activation: list[np.ndarray] = field(repr=False)
    entry_track: list[np.ndarray] = field(repr=False)
    """Per layer: the track each active latent carries."""
    track_token: np.ndarray = field(repr=False)
    track_birth: np.ndarray = field(repr=False)
    """Layer index where each track started."""
    track_end: np.ndarray = field(repr=False)
    """Last layer index where each track is alive."""
    track_split_from: np.ndarray = field(repr=False)
    """Parent track of a split, -1 for a birth."""
    track_merged_into: np.ndarray = field(repr=False)
    """Track merged into, -1 when the track died out or is alive at the end."""

    @property
    def n_tracks(self) -> int:
        return len(self.track_token)

    def track_died(self) -> np.ndarray:
        """(n_tracks,) True where a track ended with none of its successors firing."""
        return (self.track_end < len(self.layers) - 1) & (self.track_merged_into < 0)

    def track_strength(self) -> np.ndarray:
        """(n_tracks,) sum of each track's activations."""
        out = np.zeros(self.n_tracks, np.float64)
        for tr, act in zip(self.entry_track, self.entry_activation):
            np.add.at(out, tr, act)
        return out

    def tracks(self, ids: np.ndarray | None = None) -> list[Track]:
        """Track objects (all, or those in `ids`), with their chains."""
        ids = np.arange(self.n_tracks) if ids is None else np.asarray(ids)
        wanted = set(ids.tolist())
        chains: dict[int, list] = {int(t): [] for t in ids}
        for k, layer in enumerate(self.layers):
            for tr, feat, act in zip(self.entry_track[k].tolist(), self.entry_feature[k].tolist(),
                                     self.entry_activation[k].tolist()):
                if tr in wanted:
                    chains[tr].append((layer, feat, act))
        last = len(self.layers) - 1
        out = []
        for t in ids.tolist():
            end, parent, into = int(self.track_end[t]), int(self.track_split_from[t]), int(self.track_merged_into[t])
            out.append(Track(id=t, token=int(self.track_token[t]), birth_layer=self.layers[int(self.track_birth[t])],
                             chain=chains[t], death_layer=None if end == last else self.layers[end + 1],
                             split_from=None if parent < 0 else parent, merged_into=None if into < 0 else into))
        return out


def _first_per_group(group: Tensor, score: Tensor, tiebreak: Tensor, n_groups: int) -> Tensor:
    """For every group id in [0, n_groups): the tiebreak value of its member of highest score
    (ties: the lowest tiebreak); -1 for empty groups."""
    order = torch.argsort(tiebreak, stable=True)
    order = order[torch.argsort(score[order], descending=True, stable=True)]
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    first = torch.ones_like(g, dtype=torch.bool)
    first[1:] = g[1:] != g[:-1]
    out = torch.full((n_groups,), -1, dtype=torch.long, device=group.device)
    out[g[first]] = tiebreak[order[first]]
    return out


class HypothesisTracker:
    """Follows the active latents of every token from layer to layer through matched edges."""

    def __init__(self, layers: list[int], edges: dict[tuple[int, int], dict[str, np.ndarray]],
                 d_sae: dict[int, int], *, min_score: float = 0.3, device: torch.device | str = "cpu"):
        """edges[(layers[k-1], layers[k])]: columns src, dst, score (other columns are ignored).

        Only edges with score >= min_score link latents; each step's edges are kept as CSR by source.
        """
        if len(layers) < 2 or list(layers) != sorted(set(layers)):
            raise ValueError(f"layers must be >= 2 distinct ascending layer ids, got {layers}")
        self.layers, self.min_score, self.device = list(layers), float(min_score), torch.device(device)
        self.d_sae = {layer: int(d_sae[layer]) for layer in layers}
        self._csr = []
        for i, j in zip(self.layers[:-1], self.layers[1:]):
            e = edges[(i, j)]
            src, dst, score = (torch.from_numpy(np.array(e[c])) for c in ("src", "dst", "score"))
            src, dst, score = src.long(), dst.long(), score.float()
            if len(src) and (src.max() >= self.d_sae[i] or dst.max() >= self.d_sae[j] or min(src.min(), dst.min()) < 0):
                raise ValueError(f"edges {i}->{j} name latents outside the SAEs ({self.d_sae[i]} and {self.d_sae[j]} "
                                 f"latents); match these SAEs again")
            keep = score >= self.min_score
            src, dst, score = src[keep], dst[keep], score[keep]
            # Sort by source (then dst); a duplicated (src, dst) keeps its best score.
            key = src * self.d_sae[j] + dst
            order = torch.argsort(score, descending=True, stable=True)
            order = order[torch.argsort(key[order], stable=True)]
            key, score = key[order], score[order]
            first = torch.ones_like(key, dtype=torch.bool)
            first[1:] = key[1:] != key[:-1]
            key, score = key[first], score[first]
            src = key // self.d_sae[j]
            ptr = torch.zeros(self.d_sae[i] + 1, dtype=torch.long)
            ptr[1:] = torch.bincount(src, minlength=self.d_sae[i]).cumsum(0)
            self._csr.append(tuple(t.to(self.device) for t in (ptr, key % self.d_sae[j], score)))

    def edge_score(self, k: int, src: int, dst: int) -> float | None:
        """The score of the kept edge from latent `src` of layers[k-1] to `dst` of layers[k] (None: none)."""
        ptr, dsts, scores = self._csr[k - 1]
        lo, hi = int(ptr[src]), int(ptr[src + 1])
        i = lo + int(torch.searchsorted(dsts[lo:hi], torch.tensor([dst], device=dsts.device))[0])
        return float(scores[i]) if i < hi and int(dsts[i]) == dst else None

    @torch.no_grad()
    def track(self, codes: dict[int, SparseCodes]) -> TrackResult:
        """The tracks of one sequence; codes[layer]: its tokens' active latents at that layer (rows = tokens)."""
        with one_cpu_thread(self.device):
            return self._track(codes)

    def _track(self, codes: dict[int, SparseCodes]) -> TrackResult:
        n_tokens = codes[self.layers[0]].n_rows
        for layer in self.layers:
            if codes[layer].n_rows != n_tokens or codes[layer].n_features != self.d_sae[layer]:
                raise ValueError(f"layer {layer}: codes of {codes[layer].n_rows} tokens x {codes[layer].n_features} "
                                 f"latents, expected {n_tokens} x {self.d_sae[layer]}")
        dev = self.device
        ent_tok, ent_feat, ent_act, ent_track = [], [], [], []
        for layer in self.layers:
            c = codes[layer]
            tok, feat, act = c.entry_rows().to(dev), c.feat.to(dev), c.val.to(dev).float()
            order = torch.argsort(tok * self.d_sae[layer] + feat)
            ent_tok.append(tok[order]), ent_feat.append(feat[order]), ent_act.append(act[order])
        # Tracks of the first layer: one birth per active latent.
        n0 = ent_tok[0].numel()
        ent_track.append(torch.arange(n0, device=dev))
        t_token, t_birth, t_split = [ent_tok[0]], [torch.zeros(n0, dtype=torch.long, device=dev)], \
            [torch.full((n0,), -1, dtype=torch.long, device=dev)]
        ends, merges = [], []  # (track ids, end layer index) and (track ids, merged-into ids)
        next_id = n0
        for k in range(1, len(self.layers)):
            ptr, dst, score = self._csr[k - 1]
            H = self.d_sae[self.layers[k]]
            p_tok, p_feat, p_track = ent_tok[k - 1], ent_feat[k - 1], ent_track[k - 1]
            q_key = ent_tok[k] * H + ent_feat[k]
            n_p, n_q = p_tok.numel(), q_key.numel()
            # Every edge out of every active p, kept where its target is active for the same token.
            cnt = ptr[p_feat + 1] - ptr[p_feat]
            rep = torch.repeat_interleave(torch.arange(n_p, device=dev), cnt)
            first = cnt.cumsum(0) - cnt
            eidx = ptr[p_feat][rep] + torch.arange(rep.numel(), device=dev) - first[rep]
            key = p_tok[rep] * H + dst[eidx]
            pos = torch.searchsorted(q_key, key)
            hit = pos < n_q
            hit[hit.clone()] = q_key[pos[hit]] == key[hit]
            lp, lq, ls = rep[hit], pos[hit], score[eidx[hit]]
            best_succ = _first_per_group(lp, ls, lq, n_p)  # lq order = latent order inside a token
            best_pred = _first_per_group(lq, ls, lp, n_q)
            has_succ = best_succ >= 0
            mutual = has_succ.clone()
            mutual[has_succ] = best_pred[best_succ[has_succ]] == torch.nonzero(has_succ).squeeze(1)
            q_track = torch.full((n_q,), -1, dtype=torch.long, device=dev)
            q_track[best_succ[mutual]] = p_track[mutual]
            new = q_track < 0
            n_new = int(new.sum())
            q_track[new] = torch.arange(next_id, next_id + n_new, device=dev)
            next_id += n_new
            parent = best_pred[new]
            t_token.append(ent_tok[k][new])
            t_birth.append(torch.full((n_new,), k, dtype=torch.long, device=dev))
            split_from = torch.full_like(parent, -1)
            split_from[parent >= 0] = p_track[parent[parent >= 0]]
            t_split.append(split_from)
            ended = ~mutual
            ends.append((p_track[ended], k - 1))
            into = best_succ[ended]
            merges.append((p_track[ended][into >= 0], q_track[into[into >= 0]]))
            ent_track.append(q_track)
        n_tracks = next_id
        t_end = torch.full((n_tracks,), len(self.layers) - 1, dtype=torch.long, device=dev)
        t_merged = torch.full((n_tracks,), -1, dtype=torch.long, device=dev)
        for ids, k in ends:
            t_end[ids] = k
        for ids, targets in merges:
            t_merged[ids] = targets
        np_ = lambda t: t.cpu().numpy()  # noqa: E731
        return TrackResult(
            layers=self.layers, n_tokens=n_tokens, entry_token=[np_(t) for t in ent_tok],
            entry_feature=[np_(t) for t in ent_feat], entry_activation=[np_(t) for t in ent_act],
            entry_track=[np_(t) for t in ent_track], track_token=np_(torch.cat(t_token)),
            track_birth=np_(torch.cat(t_birth)), track_end=np_(t_end), track_split_from=np_(torch.cat(t_split)),
            track_merged_into=np_(t_merged))
