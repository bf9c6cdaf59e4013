"""The fused SAE path: same signature, outputs and loss as `reference.sae_forward`, as one
`torch.autograd.Function` whose forward and backward run Triton kernels.

Forward: 2 GEMMs (encode, decode), backward: up to 4 (g_pre, W_dec, W_enc, x), each with
its elementwise work (bias, ReLU/JumpReLU, L1/L0/MSE partial sums, column sums, STE
threshold terms) in its epilogue; all six share one main loop (`fused_gemm.gemm_tile`).
Decode and dx (a B x D output, K = H) split K when the autotuner finds it faster, in Triton
rather than cuBLAS: cuBLAS would need the bias, diff, squared-error and column-sum epilogue
as separate passes over B x D, and cannot fuse dx's `- 2 c_mse / B * diff`. The only (B, H) tensors are the activations (plus an int8
gate/window code with a threshold) and, during backward, the gradient wrt `pre`.

Also `topk_decode`: the TopK SAE's sparse decoder, touching only the k selected rows.

Triton is optional: it is imported on the first call, never at import. It runs on a CUDA
GPU, or on the CPU through the (slow) interpreter when TRITON_INTERPRET=1 is set before
the first call.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from .reference import SAEOutput, check_shapes

UNAVAILABLE = "--fused needs a CUDA GPU with Triton, or TRITON_INTERPRET=1 for the (slow) CPU interpreter"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def is_available() -> bool:
    """Whether the fused path can run here: triton importable, and a CUDA device or the interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    return interpreting() or torch.cuda.is_available()


def require_available() -> None:
    """Raise RuntimeError with the fix when the fused path cannot run here."""
    if not is_available():
        raise RuntimeError(UNAVAILABLE)


def _check_inputs(x: Tensor, params: list[Tensor], threshold: Tensor | None) -> None:
    """Dtype and device rules the kernels rely on (shapes are `check_shapes`'s job)."""
    if x.dtype not in DTYPES:
        raise ValueError(f"the fused path takes float32, float16 or bfloat16, got {x.dtype}")
    for p in params:
        if p.dtype != x.dtype:
            raise ValueError(f"the fused path needs one dtype for its inputs and weights, got {x.dtype} "
                             f"and {p.dtype}; cast them (or use autocast around the reference path)")
    tensors = [x, *params] + ([threshold] if threshold is not None else [])
    if any(t.device != x.device for t in tensors):
        raise ValueError("the fused path needs every tensor on one device")
    if not interpreting() and x.device.type != "cuda":
        raise RuntimeError(f"the fused path got {x.device.type} tensors; {UNAVAILABLE}")


