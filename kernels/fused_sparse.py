"""Sparse TopK decoder kernels: x_hat = sum_j top_acts[:, j] * W_dec[top_indices[:, j]] + b_dec,
touching only the k selected rows of W_dec per example (never a (B, H) tensor).

    forward   gather k rows of W_dec per example, weighted sum, + b_dec
    g_acts    [b, j] = <g[b], W_dec[idx[b, j]]>        (gather, row dot products)
    g_W_dec   [idx[b, j]] += acts[b, j] * g[b]         (scatter with fp32 atomics)
    g_b_dec   = colsum(g)                              (same kernel, atomics)

The atomics make g_W_dec's summation order, hence its last bits, run-dependent.
Imports triton: loaded lazily by `ghosttrack.kernels.fused`.
"""

import torch
import triton
import triton.language as tl

from .fused_tiles import INTERPRET, cast, new_output

# No tl.dot here: plain vector work, one tile shape that suits both targets.
BLOCK_B = 16 if INTERPRET else 32
BLOCK_D = 32 if INTERPRET else 128


@triton.jit
def sparse_decode_kernel(acts_ptr, idx_ptr, w_ptr, b_ptr, out_ptr, B, D, K,
                         stride_ab, stride_ak, stride_ib, stride_ik, stride_wh, stride_wd,
                         BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRETED: tl.constexpr):
    """One (BLOCK_B, BLOCK_D) tile of x_hat; out is ours, contiguous (B, D)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask_d = offs_d < D
    mask = mask_b[:, None] & mask_d[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for j in range(0, K):
        idx = tl.load(idx_ptr + offs_b * stride_ib + j * stride_ik, mask=mask_b, other=0)
        a = tl.load(acts_ptr + offs_b * stride_ab + j * stride_ak, mask=mask_b, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None].to(tl.int64) * stride_wh + offs_d[None, :] * stride_wd,
                    mask=mask, other=0.0).to(tl.float32)
        acc += a[:, None] * w
    acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_b[:, None].to(tl.int64) * D + offs_d[None, :],
             cast(acc, out_ptr.dtype.element_ty, INTERPRETED), mask=mask)


@triton.jit
def sparse_grad_acts_kernel(g_ptr, idx_ptr, w_ptr, out_ptr, B, D, K,
                            stride_gb, stride_gd, stride_ib, stride_ik, stride_wh, stride_wd,
                            BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRETED: tl.constexpr):
    """g_acts[:, j] for one block of rows (program axis 1 is j); out is ours, contiguous (B, K)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    j = tl.program_id(1)
    mask_b = offs_b < B
    idx = tl.load(idx_ptr + offs_b * stride_ib + j * stride_ik, mask=mask_b, other=0)
    acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_b[:, None] & (offs_d[None, :] < D)
        g = tl.load(g_ptr + offs_b[:, None].to(tl.int64) * stride_gb + offs_d[None, :] * stride_gd,
                    mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None].to(tl.int64) * stride_wh + offs_d[None, :] * stride_wd,
                    mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(g * w, axis=1)
    tl.store(out_ptr + offs_b * K + j, cast(acc, out_ptr.dtype.element_ty, INTERPRETED), mask=mask_b)


@triton.jit
def sparse_grad_w_kernel(g_ptr, acts_ptr, idx_ptr, gw_ptr, gb_ptr, B, D, K,
                         stride_gb, stride_gd, stride_ab, stride_ak, stride_ib, stride_ik,
                         BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scatter-add acts[b, j] * g[b] into the fp32 (H, D) gw at row idx[b, j]; colsum(g) into gb."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask_d = offs_d < D
    mask = mask_b[:, None] & mask_d[None, :]
    g = tl.load(g_ptr + offs_b[:, None].to(tl.int64) * stride_gb + offs_d[None, :] * stride_gd,
                mask=mask, other=0.0).to(tl.float32)
    for j in range(0, K):
        idx = tl.load(idx_ptr + offs_b * stride_ib + j * stride_ik, mask=mask_b, other=0)
        a = tl.load(acts_ptr + offs_b * stride_ab + j * stride_ak, mask=mask_b, other=0.0).to(tl.float32)
        tl.atomic_add(gw_ptr + idx[:, None].to(tl.int64) * D + offs_d[None, :], a[:, None] * g, mask=mask)
    tl.atomic_add(gb_ptr + offs_d, tl.sum(g, axis=0), mask=mask_d)


def decode(top_acts_BK, top_indices_BK, W_dec_HD, b_dec_D):
    """x_hat (B, D) in top_acts' dtype."""
    (B, K), D = top_acts_BK.shape, W_dec_HD.shape[1]
    out = new_output((B, D), top_acts_BK.dtype, top_acts_BK.device)
    sparse_decode_kernel[(triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))](
        top_acts_BK, top_indices_BK, W_dec_HD, b_dec_D, out, B, D, K,
        top_acts_BK.stride(0), top_acts_BK.stride(1), top_indices_BK.stride(0), top_indices_BK.stride(1),
        W_dec_HD.stride(0), W_dec_HD.stride(1), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, INTERPRETED=INTERPRET,
    )
    return out


def backward(grad_BD, top_acts_BK, top_indices_BK, W_dec_HD, need_acts: bool, need_dec: bool):
    """-> (g_top_acts or None, g_W_dec or None, g_b_dec or None)."""
    (B, K), (H, D) = top_acts_BK.shape, W_dec_HD.shape
    dev = grad_BD.device
    g_acts = g_w = g_b = None
    if need_acts:
        g_acts = new_output((B, K), top_acts_BK.dtype, dev)
        sparse_grad_acts_kernel[(triton.cdiv(B, BLOCK_B), K)](
            grad_BD, top_indices_BK, W_dec_HD, g_acts, B, D, K,
            grad_BD.stride(0), grad_BD.stride(1), top_indices_BK.stride(0), top_indices_BK.stride(1),
            W_dec_HD.stride(0), W_dec_HD.stride(1), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, INTERPRETED=INTERPRET,
        )
    if need_dec:
        g_w = torch.zeros((H, D), dtype=torch.float32, device=dev)
        g_b = torch.zeros((D,), dtype=torch.float32, device=dev)
        sparse_grad_w_kernel[(triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))](
            grad_BD, top_acts_BK, top_indices_BK, g_w, g_b, B, D, K,
            grad_BD.stride(0), grad_BD.stride(1), top_acts_BK.stride(0), top_acts_BK.stride(1),
            top_indices_BK.stride(0), top_indices_BK.stride(1), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D,
        )
        g_w, g_b = g_w.to(W_dec_HD.dtype), g_b.to(W_dec_HD.dtype)
    return g_acts, g_w, g_b
