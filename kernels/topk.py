"""The plain PyTorch TopK SAE forward pass (Gao et al. 2024): keep the k largest ReLU
activations per row, decode from those k rows of W_dec only.

The AuxK loss for dead latents is the SAE module's business; it is computed from
`pre_acts`, which is why that (B, H) tensor is returned.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .reference import check_shapes, loss_dtype


class TopKOutput(NamedTuple):
    """What one TopK SAE forward pass returns."""

    x_hat: Tensor
    """(B, D) reconstruction, in the input dtype."""
    top_acts: Tensor
    """(B, k) the k largest activations of each row, in descending order."""
    top_indices: Tensor
    """(B, k) int64 latent index of each of top_acts."""
    mse: Tensor
    """Scalar (fp32; fp64 for fp64 inputs): mean over rows of sum over D of (x - x_hat)^2."""
    pre_acts: Tensor
    """(B, H) relu(x @ W_enc + b_enc), every latent (AuxK picks dead latents from it)."""


def topk_decode(top_acts: Tensor, top_indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """x_hat = sum_j top_acts[:, j] * W_dec[top_indices[:, j]] + b_dec: the plain gather/sum
    decoder (top_acts (B, k), top_indices (B, k), W_dec (H, D), b_dec (D,)) -> (B, D).

    Materialises the (B, k, D) gathered rows: readable, the oracle for sparse decoder kernels.
    """
    if top_acts.shape != top_indices.shape or top_acts.dim() != 2:
        raise ValueError(f"top_acts {tuple(top_acts.shape)} and top_indices "
                         f"{tuple(top_indices.shape)} must be the same (B, k) shape")
    rows_BKD = W_dec[top_indices]
    return (top_acts.unsqueeze(-1) * rows_BKD).sum(1) + b_dec


def topk_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                 k: int) -> TopKOutput:
    """TopK SAE forward pass. Shapes: x (B, D), W_enc (D, H), b_enc (H,), W_dec (H, D), b_dec (D,).

    Gradients flow to the selected activations (hence to x, W_enc, b_enc) and to W_dec, b_dec;
    the selection itself is piecewise constant.
    """
    check_shapes(x, W_enc, b_enc, W_dec, b_dec, None)
    H = W_enc.shape[1]
    if not 0 < k <= H:
        raise ValueError(f"k must be in [1, {H}] (the number of latents), got {k}")
    pre_acts_BH = torch.relu(x @ W_enc + b_enc)
    # sorted=True: a deterministic order that kernels and tests can compare against.
    top_acts_BK, top_indices_BK = pre_acts_BH.topk(k, dim=-1, sorted=True)
    x_hat_BD = topk_decode(top_acts_BK, top_indices_BK, W_dec, b_dec)
    acc = loss_dtype(x.dtype)
    mse = (x.to(acc) - x_hat_BD.to(acc)).pow(2).sum(-1).mean()
    return TopKOutput(x_hat_BD, top_acts_BK, top_indices_BK, mse, pre_acts_BH)
