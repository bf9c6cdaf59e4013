"""The baseline of issue 11: a plain PyTorch TopK SAE loop, the few lines anyone would write.

Constant Adam learning rate, unit-norm decoder rows (renormalised after each step), a
pre-encoder bias (x - b_dec before the encoder, b_dec started at the mean of the first batch),
no AuxK, no warm-up, no clipping, no schedule.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def train_plain_topk(batches: Iterable[torch.Tensor], d_in: int, d_sae: int, k: int, *, lr: float = 1e-3,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """Train on `batches` ((B, d_in) float tensors); returns W_enc (D, H), b_enc, W_dec (H, D), b_dec."""
    torch.manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    p = {"W_enc": W_dec.t().clone(), "b_enc": torch.zeros(d_sae), "W_dec": W_dec, "b_dec": torch.zeros(d_in)}
    p = {name: t.requires_grad_() for name, t in p.items()}
    opt = torch.optim.Adam(p.values(), lr=lr)
    for step, x in enumerate(batches):
        if step == 0:
            with torch.no_grad():
                p["b_dec"].copy_(x.mean(0))
        x_hat = plain_topk_forward(p, x, k)[0]
        loss = (x - x_hat).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True)
    return {name: t.detach() for name, t in p.items()}


def plain_topk_forward(p: dict[str, torch.Tensor], x: torch.Tensor, k: int):
    """x_hat and the (values, indices) of the k largest ReLU pre-activations of x - b_dec."""
    pre = torch.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    values, idx = pre.topk(k, dim=-1, sorted=False)
    x_hat = F.embedding_bag(idx, p["W_dec"], per_sample_weights=values, mode="sum") + p["b_dec"]
    return x_hat, (values, idx)
