"""Data-free matching of two SAEs' latents (SAE Match, Balagansky et al., ICLR 2025), blocked with a running top-N.

Folding. A JumpReLU latent fires when its pre-activation passes its threshold theta_h. Dividing
the encoder column, the encoder bias and the threshold by theta_h and multiplying the decoder row
by theta_h leaves the reconstruction unchanged and puts every latent's threshold at 1, so decoder
rows of two SAEs become comparable in scale: the folded decoder row is theta_h * W_dec[h]. ReLU
and TopK latents have no threshold to fold: their decoder rows are compared as saved (ours are
unit norm, so the score below is then a function of the cosine alone).

Score. SAE Match aligns latents by the squared error between folded decoder rows. For a source
row a and a candidate b we report the error relative to the source's own size,

    score(a, b) = 1 - ||a - b||^2 / ||a||^2 = (2 a.b - ||b||^2) / ||a||^2,

so that for one source the ranking is exactly SAE Match's, an identical row scores 1, and (for
rows of equal norm) score = 2 cos - 1. Higher is better.

Blocking. Sources are taken in blocks of `src_block` rows and candidates in blocks of `dst_block`
rows; each (src_block x dst_block) score tile is merged into a running top-N per source, so the
largest array ever held is one tile, never H x H.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm


def folded_decoder(sae) -> Tensor:
    """(H, D) float32 decoder rows after folding each JumpReLU threshold into its row (see above)."""
    W_HD = sae.W_dec.detach().float()
    if sae.cfg.architecture == "jumprelu":
        # A zero threshold has no scale to fold: that latent's folded row is 0 and matches nothing well.
        W_HD = W_HD * sae.threshold.detach().float().clamp_min(0.0).unsqueeze(1)
    return W_HD


def fold_sae_(sae) -> None:
    """Fold a JumpReLU SAE in place so every threshold is 1 (outputs unchanged; acts divided by theta).

    Only used to check the folding identity; matching needs just `folded_decoder`.
    """
    if sae.cfg.architecture != "jumprelu":
        return
    with torch.no_grad():
        theta_H = sae.threshold.detach().clone()
        sae.W_enc.div_(theta_H)
        sae.b_enc.div_(theta_H)
        sae.W_dec.mul_(theta_H.unsqueeze(1))
        sae.threshold.fill_(1.0)


def _rank_tile(a_SD: Tensor, b_CD: Tensor, b_sq_C: Tensor) -> Tensor:
    """(S, C) 2 a.b - ||b||^2: the score times ||a||^2, a positive per-row factor that cannot change a
    row's ranking, so it is applied to the N survivors only (one pass over the tile saved)."""
    return torch.addmm(b_sq_C.neg().unsqueeze(0), a_SD, b_CD.t(), alpha=2.0)


class RunningTopN:
    """The N best (value, column) of each of `rows` rows, merged tile by tile.

    Slots start at (-inf, -1). A tile's candidates enter only through `torch.topk` on the tile
    concatenated with the current slots, so the result equals a top-N over all columns at once
    (up to the order of exact ties).
    """

    def __init__(self, rows: int, top: int, device: torch.device | str):
        self.top = top
        self.values = torch.full((rows, top), -torch.inf, device=device)
        self.index = torch.full((rows, top), -1, dtype=torch.long, device=device)

    def update(self, tile_RC: Tensor, col0: int) -> None:
        """Merge a (rows, C) tile whose column c is global column col0 + c."""
        k = min(self.top, tile_RC.shape[1])
        vals, cols = tile_RC.topk(k, dim=1)
        both_vals = torch.cat([self.values, vals], dim=1)
        both_idx = torch.cat([self.index, cols + col0], dim=1)
        self.values, pick = both_vals.topk(self.top, dim=1)
        self.index = both_idx.gather(1, pick)


@dataclass
class BlockSizes:
    """Tile shape of the blocked computations (rows of sources x columns of candidates)."""

    src_block: int = 2048
    dst_block: int = 8192

    def __post_init__(self) -> None:
        if self.src_block < 1 or self.dst_block < 1:
            raise ValueError(f"block sizes must be >= 1, got {self.src_block}, {self.dst_block}")


