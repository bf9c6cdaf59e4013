"""Forward kernels of the fused SAE: two GEMMs with everything elementwise in their epilogues.

encode: pre = x @ W_enc + b_enc, then ReLU / JumpReLU, the activations stored once, and
        per-tile partial sums of the L1 (acts * ||W_dec[h]||) and L0 terms. With a
        threshold, an int8 code per activation (bit 0: pre > threshold, bit 1: pre within
        the STE window) is all the backward needs of `pre`, so `pre` is never stored.
decode: x_hat = acts @ W_dec + b_dec, then diff = x_hat - x (kept for the backward, a
        (B, D) tensor) and per-tile partial sums of diff^2.

Partial sums go to one slot per program (deterministic, no atomics); the caller sums
the slots. Imports triton: only `ghosttrack.kernels.fused` imports this module, lazily.
"""

import torch
import triton
import triton.language as tl

from .fused_tiles import (CONFIGS, INTERPRET, KEY, PRUNE, cast, dot, dot_precision, grid, max_tiles,
                          new_output, tile_ids)


@triton.autotune(configs=CONFIGS, key=KEY, prune_configs_by=PRUNE, reset_to_zero=["part_ptr"])
@triton.jit
def encode_kernel(
    x_ptr, w_ptr, b_ptr, thr_ptr, norm_ptr, acts_ptr, code_ptr, part_ptr,
    M, N, K, n_slots, bandwidth,
    stride_xm, stride_xk, stride_wk, stride_wn, stride_am, stride_an,
    HAS_THRESHOLD: tl.constexpr, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = batch, N = latents, K = d_model. Writes acts (and code), and part[pid] = L1
    partial, part[n_slots + pid] = L0 partial."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows = offs_m.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        b = tl.load(w_ptr + kk[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                    mask=(kk[:, None] < K) & mask_n[None, :], other=0.0)
        acc = dot(a, b, acc, INTERPRETED, PRECISION)

    valid = mask_m[:, None] & mask_n[None, :]
    pre = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_THRESHOLD:
        thr = tl.load(thr_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        gate = (pre > thr) & valid
    else:
        gate = (pre > 0.0) & valid
    acts = cast(tl.where(gate, pre, 0.0), acts_ptr.dtype.element_ty, INTERPRETED)
    out_offs = rows[:, None] * stride_am + offs_n[None, :] * stride_an
    tl.store(acts_ptr + out_offs, acts, mask=valid)

    # Loss partials from the stored (rounded) activations, as the reference sees them.
    norm = tl.load(norm_ptr + offs_n, mask=mask_n, other=0.0)
    tl.store(part_ptr + pid, tl.sum(tl.sum(acts.to(tl.float32) * norm[None, :], axis=1), axis=0))
    tl.store(part_ptr + n_slots + pid, tl.sum(tl.sum(gate.to(tl.float32), axis=1), axis=0))
    if HAS_THRESHOLD:
        window = tl.abs((pre - thr) / bandwidth) < 0.5
        code = gate.to(tl.int8) + 2 * window.to(tl.int8)
        tl.store(code_ptr + out_offs, code, mask=valid)


@triton.autotune(configs=CONFIGS, key=KEY, prune_configs_by=PRUNE, reset_to_zero=["part_ptr"])
@triton.jit
def decode_kernel(
    acts_ptr, w_ptr, b_ptr, x_ptr, xhat_ptr, diff_ptr, part_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wk, stride_wn, stride_xm, stride_xn,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = batch, N = d_model, K = latents. Writes x_hat, diff = x_hat - x (the backward's
    operand; x_hat and diff are ours, contiguous) and part[pid] = sum of diff^2."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows = offs_m.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(acts_ptr + rows[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        b = tl.load(w_ptr + kk[:, None].to(tl.int64) * stride_wk + offs_n[None, :] * stride_wn,
                    mask=(kk[:, None] < K) & mask_n[None, :], other=0.0)
        acc = dot(a, b, acc, INTERPRETED, PRECISION)

    valid = mask_m[:, None] & mask_n[None, :]
    x_hat = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    x_hat = cast(x_hat, xhat_ptr.dtype.element_ty, INTERPRETED)
    out_offs = rows[:, None] * N + offs_n[None, :]
    tl.store(xhat_ptr + out_offs, x_hat, mask=valid)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_n[None, :] * stride_xn, mask=valid, other=0.0)
    # From the stored (rounded) x_hat, as the reference sees it.
    diff = tl.where(valid, x_hat.to(tl.float32) - x.to(tl.float32), 0.0)
    tl.store(diff_ptr + out_offs, cast(diff, diff_ptr.dtype.element_ty, INTERPRETED), mask=valid)
    tl.store(part_ptr + pid, tl.sum(tl.sum(diff * diff, axis=1), axis=0))


def encode(x_BD: torch.Tensor, W_enc_DH: torch.Tensor, b_enc_H: torch.Tensor,
           threshold_H: torch.Tensor | None, dec_norm_H: torch.Tensor, bandwidth: float):
    """-> (acts_BH, code_BH or None, l1 summed over all rows, l0 summed over all rows)."""
    (B, D), H = x_BD.shape, W_enc_DH.shape[1]
    acts = new_output((B, H), x_BD.dtype, x_BD.device)
    code = new_output((B, H), torch.int8, x_BD.device) if threshold_H is not None else None
    tiles_m, tiles_n = max_tiles(B, H)
    n_slots = tiles_m * tiles_n
    part = torch.zeros(2 * n_slots, dtype=torch.float32, device=x_BD.device)
    encode_kernel[grid(B, H)](
        x_BD, W_enc_DH, b_enc_H, threshold_H if threshold_H is not None else b_enc_H,
        dec_norm_H, acts, code if code is not None else acts, part,
        B, H, D, n_slots, float(bandwidth),
        x_BD.stride(0), x_BD.stride(1), W_enc_DH.stride(0), W_enc_DH.stride(1),
        acts.stride(0), acts.stride(1),
        HAS_THRESHOLD=threshold_H is not None, INTERPRETED=INTERPRET,
        PRECISION=dot_precision(x_BD.dtype),
    )
    sums = part.view(2, n_slots).sum(1)
    return acts, code, sums[0], sums[1]


def decode(acts_BH: torch.Tensor, W_dec_HD: torch.Tensor, b_dec_D: torch.Tensor,
           x_BD: torch.Tensor):
    """-> (x_hat_BD, diff_BD = x_hat - x, sum over all rows of the squared error)."""
    (B, H), D = acts_BH.shape, W_dec_HD.shape[1]
    x_hat = new_output((B, D), x_BD.dtype, x_BD.device)
    diff = new_output((B, D), x_BD.dtype, x_BD.device)
    tiles_m, tiles_n = max_tiles(B, D)
    part = torch.zeros(tiles_m * tiles_n, dtype=torch.float32, device=x_BD.device)
    decode_kernel[grid(B, D)](
        acts_BH, W_dec_HD, b_dec_D, x_BD, x_hat, diff, part,
        B, D, H,
        acts_BH.stride(0), acts_BH.stride(1), W_dec_HD.stride(0), W_dec_HD.stride(1),
        x_BD.stride(0), x_BD.stride(1),
        INTERPRETED=INTERPRET, PRECISION=dot_precision(x_BD.dtype),
    )
    return x_hat, diff, part.sum()