class FusedSAE(torch.autograd.Function):
    """forward(x, W_enc, b_enc, W_dec, b_dec, threshold, l1_coeff, l0_coeff, bandwidth)
    -> (x_hat, acts, loss, mse, l1, l0), the fields of SAEOutput."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, threshold, l1_coeff, l0_coeff, bandwidth):
        from . import fused_forward

        B = x.shape[0]
        # ||W_dec[h]||: an (H, D) reduction, negligible next to the GEMMs.
        dec_norm_H = torch.linalg.vector_norm(W_dec, dim=1, dtype=torch.float32)
        acts, code, l1_sum, l0_sum, acts_sum_H = fused_forward.encode(x, W_enc, b_enc, threshold, dec_norm_H,
                                                                      bandwidth)
        x_hat, diff, sq_err_sum, diff_sum_D = fused_forward.decode(acts, W_dec, b_dec, x)
        mse, l1, l0 = sq_err_sum / B, l1_sum / B, l0_sum / B
        loss = mse + l1_coeff * l1 + l0_coeff * l0

        ctx.save_for_backward(x, W_enc, W_dec, threshold, dec_norm_H, acts, code, diff, acts_sum_H, diff_sum_D)
        ctx.coeffs = (l1_coeff, l0_coeff, bandwidth)
        ctx.set_materialize_grads(False)
        if threshold is None:
            ctx.mark_non_differentiable(l0)  # a ReLU gate count has no gradient
        return x_hat, acts, loss, mse, l1, l0

    @staticmethod
    def backward(ctx, grad_x_hat, grad_acts, grad_loss, grad_mse, grad_l1, grad_l0):
        from . import fused_backward

        x, W_enc, W_dec, threshold, dec_norm_H, acts, code, diff, acts_sum_H, diff_sum_D = ctx.saved_tensors
        l1_coeff, l0_coeff, bandwidth = ctx.coeffs
        # Upstream gradient of each loss term; stays on the device (no .item() sync).
        zero = torch.zeros((), dtype=torch.float32, device=x.device)
        g_loss = zero if grad_loss is None else grad_loss.float()
        coef_3 = torch.stack([
            g_loss + (zero if grad_mse is None else grad_mse.float()),
            g_loss * l1_coeff + (zero if grad_l1 is None else grad_l1.float()),
            g_loss * l0_coeff + (zero if grad_l0 is None else grad_l0.float()),
        ])
        names = ["x", "W_enc", "b_enc", "W_dec", "b_dec", "threshold"]
        needs = dict(zip(names, ctx.needs_input_grad[:6]))
        grads = fused_backward.backward(x, W_enc, W_dec, threshold, dec_norm_H, acts, code, diff, acts_sum_H,
                                        diff_sum_D, coef_3, grad_x_hat, grad_acts, bandwidth, needs)
        return (*(grads[n] if needs[n] else None for n in names), None, None, None)


def sae_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                l1_coeff: float | Tensor, threshold: Tensor | None = None, *, l0_coeff: float | Tensor = 0.0,
                bandwidth: float = 1e-3) -> SAEOutput:
    """Fused SAE forward pass and loss: see `reference.sae_forward` for the contract.

    x and the weights share one dtype (float32, float16 or bfloat16; half precision
    accumulates in fp32); threshold may be any float dtype.
    """
    require_available()
    check_shapes(x, W_enc, b_enc, W_dec, b_dec, threshold)
    _check_inputs(x, [W_enc, b_enc, W_dec, b_dec], threshold)
    # A coefficient may be a 0-d device tensor (--target-l0 steers it): kept as one, never read back.
    l1_coeff, l0_coeff = (c if isinstance(c, Tensor) else float(c) for c in (l1_coeff, l0_coeff))
    return SAEOutput(*FusedSAE.apply(x, W_enc, b_enc, W_dec, b_dec, threshold, l1_coeff, l0_coeff,
                                     float(bandwidth)))


class FusedTopKDecode(torch.autograd.Function):
    """forward(top_acts, top_indices, W_dec, b_dec) -> x_hat, reading only the k selected
    rows of W_dec per example (Triton gather forward, gather + scatter-add backward)."""

    @staticmethod
    def forward(ctx, top_acts, top_indices, W_dec, b_dec):
        from . import fused_sparse

        ctx.save_for_backward(top_acts, top_indices, W_dec)
        return fused_sparse.decode(top_acts, top_indices, W_dec, b_dec)

    @staticmethod
    def backward(ctx, grad_x_hat):
        from . import fused_sparse

        top_acts, top_indices, W_dec = ctx.saved_tensors
        need_acts, _, need_w, need_b = ctx.needs_input_grad
        g_acts, g_w, g_b = fused_sparse.backward(grad_x_hat, top_acts, top_indices, W_dec,
                                                 need_acts, need_w or need_b)
        return g_acts, None, g_w if need_w else None, g_b if need_b else None


def topk_decode(top_acts: Tensor, top_indices: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """Sparse TopK decoder, the contract of `topk.topk_decode`: top_acts (B, k), top_indices
    (B, k) int64 in [0, H), W_dec (H, D), b_dec (D,) -> x_hat (B, D), never a (B, H) tensor.

    Index range is checked on the CPU (the interpreter does no bounds checking); on the GPU
    it is trusted (torch.topk's output), since checking would cost a host sync.
    """
    require_available()
    H, D = W_dec.shape
    if top_acts.dim() != 2 or top_acts.shape != top_indices.shape or b_dec.shape != (D,):
        raise ValueError(f"top_acts {tuple(top_acts.shape)} and top_indices {tuple(top_indices.shape)} "
                         f"must be the same (B, k) shape, b_dec {tuple(b_dec.shape)} must be ({D},)")
    _check_inputs(top_acts, [W_dec, b_dec], None)
    if top_indices.dtype != torch.int64:
        raise ValueError(f"top_indices must be int64, got {top_indices.dtype}")
    if top_indices.device.type == "cpu" and top_indices.numel() and (
            top_indices.min() < 0 or top_indices.max() >= H):
        raise ValueError(f"top_indices must lie in [0, {H}) (the rows of W_dec)")
    return FusedTopKDecode.apply(top_acts, top_indices, W_dec, b_dec)
