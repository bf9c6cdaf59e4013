"""Co-activation of two layers' SAE latents over the store's held-out rows, never H x H.

The store holds the same tokens at every layer, so the held-out rows (the chunks the SAEs'
95/5 split kept out of training) are read once per layer, encoded, and kept as sparse codes
(CSR: a row pointer, latent ids, values). For a group of source latents the co-activation sums

    C[s, t] = sum over rows of a_s * b_t        K[s, t] = rows where both fire

come from the (row, source entry, candidate entry) triples of the group, expanded at once and
summed per pair with one sort (torch.unique): a sparse x sparse product whose work and memory
follow sum over rows of L0_a * L0_b, never H_a x H_b. The score is the Pearson correlation of
the two activations over the rows,

    corr = (C/n - mean_a mean_b) / (std_a std_b),

and only pairs that fired together at least once are candidates (K > 0; the others have
corr <= 0 anyway). Groups hold whole latents and about `pair_budget` pairs each; each
latent keeps its `top` best candidates.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ghosttrack.tracks.codes import SparseCodes, one_cpu_thread
from ghosttrack.tracks.match import concat_edges


@torch.no_grad()
def encode_rows(store, layer: int, sae, chunks: np.ndarray, *, skip_flagged: bool, batch_size: int = 4096,
                device: torch.device | str = "cpu", progress: bool = True) -> tuple[SparseCodes, Tensor]:
    """One pass over `chunks` of `layer`: sparse codes and L2 norms of the rows (position-0 rows left
    out when skip_flagged; the rows kept are the same at every layer, since positions are shared)."""
    device = torch.device(device)
    parts, norms = [], []
    for c in tqdm(chunks.tolist(), desc=f"encode layer {layer}", unit="chunk", disable=not progress):
        start, stop = store.chunk_bounds(c)
        x = np.asarray(store.read_chunk(layer, c))
        if skip_flagged:
            x = x[store.positions(start, stop) != 0]
        for s in range(0, len(x), batch_size):
            x_BD = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size])).to(device).float()
            norms.append(x_BD.norm(dim=1))
            parts.append(SparseCodes.from_dense(sae.encode(x_BD)))
    codes = SparseCodes.cat(parts, sae.cfg.d_sae, device)
    return codes, (torch.cat(norms) if norms else torch.zeros(0, device=device))


def _pair_sums(a_rows: Tensor, a_feat: Tensor, a_val: Tensor, b: SparseCodes) -> tuple[Tensor, Tensor, Tensor]:
    """The co-firing pairs of the given source entries, summed: (key = src * H_b + dst ascending,
    sum of a_src * b_dst over rows, rows where both fired); memory follows the number of pairs.

    Every source entry (row r, latent s, value v) pairs with each entry of row r in b.
    """
    cnt = b.row_ptr.diff()[a_rows]
    rep = torch.repeat_interleave(torch.arange(a_rows.numel(), device=cnt.device), cnt)
    first = cnt.cumsum(0) - cnt
    bi = b.row_ptr[a_rows][rep] + (torch.arange(rep.numel(), device=cnt.device) - first[rep])
    key = a_feat[rep] * b.n_features + b.feat[bi]
    keys, inverse = torch.unique(key, sorted=True, return_inverse=True)
    sums = torch.zeros(keys.numel(), dtype=torch.float64, device=key.device)
    sums.index_add_(0, inverse, (a_val[rep] * b.val[bi]).double())
    both = torch.zeros(keys.numel(), dtype=torch.long, device=key.device)
    both.index_add_(0, inverse, torch.ones_like(inverse))
    return keys, sums, both


def _feature_groups(a_feat: Tensor, pairs_e: Tensor, n_features: int, pair_budget: int) -> list[tuple[int, int]]:
    """Entry ranges [e0, e1) covering whole latents, each with about pair_budget pairs at most
    (a latent with more pairs than that is a range of its own)."""
    per_feat = torch.zeros(n_features, dtype=torch.long, device=a_feat.device).index_add_(0, a_feat, pairs_e)
    cum = per_feat.cumsum(0)
    f_ptr = torch.searchsorted(a_feat, torch.arange(n_features + 1, device=a_feat.device)).tolist()
    groups, f0 = [], 0
    while f0 < n_features:
        before = int(cum[f0 - 1]) if f0 else 0
        f1 = max(int(torch.searchsorted(cum, before + pair_budget, right=True)), f0 + 1)
        f1 = min(f1, n_features)
        if f_ptr[f1] > f_ptr[f0]:
            groups.append((f_ptr[f0], f_ptr[f1]))
        f0 = f1
    return groups


def feature_moments(codes: SparseCodes) -> tuple[Tensor, Tensor, Tensor]:
    """Per latent: sum of activations, sum of squares (float64), and the number of rows it fired in."""
    H, dev = codes.n_features, codes.val.device
    v = codes.val.double()
    s = torch.zeros(H, dtype=torch.float64, device=dev).index_add_(0, codes.feat, v)
    q = torch.zeros(H, dtype=torch.float64, device=dev).index_add_(0, codes.feat, v * v)
    n = torch.zeros(H, dtype=torch.long, device=dev).index_add_(0, codes.feat, torch.ones_like(codes.feat))
    return s, q, n


@torch.no_grad()
def coactivation_edges(a: SparseCodes, b: SparseCodes, top: int, *, pair_budget: int = 1 << 22,
                       progress: bool = True, desc: str = "co-activation") -> dict[str, np.ndarray]:
    """Each latent of `a`'s top-`top` latents of `b` by activation correlation over the shared rows.

    Returns edge columns src, dst, score (the correlation), rank, coact_jaccard and coact_count.
    Only co-firing pairs are ever formed: the work and memory follow the pairs, not H_a x H_b.
    """
    with one_cpu_thread(a.val.device):
        return _coactivation_edges(a, b, top, pair_budget, progress, desc)


def _coactivation_edges(a: SparseCodes, b: SparseCodes, top: int, pair_budget: int, progress: bool,
                        desc: str) -> dict[str, np.ndarray]:
    if a.n_rows != b.n_rows:
        raise ValueError(f"the two layers' codes cover different rows ({a.n_rows} vs {b.n_rows})")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    n, H_a, H_b, dev = max(a.n_rows, 1), a.n_features, b.n_features, a.val.device
    sum_a, sq_a, cnt_a = feature_moments(a)
    sum_b, sq_b, cnt_b = feature_moments(b)
    mean_a, mean_b = sum_a / n, sum_b / n
    std_a = (sq_a / n - mean_a * mean_a).clamp_min(0).sqrt()
    std_b = (sq_b / n - mean_b * mean_b).clamp_min(0).sqrt()
    # Source entries grouped by latent, so a group of latents is one contiguous slice of entries.
    order = torch.argsort(a.feat, stable=True)
    a_rows, a_feat, a_val = a.entry_rows()[order], a.feat[order], a.val[order]
    pairs_e = b.row_ptr.diff()[a_rows]
    parts = []
    for e0, e1 in tqdm(_feature_groups(a_feat, pairs_e, H_a, pair_budget), desc=desc, unit="block",
                       disable=not progress):
        keys, sums, both = _pair_sums(a_rows[e0:e1], a_feat[e0:e1], a_val[e0:e1], b)
        src, dst = keys // H_b, keys % H_b
        denom = std_a[src] * std_b[dst]
        corr = (sums / n - mean_a[src] * mean_b[dst]) / denom.clamp_min(1e-300)
        ok = denom > 0  # a latent with constant activation has no correlation
        src, dst, corr, both = src[ok], dst[ok], corr[ok], both[ok]
        # Per source: highest correlation first (ties: the lower dst, already ascending inside a source).
        by = torch.argsort(corr, descending=True, stable=True)
        by = by[torch.argsort(src[by], stable=True)]
        src, dst, corr, both = src[by], dst[by], corr[by], both[by]
        start = torch.ones_like(src, dtype=torch.bool)
        start[1:] = src[1:] != src[:-1]
        group_start = torch.cummax(torch.where(start, torch.arange(src.numel(), device=dev), 0), 0).values
        rank = torch.arange(src.numel(), device=dev) - group_start
        keep = rank < top
        src, dst, corr, both, rank = src[keep], dst[keep], corr[keep], both[keep], rank[keep]
        union = cnt_a[src] + cnt_b[dst] - both
        parts.append({"src": src.cpu().numpy().astype(np.int32), "dst": dst.cpu().numpy().astype(np.int32),
                      "score": corr.float().cpu().numpy(), "rank": rank.cpu().numpy().astype(np.int16),
                      "coact_jaccard": (both.double() / union.clamp_min(1)).float().cpu().numpy(),
                      "coact_count": both.cpu().numpy().astype(np.int64)})
    return concat_edges(parts)
