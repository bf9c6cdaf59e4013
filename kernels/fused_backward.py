"""Backward kernels of the fused SAE: four GEMMs, the elementwise work in their epilogues.

The forward kept diff = x_hat - x, colsum(acts) and colsum(diff). With c_mse, c_l1, c_l0 the
upstream gradients of mse, l1 and l0 (loss included) and B the batch size, the gradient wrt
x_hat is g_xhat = s_gy * gy with gy = diff and s_gy = 2 c_mse / B; the scalar is applied in
the epilogues, so every GEMM reads its operands straight from memory. (When the caller
also backpropagates through x_hat, gy is that sum, formed once, and s_gy = 1.)

    g_acts  = s_gy * gy @ W_dec^T + c_l1 / B * ||W_dec[h]|| (+ the caller's gradient wrt acts)
    g_pre   = g_acts * gate                                 (dacts_kernel, stored; its epilogue
    g_b_enc = colsum(g_pre)                                  also sums columns per row tile
    g_thr   = sum_b window * (-(thr / eps) g_acts - c_l0 / (B eps))     for these two)
    g_W_dec = s_gy * acts^T @ gy + c_l1 / B * colsum(acts) * W_dec / ||W_dec||   (dwdec_kernel)
    g_b_dec = s_gy * colsum(gy)                             (from the forward's colsum(diff))
    g_W_enc = x^T @ g_pre                                   (dwenc_kernel)
    g_x     = g_pre @ W_enc^T - 2 c_mse / B * diff          (dx_kernel, split-K like decode)

dW_dec and dW_enc are plain pipelined GEMMs: no column sum rides in their K loops. The four
scalars travel as one device tensor `coef` = (s_gy, c_l1 / B, c_l0 / B, 2 c_mse / B): no
host sync. Imports triton: loaded lazily by `ghosttrack.kernels.fused`.
"""

import torch
import triton
import triton.language as tl

from .fused_gemm import (cast, gemm_tile, offsets_2d, reduce_tile_ids, row_slot_ok, split_range, store_split,
                         sum_splits, tile_ids)
from .fused_tiles import (CONFIGS, INTERPRET, KEY, MAX_SPLIT_K, PRUNE, REDUCE_BLOCK_M, REDUCE_BLOCK_N, dot_precision,
                          grid, launch, max_tiles, new_output, tiles)


