"""Sparse backward passes for the TopK SAE: only the k selected latents of each row get work.

A TopK SAE's encoder GEMM is dense, but everything after the selection touches k of
the H latents per row. Autograd through `kernels.topk.topk_forward` would spend two
more dense (B, D) x (D, H) GEMMs in the backward (and materialise (B, k, D) gathers);
these two Functions do the same maths with sparse products instead:

    GatherPre:    values_BK = pre_BH[b, idx_BK]           (pre = x @ W_enc + b_enc)
        dW_enc[:, h] = sum_{(b, j): idx[b, j] = h} g[b, j] * x[b]      (CSR (H, B) @ x)
        db_enc[h]    = sum_{(b, j): idx[b, j] = h} g[b, j]
    SparseDecode: y_BD = sum_j vals[b, j] * W_dec[idx[b, j]]
        dW_dec[h]    = sum_{(b, j): idx[b, j] = h} vals[b, j] * g[b]   (CSR (H, B) @ g)
        dvals[b, j]  = <g[b], W_dec[idx[b, j]]>

On CUDA both Functions run the Triton kernels of `fused_sparse` instead (`triton_kernels` picks
the path by device): deterministic sorted segment sums instead of scatter-adds, no (block, k, D)
gathers; tests/kernels/test_topk_sparse_triton.py runs them through the interpreter.

The parity test (tests/test_sae_topk.py) checks values and every gradient against the
plain `topk_forward` on random inputs.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows per block when gathering (block, k, D) decoder rows on the GPU path: bounds the temporary.
_GATHER_ROWS = 1024

TRITON_ON_CPU = False
"""Tests set this (with TRITON_INTERPRET=1) to run the Triton kernels on CPU tensors."""


def triton_kernels(t: Tensor):
    """`kernels.fused_sparse` when its Triton kernels should run for t's device and dtype, else None.

    On CUDA (fp32/fp16/bf16, triton installed) the forward and backward run there: deterministic
    (sorted segment sums, no float atomics) and without the (block, k, D) gathers. Elsewhere
    (the CPU, float64) the torch paths below run.
    """
    from . import fused

    if t.dtype not in fused.DTYPES or not (t.is_cuda or (TRITON_ON_CPU and fused.interpreting())):
        return None
    if not fused.is_available():
        return None
    from . import fused_sparse

    return fused_sparse


def by_latent(idx_BK: Tensor, vals_BK: Tensor, n_latents: int) -> Tensor:
    """The (H, B) sparse CSR matrix S with S[idx[b, j], b] += vals[b, j] (duplicates summed)."""
    B, K = idx_BK.shape
    flat_idx = idx_BK.reshape(-1)
    order = torch.argsort(flat_idx, stable=True)
    rows = torch.arange(B, device=idx_BK.device).repeat_interleave(K)[order]
    crow = torch.zeros(n_latents + 1, dtype=torch.int64, device=idx_BK.device)
    # index_add_ into fixed bins, not bincount: bincount reads the max index back to size its output.
    crow[1:].index_add_(0, flat_idx, torch.ones_like(flat_idx))
    crow[1:] = crow[1:].cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, rows, vals_BK.reshape(-1)[order], (n_latents, B),
                                       check_invariants=False)


def latent_rows_product(idx_BK: Tensor, vals_BK: Tensor, dense_BN: Tensor, n_latents: int,
                        use_csr: bool | None = None) -> Tensor:
    """out[h] = sum over (b, j) with idx[b, j] = h of vals[b, j] * dense[b]  ->  (H, N), fp32 or fp64.

    use_csr: a CSR product (the CPU default) or blocked scatter-adds (the GPU default).
    """
    acc = torch.promote_types(dense_BN.dtype, torch.float32)
    if use_csr if use_csr is not None else dense_BN.device.type == "cpu":
        return by_latent(idx_BK, vals_BK.to(acc), n_latents) @ dense_BN.to(acc)
    # On GPUs a scatter-add is as fast as a CSR product and needs no sort.
    B, K = idx_BK.shape
    out = torch.zeros(n_latents, dense_BN.shape[1], dtype=acc, device=dense_BN.device)
    for start in range(0, B, _GATHER_ROWS):
        stop = min(B, start + _GATHER_ROWS)
        contrib = vals_BK[start:stop].to(acc).unsqueeze(-1) * dense_BN[start:stop].to(acc).unsqueeze(1)
        out.index_add_(0, idx_BK[start:stop].reshape(-1), contrib.reshape(-1, dense_BN.shape[1]))
    return out


def rowwise_dots(g_BD: Tensor, W_HD: Tensor, idx_BK: Tensor, use_sampled: bool | None = None) -> Tensor:
    """out[b, j] = <g[b], W[idx[b, j]]> (indices distinct within a row).

    use_sampled: a sampled dense-dense product over the (B, H) pattern of idx (the CPU default:
    B*k*D work, no (B, k, D) temporary), or blocked gathers + bmm (the GPU default). torch's
    sampled product takes fp32/fp64 only, so 16-bit inputs always take the gathers.
    """
    sampled_dtype = g_BD.dtype in (torch.float32, torch.float64)
    if sampled_dtype and (use_sampled if use_sampled is not None else g_BD.device.type == "cpu"):
        B, K = idx_BK.shape
        sorted_BK, order_BK = idx_BK.sort(dim=1)
        crow = torch.arange(0, B * K + 1, K, device=idx_BK.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            pattern = torch.sparse_csr_tensor(crow, sorted_BK.reshape(-1), torch.zeros(B * K, dtype=g_BD.dtype,
                                              device=g_BD.device), (B, W_HD.shape[0]), check_invariants=False)
        vals_BK = torch.sparse.sampled_addmm(pattern, g_BD, W_HD.t().to(g_BD.dtype)).values().view(B, K)
        return torch.empty_like(vals_BK).scatter_(1, order_BK, vals_BK)
    out = torch.empty(idx_BK.shape, dtype=g_BD.dtype, device=g_BD.device)
    for start in range(0, idx_BK.shape[0], _GATHER_ROWS):
        stop = min(idx_BK.shape[0], start + _GATHER_ROWS)
        rows_bKD = W_HD[idx_BK[start:stop]].to(g_BD.dtype)
        out[start:stop] = torch.bmm(rows_bKD, g_BD[start:stop].unsqueeze(-1)).squeeze(-1)
    return out


class GatherPre(torch.autograd.Function):
    """values[b, j] = (x @ W_enc + b_enc)[b, idx[b, j]], given those values precomputed.

    The forward pass only copies `values_BK` (computed once by the dense encoder GEMM under
    no_grad); the backward pass sends gradients to x, W_enc and b_enc sparsely.
    """

    @staticmethod
    def forward(ctx, x_BD: Tensor, W_enc_DH: Tensor, b_enc_H: Tensor, idx_BK: Tensor, values_BK: Tensor) -> Tensor:
        ctx.save_for_backward(x_BD, W_enc_DH, idx_BK)
        return values_BK.clone()

    @staticmethod
    def backward(ctx, g_BK: Tensor):
        x_BD, W_enc_DH, idx_BK = ctx.saved_tensors
        H = W_enc_DH.shape[1]
        grad_x = grad_W = grad_b = None
        kernels = triton_kernels(x_BD)
        if kernels is not None:
            if ctx.needs_input_grad[0]:
                grad_x = kernels.gather_decode(g_BK.to(x_BD.dtype), idx_BK, W_enc_DH.t())
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                rows_HD, sums_H = kernels.segment_rows(idx_BK, g_BK, x_BD, H, want_sums=True)
                grad_W, grad_b = rows_HD.t().to(W_enc_DH.dtype), sums_H.to(W_enc_DH.dtype)
            return grad_x, grad_W, grad_b, None, None
        if ctx.needs_input_grad[0]:
            # dx[b] = sum_j g[b, j] * W_enc[:, idx[b, j]]
            grad_x = F.embedding_bag(idx_BK, W_enc_DH.t(), per_sample_weights=g_BK.to(W_enc_DH.dtype),
                                     mode="sum").to(x_BD.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = latent_rows_product(idx_BK, g_BK, x_BD, H).t().to(W_enc_DH.dtype)
        if ctx.needs_input_grad[2]:
            acc = torch.promote_types(g_BK.dtype, torch.float32)
            grad_b = torch.zeros(H, dtype=acc, device=g_BK.device)
            grad_b.index_add_(0, idx_BK.reshape(-1), g_BK.reshape(-1).to(acc))
            grad_b = grad_b.to(W_enc_DH.dtype)
        return grad_x, grad_W, grad_b, None, None


class SparseDecode(torch.autograd.Function):
    """y[b] = sum_j vals[b, j] * W_dec[idx[b, j]] (no bias), with a sparse backward."""

    @staticmethod
    def forward(ctx, vals_BK: Tensor, idx_BK: Tensor, W_dec_HD: Tensor) -> Tensor:
        ctx.save_for_backward(vals_BK, idx_BK, W_dec_HD)
        kernels = triton_kernels(W_dec_HD)
        if kernels is not None:
            return kernels.gather_decode(vals_BK.to(W_dec_HD.dtype), idx_BK, W_dec_HD)
        return F.embedding_bag(idx_BK, W_dec_HD, per_sample_weights=vals_BK.to(W_dec_HD.dtype), mode="sum")

    @staticmethod
    def backward(ctx, g_BD: Tensor):
        vals_BK, idx_BK, W_dec_HD = ctx.saved_tensors
        grad_vals = grad_W = None
        kernels = triton_kernels(W_dec_HD)
        if kernels is not None:
            if ctx.needs_input_grad[0]:
                grad_vals = kernels.row_dots(g_BD, W_dec_HD, idx_BK, vals_BK.dtype)
            if ctx.needs_input_grad[2]:
                grad_W = kernels.segment_rows(idx_BK, vals_BK, g_BD, W_dec_HD.shape[0])[0].to(W_dec_HD.dtype)
            return grad_vals, None, grad_W
        if ctx.needs_input_grad[0]:
            grad_vals = rowwise_dots(g_BD, W_dec_HD, idx_BK).to(vals_BK.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = latent_rows_product(idx_BK, vals_BK, g_BD, W_dec_HD.shape[0]).to(W_dec_HD.dtype)
        return grad_vals, None, grad_W


def sparse_topk_encode(x_BD: Tensor, W_enc_DH: Tensor, b_enc_H: Tensor, k: int,
                       mask_H: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(acts_BK, idx_BK, pre_BH): the k largest relu(x @ W_enc + b_enc) per row (over the
    latents where mask_H is True, if given); acts carry sparse gradients, pre_BH none.

    Latents outside the mask that still get picked (fewer than k in the mask) get act 0.
    """
    with torch.no_grad():
        pre_BH = torch.addmm(b_enc_H.to(x_BD.dtype), x_BD, W_enc_DH.to(x_BD.dtype))
    return select_topk(x_BD, W_enc_DH, b_enc_H, pre_BH, k, mask_H) + (pre_BH,)


def select_topk(x_BD: Tensor, W_enc_DH: Tensor, b_enc_H: Tensor, pre_BH: Tensor, k: int,
                mask_H: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(acts_BK, idx_BK) from precomputed pre-activations; see sparse_topk_encode."""
    with torch.no_grad():
        scores_BH = pre_BH if mask_H is None else pre_BH.masked_fill(~mask_H, float("-inf"))
        top_BK, idx_BK = scores_BH.topk(k, dim=-1, sorted=False)
    # relu after the selection: relu is monotone, so the selected set is that of topk(relu(pre)).
    acts_BK = torch.relu(GatherPre.apply(x_BD, W_enc_DH, b_enc_H, idx_BK, top_BK))
    return acts_BK, idx_BK


def sparse_decode(acts_BK: Tensor, idx_BK: Tensor, W_dec_HD: Tensor) -> Tensor:
    """sum_j acts[b, j] * W_dec[idx[b, j]] (no bias), differentiable wrt acts and W_dec."""
    return SparseDecode.apply(acts_BK, idx_BK, W_dec_HD)
