"""The plain PyTorch SAE forward pass: the oracle every faster path is tested against.

One function, `sae_forward`, covers the ReLU + L1 SAE and the JumpReLU SAE (pass a
`threshold`). Everything is ordinary autograd except two tiny `autograd.Function`s
that give the JumpReLU threshold a gradient through the straight-through estimator
(STE) of Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction
Fidelity with JumpReLU Sparse Autoencoders":

    K(u) = 1{|u| < 1/2}                         (rectangle kernel)
    d JumpReLU(pre) / d threshold = -(threshold / eps) * K((pre - threshold) / eps)
    d H(pre - threshold) / d threshold = -(1 / eps) * K((pre - threshold) / eps)
    d JumpReLU(pre) / d pre = 1{pre > threshold}
    d H(pre - threshold) / d pre = 0

Half-precision inputs compute in their own dtype (the "eager reference" a user would
write); the loss terms are reduced in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SAEOutput(NamedTuple):
    """What one SAE forward pass returns (the fused path returns the same)."""

    x_hat: Tensor
    """(B, D) reconstruction, in the input dtype."""
    acts: Tensor
    """(B, H) feature activations, in the input dtype."""
    loss: Tensor
    """Scalar (fp32; fp64 for fp64 inputs): mse + l1_coeff * l1 + l0_coeff * l0."""
    mse: Tensor
    """Scalar (fp32; fp64 for fp64 inputs): mean over rows of sum over D of (x - x_hat)^2."""
    l1: Tensor
    """Scalar: mean over rows of sum over H of acts * ||W_dec[h]||_2."""
    l0: Tensor
    """Scalar: mean over rows of the number of nonzero acts (STE gradient wrt threshold)."""


def rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel K(u) = 1{|u| < 1/2}, in u's dtype."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """pre * 1{pre > threshold}; the threshold learns through the STE (module docstring)."""

    @staticmethod
    def forward(ctx, pre_BH: Tensor, threshold_H: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_BH, threshold_H)
        ctx.bandwidth = bandwidth
        return pre_BH * (pre_BH > threshold_H)

    @staticmethod
    def backward(ctx, grad_BH: Tensor):
        pre_BH, threshold_H = ctx.saved_tensors
        eps = ctx.bandwidth
        # Exact gradient wrt pre away from the jump; the jump itself is handled by the STE.
        grad_pre = grad_BH * (pre_BH > threshold_H)
        # Pseudo-derivative of the jump: -(t / eps) K((pre - t) / eps), summed over the batch.
        window_BH = rectangle((pre_BH - threshold_H) / eps)
        grad_thr = -(threshold_H / eps) * (grad_BH * window_BH).sum(0)
        return grad_pre, grad_thr, None


class Step(torch.autograd.Function):
    """Heaviside H(pre - threshold); gradient only to the threshold, through the STE."""

    @staticmethod
    def forward(ctx, pre_BH: Tensor, threshold_H: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_BH, threshold_H)
        ctx.bandwidth = bandwidth
        return (pre_BH > threshold_H).to(pre_BH.dtype)

    @staticmethod
    def backward(ctx, grad_BH: Tensor):
        pre_BH, threshold_H = ctx.saved_tensors
        eps = ctx.bandwidth
        window_BH = rectangle((pre_BH - threshold_H) / eps)
        # The step is flat wrt pre (zero gradient), only the threshold moves it.
        grad_thr = -(1.0 / eps) * (grad_BH * window_BH).sum(0)
        return None, grad_thr, None


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype loss terms are reduced in: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def check_shapes(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                 threshold: Tensor | None) -> None:
    """Raise ValueError naming the first argument whose shape does not fit the others."""
    if x.dim() != 2 or W_enc.dim() != 2:
        raise ValueError(f"x and W_enc must be 2-D, got {tuple(x.shape)} and {tuple(W_enc.shape)}")
    D, H = W_enc.shape
    expected = {"x": (x.shape[0], D), "b_enc": (H,), "W_dec": (H, D), "b_dec": (D,)}
    given = {"x": x, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        expected["threshold"] = (H,)
        given["threshold"] = threshold
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(given[name].shape)}, expected {shape} "
                             f"(W_enc is {(D, H)})")


def sae_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                l1_coeff: float, threshold: Tensor | None = None, *, l0_coeff: float = 0.0,
                bandwidth: float = 1e-3) -> SAEOutput:
    """SAE forward pass and loss. Shapes: x (B, D), W_enc (D, H), b_enc (H,), W_dec (H, D),
    b_dec (D,), threshold (H,) or None (None: ReLU; a tensor: JumpReLU with STE gradients).

    Without a threshold, l0 is a count without gradient (the ReLU gate is not learnable).
    """
    check_shapes(x, W_enc, b_enc, W_dec, b_dec, threshold)
    acc = loss_dtype(x.dtype)
    pre_BH = x @ W_enc + b_enc
    if threshold is None:
        acts_BH = torch.relu(pre_BH)
        l0 = (acts_BH > 0).to(acc).sum(-1).mean()
    else:
        acts_BH = JumpReLU.apply(pre_BH, threshold, bandwidth)
        l0 = Step.apply(pre_BH, threshold, bandwidth).to(acc).sum(-1).mean()
    x_hat_BD = acts_BH @ W_dec + b_dec

    mse = (x.to(acc) - x_hat_BD.to(acc)).pow(2).sum(-1).mean()
    dec_norm_H = W_dec.to(acc).norm(dim=1)
    l1 = (acts_BH.to(acc) * dec_norm_H).sum(-1).mean()
    loss = mse + l1_coeff * l1 + l0_coeff * l0
    return SAEOutput(x_hat_BD, acts_BH, loss, mse, l1, l0)