def topn_edges(values_SN: Tensor, index_SN: Tensor, src0: int) -> dict[str, np.ndarray]:
    """Flatten running top-N slots of sources src0.. into edge columns, dropping unfilled (-inf) slots."""
    vals = values_SN.cpu().numpy()
    idx = index_SN.cpu().numpy()
    keep = np.isfinite(vals) & (idx >= 0)
    rows, ranks = np.nonzero(keep)
    return {"src": (rows + src0).astype(np.int32), "dst": idx[rows, ranks].astype(np.int32),
            "score": vals[rows, ranks].astype(np.float32), "rank": ranks.astype(np.int16)}


def concat_edges(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {"src": np.empty(0, np.int32), "dst": np.empty(0, np.int32), "score": np.empty(0, np.float32),
                "rank": np.empty(0, np.int16)}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def decoder_pair_columns(dec_a_HD: Tensor, dec_b_HD: Tensor, src: np.ndarray, dst: np.ndarray,
                         *, chunk: int = 1 << 16) -> dict[str, np.ndarray]:
    """Per-edge data-free columns: decoder_score, decoder_mse (folded rows) and decoder_cosine."""
    out = {"decoder_score": [], "decoder_mse": [], "decoder_cosine": []}
    device = dec_a_HD.device
    for s in range(0, len(src), chunk):
        a = dec_a_HD[torch.from_numpy(src[s:s + chunk].astype(np.int64)).to(device)]
        b = dec_b_HD[torch.from_numpy(dst[s:s + chunk].astype(np.int64)).to(device)]
        dot, a_sq, b_sq = (a * b).sum(1), (a * a).sum(1), (b * b).sum(1)
        out["decoder_score"].append(((2 * dot - b_sq) / a_sq.clamp_min(1e-12)).cpu())
        out["decoder_mse"].append(((a_sq + b_sq - 2 * dot).clamp_min(0.0) / a.shape[1]).cpu())
        out["decoder_cosine"].append((dot / (a_sq.sqrt() * b_sq.sqrt()).clamp_min(1e-12)).cpu())
    return {k: (torch.cat(v).numpy() if v else np.empty(0)).astype(np.float32) for k, v in out.items()}


@torch.no_grad()
def match_decoders(dec_a_HD: Tensor, dec_b_HD: Tensor, top: int, *, blocks: BlockSizes = BlockSizes(),
                   progress: bool = True, desc: str = "match") -> dict[str, np.ndarray]:
    """Each row of dec_a's top-`top` rows of dec_b by score (see the module doc), blocked.

    Returns edge columns src, dst, score, rank (0 = best) plus decoder_mse and decoder_cosine.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    H_a, H_b = dec_a_HD.shape[0], dec_b_HD.shape[0]
    a_sq_H, b_sq_H = (dec_a_HD * dec_a_HD).sum(1), (dec_b_HD * dec_b_HD).sum(1)
    top = min(top, H_b)
    parts = []
    n_tiles = -(-H_a // blocks.src_block) * -(-H_b // blocks.dst_block)
    with tqdm(total=n_tiles, desc=desc, unit="tile", disable=not progress) as bar:
        for s0 in range(0, H_a, blocks.src_block):
            s1 = min(H_a, s0 + blocks.src_block)
            best = RunningTopN(s1 - s0, top, dec_a_HD.device)
            for d0 in range(0, H_b, blocks.dst_block):
                d1 = min(H_b, d0 + blocks.dst_block)
                best.update(_rank_tile(dec_a_HD[s0:s1], dec_b_HD[d0:d1], b_sq_H[d0:d1]), d0)
                bar.update(1)
            scores = best.values / a_sq_H[s0:s1].clamp_min(1e-12).unsqueeze(1)
            parts.append(topn_edges(scores, best.index, s0))
    edges = concat_edges(parts)
    cols = decoder_pair_columns(dec_a_HD, dec_b_HD, edges["src"], edges["dst"])
    edges["decoder_mse"], edges["decoder_cosine"] = cols["decoder_mse"], cols["decoder_cosine"]
    return edges