@triton.autotune(configs=CONFIGS["epilogue"], key=KEY, prune_configs_by=PRUNE)
@triton.jit
def dacts_kernel(
    gy_ptr, w_ptr, norm_ptr, acts_ptr, code_ptr, ga_ptr, thr_ptr, coef_ptr, gpre_ptr, thr_part_ptr, gb_part_ptr,
    M, N, K, n_rows, bandwidth,
    stride_wn, stride_wk, stride_gam, stride_gan,
    HAS_GA: tl.constexpr, HAS_THRESHOLD: tl.constexpr, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = batch, N = latents, K = d_model: g_pre (stored), and per row tile the column sums
    of g_pre (g_b_enc) and the threshold partials."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = gemm_tile(gy_ptr, w_ptr, offs_m, offs_n, M, N, 0, K, K, 1, stride_wk, stride_wn,
                    BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)

    mask_n = offs_n < N
    valid = (offs_m < M)[:, None] & mask_n[None, :]
    norm = tl.load(norm_ptr + offs_n, mask=mask_n, other=0.0)
    g_acts = tl.load(coef_ptr) * acc + tl.load(coef_ptr + 1) * norm[None, :]
    if HAS_GA:
        g_acts += tl.load(ga_ptr + offsets_2d(offs_m, offs_n, stride_gam, stride_gan), mask=valid,
                          other=0.0).to(tl.float32)
    bh_offs = offsets_2d(offs_m, offs_n, N, 1)
    part_offs = tl.cast(pid_m, tl.int64) * N + offs_n
    part_ok = mask_n & row_slot_ok(pid_m, offs_n, n_rows)
    if HAS_THRESHOLD:
        code = tl.load(code_ptr + bh_offs, mask=valid, other=0)
        # g_thr = sum_b window * (-(thr / eps) g_acts - c_l0 / (B eps)), from two column sums
        # (1-D work after the reductions keeps the epilogue's registers down).
        window = ((code & 2) != 0) & valid
        win_g = tl.sum(tl.where(window, g_acts, 0.0), axis=0)
        win_n = tl.sum(window.to(tl.float32), axis=0)
        thr = tl.load(thr_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        g_thr = win_g * (-thr / bandwidth) - tl.load(coef_ptr + 2) / bandwidth * win_n
        tl.store(thr_part_ptr + part_offs, g_thr, mask=part_ok)
        gate = ((code & 1) != 0) & valid
    else:
        acts = tl.load(acts_ptr + bh_offs, mask=valid, other=0.0)
        gate = (acts > 0.0) & valid
    g_pre = tl.where(gate, g_acts, 0.0)
    tl.store(gpre_ptr + bh_offs, cast(g_pre, gpre_ptr.dtype.element_ty, INTERPRETED), mask=valid)
    tl.store(gb_part_ptr + part_offs, tl.sum(g_pre, axis=0), mask=part_ok)


@triton.autotune(configs=CONFIGS["gemm"], key=KEY, prune_configs_by=PRUNE)
@triton.jit
def dwdec_kernel(
    acts_ptr, gy_ptr, w_ptr, norm_ptr, acts_sum_ptr, coef_ptr, gw_ptr,
    M, N, K,
    stride_wm, stride_wn,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = latents, N = d_model, K = batch: g_W_dec = s_gy * acts^T @ gy + the L1 term."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = gemm_tile(acts_ptr, gy_ptr, offs_m, offs_n, M, N, 0, K, 1, M, N, 1,
                    BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)

    mask_m = offs_m < M
    valid = mask_m[:, None] & (offs_n < N)[None, :]
    w = tl.load(w_ptr + offsets_2d(offs_m, offs_n, stride_wm, stride_wn), mask=valid, other=0.0).to(tl.float32)
    norm = tl.load(norm_ptr + offs_m, mask=mask_m, other=1.0)
    acts_sum = tl.load(acts_sum_ptr + offs_m, mask=mask_m, other=0.0)
    # d||w||/dw = w / ||w||, taken as 0 for an all-zero row (as torch does).
    unit = tl.where(norm[:, None] > 0.0, w / tl.where(norm > 0.0, norm, 1.0)[:, None], 0.0)
    g_w = tl.load(coef_ptr) * acc + tl.load(coef_ptr + 1) * acts_sum[:, None] * unit
    tl.store(gw_ptr + offsets_2d(offs_m, offs_n, N, 1), cast(g_w, gw_ptr.dtype.element_ty, INTERPRETED), mask=valid)


@triton.autotune(configs=CONFIGS["gemm"], key=KEY, prune_configs_by=PRUNE)
@triton.jit
def dwenc_kernel(
    x_ptr, gpre_ptr, gw_ptr,
    M, N, K,
    stride_xk, stride_xm,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = d_model, N = latents, K = batch: g_W_enc = x^T @ g_pre, a plain GEMM."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = gemm_tile(x_ptr, gpre_ptr, offs_m, offs_n, M, N, 0, K, stride_xm, stride_xk, N, 1,
                    BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
    valid = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(gw_ptr + offsets_2d(offs_m, offs_n, N, 1), cast(acc, gw_ptr.dtype.element_ty, INTERPRETED), mask=valid)


@triton.jit
def dx_epilogue(acc, offs_m, offs_n, M, N, diff_ptr, coef_ptr, gx_ptr, INTERPRETED: tl.constexpr):
    """g_x = acc - 2 c_mse / B * diff: x also enters the loss directly through (x - x_hat)^2."""
    valid = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    out = offsets_2d(offs_m, offs_n, N, 1)
    diff = tl.load(diff_ptr + out, mask=valid, other=0.0).to(tl.float32)
    g_x = acc - tl.load(coef_ptr + 3) * diff
    tl.store(gx_ptr + out, cast(g_x, gx_ptr.dtype.element_ty, INTERPRETED), mask=valid)


@triton.autotune(configs=CONFIGS["splitk"], key=KEY, prune_configs_by=PRUNE)
@triton.jit
def dx_kernel(
    gpre_ptr, w_ptr, diff_ptr, coef_ptr, gx_ptr, ws_ptr,
    M, N, K,
    stride_wn, stride_wk,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """M = batch, N = d_model, K = latents: g_x (W_enc is (N, K), read transposed), or split
    pid_k's partial product into the workspace (SPLIT_K > 1)."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if SPLIT_K == 1:
        acc = gemm_tile(gpre_ptr, w_ptr, offs_m, offs_n, M, N, 0, K, K, 1, stride_wk, stride_wn,
                        BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
        dx_epilogue(acc, offs_m, offs_n, M, N, diff_ptr, coef_ptr, gx_ptr, INTERPRETED)
    else:
        pid_k = tl.program_id(1)
        k_start, k_stop = split_range(K, pid_k, SPLIT_K, BLOCK_K)
        acc = gemm_tile(gpre_ptr, w_ptr, offs_m, offs_n, M, N, k_start, k_stop, K, 1, stride_wk, stride_wn,
                        BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
        store_split(ws_ptr, acc, pid_k, offs_m, offs_n, M, N)


@triton.jit
def dx_reduce_kernel(ws_ptr, diff_ptr, coef_ptr, gx_ptr, M, N,
                     SPLIT_K: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The split-K partial products summed in order, then dx's epilogue."""
    pid, pid_m, pid_n = reduce_tile_ids(N, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = sum_splits(ws_ptr, offs_m, offs_n, M, N, SPLIT_K, BLOCK_M, BLOCK_N)
    dx_epilogue(acc, offs_m, offs_n, M, N, diff_ptr, coef_ptr, gx_ptr, INTERPRETED)


def backward(x_BD, W_enc_DH, W_dec_HD, threshold_H, dec_norm_H, acts_BH, code_BH, diff_BD, acts_sum_H,
             diff_sum_D, coef_3, grad_x_hat, grad_acts, bandwidth: float, needs: dict[str, bool]) -> dict:
    """Gradients {name: tensor or None} for x, W_enc, b_enc, W_dec, b_dec, threshold.

    acts_sum_H, diff_sum_D: the forward's fp32 column sums of acts and diff. coef_3 =
    (c_mse, c_l1, c_l0), an fp32 device tensor; grad_x_hat and grad_acts are the caller's
    gradients wrt those outputs, or None; `needs` says which input gradients to compute
    (a frozen input costs no kernel).
    """
    (B, D), H = x_BD.shape, W_enc_DH.shape[1]
    dev, dtype, prec = x_BD.device, x_BD.dtype, dot_precision(x_BD.dtype)
    grads = dict.fromkeys(["x", "W_enc", "b_enc", "W_dec", "b_dec", "threshold"])
    s_mse = 2.0 * coef_3[0] / B
    if grad_x_hat is None:
        gy, s_gy, gy_sum_D = diff_BD, s_mse, diff_sum_D
    else:  # rare: someone backpropagates through x_hat too; one elementwise pass
        gy32 = s_mse * diff_BD.float() + grad_x_hat.float()
        gy, s_gy, gy_sum_D = gy32.to(dtype), torch.ones_like(s_mse), gy32.sum(0)
    coef = torch.stack([s_gy, coef_3[1] / B, coef_3[2] / B, s_mse]).float().contiguous()

    if needs["W_dec"]:
        grads["W_dec"] = new_output((H, D), dtype, dev)
        launch(dwdec_kernel, "gemm", grid(H, D), acts_BH, gy, W_dec_HD, dec_norm_H, acts_sum_H, coef,
               grads["W_dec"], H, D, B, W_dec_HD.stride(0), W_dec_HD.stride(1), INTERPRETED=INTERPRET, PRECISION=prec)
    if needs["b_dec"]:
        grads["b_dec"] = (s_gy * gy_sum_D).to(dtype)

    need_thr = threshold_H is not None and needs["threshold"]
    if not (needs["x"] or needs["W_enc"] or needs["b_enc"] or need_thr):
        return grads
    g_pre = new_output((B, H), dtype, dev)
    n_rows = max_tiles(B, H)[0]
    parts = new_output((2, n_rows, H), torch.float32, dev)  # g_b_enc, threshold
    ga = grad_acts if grad_acts is not None else acts_BH
    cfg = launch(
        dacts_kernel, "epilogue", grid(B, H),
        gy, W_dec_HD, dec_norm_H, acts_BH, code_BH if code_BH is not None else acts_BH, ga,
        threshold_H if threshold_H is not None else dec_norm_H, coef, g_pre, parts[1], parts[0],
        B, H, D, n_rows, float(bandwidth),
        W_dec_HD.stride(0), W_dec_HD.stride(1), ga.stride(0), ga.stride(1),
        HAS_GA=grad_acts is not None, HAS_THRESHOLD=threshold_H is not None, INTERPRETED=INTERPRET, PRECISION=prec,
    )
    used_rows = tiles(B, H, cfg["BLOCK_M"], cfg["BLOCK_N"])[0]
    if needs["b_enc"]:
        grads["b_enc"] = parts[0, :used_rows].sum(0).to(dtype)
    if need_thr:
        grads["threshold"] = parts[1, :used_rows].sum(0).to(threshold_H.dtype)
    if needs["W_enc"]:
        grads["W_enc"] = new_output((D, H), dtype, dev)
        launch(dwenc_kernel, "gemm", grid(D, H), x_BD, g_pre, grads["W_enc"], D, H, B,
               x_BD.stride(0), x_BD.stride(1), INTERPRETED=INTERPRET, PRECISION=prec)
    if needs["x"]:
        grads["x"] = new_output((B, D), dtype, dev)
        ws = new_output((MAX_SPLIT_K, B, D), torch.float32, dev)
        cfg = launch(dx_kernel, "splitk", grid(B, D), g_pre, W_enc_DH, diff_BD, coef, grads["x"], ws, B, D, H,
                     W_enc_DH.stride(0), W_enc_DH.stride(1), INTERPRETED=INTERPRET, PRECISION=prec)
        if cfg["SPLIT_K"] > 1:
            dx_reduce_kernel[(triton.cdiv(B, REDUCE_BLOCK_M) * triton.cdiv(D, REDUCE_BLOCK_N),)](
                ws, diff_BD, coef, grads["x"], B, D,
                SPLIT_K=cfg["SPLIT_K"], INTERPRETED=INTERPRET, BLOCK_M=REDUCE_BLOCK_M, BLOCK_N=REDUCE_BLOCK_N,
            )
    return grads
