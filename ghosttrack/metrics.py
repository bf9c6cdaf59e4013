"""Reconstruction and sparsity metrics, with their definitions fixed here (B rows, D dims, H latents).

    MSE          = (1/B) sum_b sum_d (x_bd - x_hat_bd)^2
                   (the SAE's own mse: summed over D, averaged over rows)
    FVU          = sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean_b'(x_b')||^2
                   (fraction of variance unexplained, pooled over all rows and dims, the
                   denominator centred on the mean row of the same rows; 1 - FVU is the
                   explained variance; scale-free, so scaled and raw inputs agree)
    L0           = (1/B) sum_b #{h : acts_bh > 0}        (+ a histogram of #{h : acts_bh > 0})
    L2 ratio     = (1/B) sum_b ||x_hat_b|| / ||x_b||     (< 1: the SAE shrinks its outputs)
    dead fraction  = #{h : latent h fired in none of the last N training tokens} / H
    dense fraction = #{h : latent h fired on more than a fraction q of the rows} / H

Accumulators keep device tensors and sync with the host only in `result()`, so the
training loop never waits on them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def mse(x_BD: Tensor, x_hat_BD: Tensor) -> float:
    """(1/B) sum_b ||x_b - x_hat_b||^2."""
    return float((x_BD.double() - x_hat_BD.double()).pow(2).sum(-1).mean())


def fvu(x_BD: Tensor, x_hat_BD: Tensor) -> float:
    """sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean(x)||^2, pooled and centred."""
    x = x_BD.double()
    return float((x - x_hat_BD.double()).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def l2_ratio(x_BD: Tensor, x_hat_BD: Tensor) -> float:
    """(1/B) sum_b ||x_hat_b|| / ||x_b||."""
    return float((x_hat_BD.double().norm(dim=-1) / x_BD.double().norm(dim=-1).clamp_min(1e-12)).mean())


def l0_bin_edges(d_sae: int) -> list[int]:
    """Histogram bin edges for L0: [0, 1, 2, 4, 8, ..., 2^m >= d_sae + 1]; bin i is [e_i, e_{i+1})."""
    edges = [0, 1]
    while edges[-1] <= d_sae:
        edges.append(edges[-1] * 2)
    return edges


class ReconstructionStats:
    """Streaming FVU / MSE / L0 / L2-ratio / firing counts over any number of batches.

    FVU's centred denominator is accumulated as sum ||x||^2 - ||sum x||^2 / n (in float64),
    which equals sum ||x - mean(x)||^2 for the pooled rows.
    """

    def __init__(self, d_in: int, d_sae: int, device: torch.device | str = "cpu"):
        self.d_sae = d_sae
        self.edges = l0_bin_edges(d_sae)
        self._edges_t = torch.tensor(self.edges[1:-1], device=device)
        f64 = dict(dtype=torch.float64, device=device)
        self.n_rows = torch.zeros((), **f64)
        self.sum_sq_err = torch.zeros((), **f64)
        self.sum_x_D = torch.zeros(d_in, **f64)
        self.sum_sq_x = torch.zeros((), **f64)
        self.sum_l0 = torch.zeros((), **f64)
        self.sum_l2_ratio = torch.zeros((), **f64)
        self.l0_hist = torch.zeros(len(self.edges) - 1, dtype=torch.int64, device=device)
        self.fired_H = torch.zeros(d_sae, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, x_BD: Tensor, x_hat_BD: Tensor, l0_B: Tensor, fired_H: Tensor,
               mse: Tensor | None = None) -> None:
        """Add a batch: inputs, reconstructions, per-row L0 and per-latent firing counts.

        mse: the batch's (1/B) sum ||x - x_hat||^2 when already computed (the loss has it),
        which saves two passes over the batch in the training loop.
        """
        x = x_BD.float()
        norm_B = torch.linalg.vecdot(x, x)
        sq_err = (x - x_hat_BD.float()).pow(2).sum() if mse is None else mse.detach() * x.shape[0]
        self.n_rows += x.shape[0]
        self.sum_sq_err += sq_err.double()
        self.sum_x_D += x.sum(0).double()
        self.sum_sq_x += norm_B.sum().double()
        self.sum_l0 += l0_B.sum().double()
        self.sum_l2_ratio += (x_hat_BD.float().norm(dim=-1) / norm_B.sqrt().clamp_min(1e-12)).sum().double()
        # Fixed bins and a scatter-add: bincount would read the batch's max back to size its output.
        bin_B = torch.bucketize(l0_B.to(self._edges_t.dtype), self._edges_t, right=True)
        self.l0_hist.index_add_(0, bin_B, torch.ones_like(bin_B))
        self.fired_H += fired_H.to(torch.int64)

    _STATE = ("n_rows", "sum_sq_err", "sum_x_D", "sum_sq_x", "sum_l0", "sum_l2_ratio", "l0_hist", "fired_H")

    def state_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).cpu().clone() for name in self._STATE}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in self._STATE:
            getattr(self, name).copy_(state[name])

    @torch.no_grad()
    def reduce_(self, sum_fn) -> None:
        """Replace every accumulator with sum_fn(accumulator): with a sum across data-parallel
        processes, the result is that of all their rows."""
        for name in self._STATE:
            setattr(self, name, sum_fn(getattr(self, name)))

    def result(self, dense_threshold: float = 0.1) -> dict:
        """The metrics of every row seen so far (one host sync)."""
        n = float(self.n_rows)
        if n == 0:
            return {"rows": 0}
        centred = float(self.sum_sq_x - self.sum_x_D.pow(2).sum() / n)
        fired = self.fired_H.cpu()
        return {
            "rows": int(n),
            "mse": float(self.sum_sq_err) / n,
            "fvu": float(self.sum_sq_err) / centred if centred > 0 else math.nan,
            "l0": float(self.sum_l0) / n,
            "l2_ratio": float(self.sum_l2_ratio) / n,
            "never_fired_fraction": float((fired == 0).double().mean()),
            "dense_fraction": float((fired.double() / n > dense_threshold).double().mean()),
            "l0_histogram": {"edges": self.edges, "counts": self.l0_hist.cpu().tolist()},
        }


class FiringTracker:
    """Training tokens since each latent last fired; a latent at or over the window is dead."""

    def __init__(self, d_sae: int, device: torch.device | str = "cpu"):
        self.tokens_since_fired_H = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.tokens_seen = 0

    @torch.no_grad()
    def update(self, fired_H: Tensor, n_rows: int) -> None:
        """fired_H: rows each latent fired on in a batch of n_rows rows."""
        self.tokens_since_fired_H.add_(n_rows).masked_fill_(fired_H > 0, 0)
        self.tokens_seen += n_rows

    def dead_fraction(self, window_tokens: int) -> Tensor:
        """Device scalar: fraction of latents that fired in none of the last `window_tokens` tokens.
        Before `window_tokens` tokens were seen it counts latents that never fired so far."""
        window = max(1, min(window_tokens, self.tokens_seen))
        return (self.tokens_since_fired_H >= window).float().mean()

    def state_dict(self) -> dict:
        return {"tokens_since_fired_H": self.tokens_since_fired_H.cpu(), "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict) -> None:
        self.tokens_since_fired_H.copy_(state["tokens_since_fired_H"])
        self.tokens_seen = int(state["tokens_seen"])
