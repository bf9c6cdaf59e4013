"""Co-activation of two layers' SAE latents over the store's held-out rows, blocked, never H x H.

The store holds the same tokens at every layer, so the held-out rows (the chunks the SAEs'
95/5 split kept out of training) are read once per layer, encoded, and kept as sparse codes
(CSR: a row pointer, latent ids, values). For a block of source latents the co-activation sums

    C[s, t] = sum over rows of a_s * b_t        K[s, t] = rows where both fire

come from one vectorised scatter over the (row, source entry, candidate entry) triples of the
block: a sparse x sparse product whose work is sum over rows of L0_a * L0_b, not H^2 * rows.
The score is the Pearson correlation of the two activations over the rows,

    corr = (C/n - mean_a mean_b) / (std_a std_b),

and only pairs that fired together at least once are candidates (K > 0); the others have
corr <= 0 anyway. Each (block x H_b) tile is merged into a running top-N per source.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ghosttrack.tracks.codes import SparseCodes
from ghosttrack.tracks.match import RunningTopN, concat_edges, topn_edges


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


def _block_sums(a_rows: Tensor, a_feat: Tensor, a_val: Tensor, s0: int, b: SparseCodes, C: Tensor, K: Tensor,
                pair_budget: int) -> None:
    """Add sum a_s * b_t into C and the co-firing counts into K for the given source entries.

    Every source entry (row r, latent s, value v) pairs with each entry of row r in b; the pairs
    are expanded in slices of about pair_budget so the temporary arrays stay bounded.
    """
    H_b = b.n_features
    counts_b = b.row_ptr.diff()
    n_pairs_e = counts_b[a_rows]
    ends = n_pairs_e.cumsum(0)
    total = int(ends[-1]) if ends.numel() else 0
    e0 = 0
    while e0 < a_rows.numel() and total:
        done = int(ends[e0 - 1]) if e0 else 0
        e1 = int(torch.searchsorted(ends, done + pair_budget, right=True))
        e1 = max(e1, e0 + 1)
        cnt = n_pairs_e[e0:e1]
        rep = torch.repeat_interleave(torch.arange(e1 - e0, device=cnt.device), cnt)
        first = cnt.cumsum(0) - cnt
        bi = b.row_ptr[a_rows[e0:e1]][rep] + (torch.arange(rep.numel(), device=cnt.device) - first[rep])
        target = (a_feat[e0:e1][rep] - s0) * H_b + b.feat[bi]
        C.view(-1).index_add_(0, target, (a_val[e0:e1][rep] * b.val[bi]).to(C.dtype))
        K.view(-1).index_add_(0, target, torch.ones_like(target))
        e0 = e1


def feature_moments(codes: SparseCodes) -> tuple[Tensor, Tensor, Tensor]:
    """Per latent: sum of activations, sum of squares (float64), and the number of rows it fired in."""
    H, dev = codes.n_features, codes.val.device
    v = codes.val.double()
    s = torch.zeros(H, dtype=torch.float64, device=dev).index_add_(0, codes.feat, v)
    q = torch.zeros(H, dtype=torch.float64, device=dev).index_add_(0, codes.feat, v * v)
    n = torch.zeros(H, dtype=torch.long, device=dev).index_add_(0, codes.feat, torch.ones_like(codes.feat))
    return s, q, n


@torch.no_grad()
def coactivation_edges(a: SparseCodes, b: SparseCodes, top: int, *, src_block: int | None = None,
                       tile_bytes: int = 256 << 20, pair_budget: int = 1 << 22, progress: bool = True,
                       desc: str = "co-activation") -> dict[str, np.ndarray]:
    """Each latent of `a`'s top-`top` latents of `b` by activation correlation over the shared rows.

    Returns edge columns src, dst, score (the correlation), rank, coact_jaccard and coact_count.
    """
    if a.n_rows != b.n_rows:
        raise ValueError(f"the two layers' codes cover different rows ({a.n_rows} vs {b.n_rows})")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    n, H_a, H_b, dev = a.n_rows, a.n_features, b.n_features, a.val.device
    top = min(top, H_b)
    src_block = src_block or max(1, tile_bytes // (H_b * 8 * 3))
    sum_a, sq_a, cnt_a = feature_moments(a)
    sum_b, sq_b, cnt_b = feature_moments(b)
    nn_ = max(n, 1)
    mean_a, mean_b = sum_a / nn_, sum_b / nn_
    std_a = (sq_a / nn_ - mean_a * mean_a).clamp_min(0).sqrt()
    std_b = (sq_b / nn_ - mean_b * mean_b).clamp_min(0).sqrt()
    # Source entries grouped by latent, so a block of latents is one contiguous slice.
    order = torch.argsort(a.feat, stable=True)
    a_rows, a_feat, a_val = a.entry_rows()[order], a.feat[order], a.val[order]
    f_ptr = torch.searchsorted(a_feat, torch.arange(H_a + 1, device=dev)).tolist()
    parts = []
    for s0 in tqdm(range(0, H_a, src_block), desc=desc, unit="block", disable=not progress):
        s1 = min(H_a, s0 + src_block)
        C = torch.zeros((s1 - s0, H_b), dtype=torch.float64, device=dev)
        K = torch.zeros((s1 - s0, H_b), dtype=torch.long, device=dev)
        e0, e1 = f_ptr[s0], f_ptr[s1]
        _block_sums(a_rows[e0:e1], a_feat[e0:e1], a_val[e0:e1], s0, b, C, K, pair_budget)
        cov = C.div_(nn_).sub_(mean_a[s0:s1, None] * mean_b[None, :])
        denom = std_a[s0:s1, None] * std_b[None, :]
        corr = torch.where((K > 0) & (denom > 0), cov / denom.clamp_min(1e-300), -torch.inf).float()
        best = RunningTopN(s1 - s0, top, dev)
        best.update(corr, 0)
        edges = topn_edges(best.values, best.index, s0)
        rows = torch.from_numpy(edges["src"].astype(np.int64) - s0).to(dev)
        cols = torch.from_numpy(edges["dst"].astype(np.int64)).to(dev)
        both = K[rows, cols]
        union = cnt_a[s0:s1][rows] + cnt_b[cols] - both
        edges["coact_jaccard"] = (both.double() / union.clamp_min(1)).float().cpu().numpy()
        edges["coact_count"] = both.cpu().numpy().astype(np.int64)
        parts.append(edges)
    return concat_edges(parts)
