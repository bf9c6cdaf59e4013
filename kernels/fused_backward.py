"""Backward kernels of the fused SAE: four GEMMs, the elementwise work fused into them.

The forward kept diff = x_hat - x. With c_mse, c_l1, c_l0 the upstream gradients of
mse, l1 and l0 (loss included) and B the batch size, the gradient wrt x_hat is
g_xhat = s_gy * gy with gy = diff and s_gy = 2 c_mse / B; the scalar is applied in the
epilogues, so every GEMM reads its operands straight from memory. (When the caller
also backpropagates through x_hat, gy is that sum, formed once, and s_gy = 1.)

    g_acts  = s_gy * gy @ W_dec^T + c_l1 / B * ||W_dec[h]|| (+ the caller's gradient wrt acts)
    g_pre   = g_acts * gate                                          (dacts_kernel, stored)
    g_thr   = sum_b window * (-(thr / eps) g_acts - c_l0 / (B eps))   (dacts_kernel epilogue)
    g_W_dec = s_gy * acts^T @ gy + c_l1 / B * colsum(acts) * W_dec / ||W_dec||  (dwdec_kernel,
    g_b_dec = s_gy * colsum(gy)                                          same kernel)
    g_W_enc = x^T @ g_pre, g_b_enc = colsum(g_pre)                      (dwenc_kernel)
    g_x     = g_pre @ W_enc^T - 2 c_mse / B * diff                      (dx_kernel)

Column sums ride along the reduction loop of a GEMM that already loads the tiles and
are stored by the first row of programs only. The four scalars travel as one device
tensor `coef` = (s_gy, c_l1 / B, c_l0 / B, 2 c_mse / B): no host sync.
Imports triton: loaded lazily by `ghosttrack.kernels.fused`.
"""

import torch
import triton
import triton.language as tl

from .fused_tiles import (CONFIGS, INTERPRET, KEY, PRUNE, cast, dot, dot_precision, grid, max_tiles,
                          new_output, tile_ids)


@triton.jit
def first_row_of_programs(pid_m, offs_n):
    """pid_m == 0 as a vector like offs_n (the interpreter rejects a scalar-broadcast mask)."""
    return (pid_m + tl.zeros_like(offs_n)) == 0


@triton.autotune(configs=CONFIGS, key=KEY, prune_configs_by=PRUNE, reset_to_zero=["thr_part_ptr"])
@triton.jit
def dacts_kernel(
    gy_ptr, w_ptr, norm_ptr, acts_ptr, code_ptr, ga_ptr, thr_ptr, coef_ptr, gpre_ptr, thr_part_ptr,
    M, N, K, bandwidth,
    stride_wn, stride_wk, stride_gam, stride_gan,
    HAS_GA: tl.constexpr, HAS_THRESHOLD: tl.constexpr, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = batch, N = latents, K = d_model: g_pre (stored) and threshold partials per row tile."""
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
        g = tl.load(gy_ptr + rows[:, None] * K + kk[None, :],
                    mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        w_t = tl.load(w_ptr + offs_n[None, :].to(tl.int64) * stride_wn + kk[:, None] * stride_wk,
                      mask=(kk[:, None] < K) & mask_n[None, :], other=0.0)
        acc = dot(g, w_t, acc, INTERPRETED, PRECISION)

    valid = mask_m[:, None] & mask_n[None, :]
    norm = tl.load(norm_ptr + offs_n, mask=mask_n, other=0.0)
    g_acts = tl.load(coef_ptr) * acc + tl.load(coef_ptr + 1) * norm[None, :]
    if HAS_GA:
        g_acts += tl.load(ga_ptr + rows[:, None] * stride_gam + offs_n[None, :] * stride_gan,
                          mask=valid, other=0.0).to(tl.float32)
    bh_offs = rows[:, None] * N + offs_n[None, :]
    if HAS_THRESHOLD:
        code = tl.load(code_ptr + bh_offs, mask=valid, other=0)
        gate = ((code & 1) != 0) & valid
    else:
        acts = tl.load(acts_ptr + bh_offs, mask=valid, other=0.0)
        gate = (acts > 0.0) & valid
    g_pre = tl.where(gate, g_acts, 0.0)
    tl.store(gpre_ptr + bh_offs, cast(g_pre, gpre_ptr.dtype.element_ty, INTERPRETED), mask=valid)

    if HAS_THRESHOLD:
        window = ((code & 2) != 0) & valid
        thr = tl.load(thr_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        g_thr = g_acts * (-thr[None, :] / bandwidth) - tl.load(coef_ptr + 2) / bandwidth
        g_thr = tl.where(window, g_thr, 0.0)
        tl.store(thr_part_ptr + pid_m * N + offs_n, tl.sum(g_thr, axis=0), mask=mask_n)


@triton.autotune(configs=CONFIGS, key=KEY, prune_configs_by=PRUNE)
@triton.jit
def dwdec_kernel(
    acts_ptr, gy_ptr, w_ptr, norm_ptr, coef_ptr, gw_ptr, gb_ptr,
    M, N, K,
    stride_wm, stride_wn,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = latents, N = d_model, K = batch: g_W_dec, and g_b_dec from the pid_m == 0 programs."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acts_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    g_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a_t = tl.load(acts_ptr + kk[None, :].to(tl.int64) * M + offs_m[:, None],
                      mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        g = tl.load(gy_ptr + kk[:, None].to(tl.int64) * N + offs_n[None, :],
                    mask=(kk[:, None] < K) & mask_n[None, :], other=0.0)
        acts_sum += tl.sum(a_t.to(tl.float32), axis=1)
        g_sum += tl.sum(g.to(tl.float32), axis=0)
        acc = dot(a_t, g, acc, INTERPRETED, PRECISION)

    valid = mask_m[:, None] & mask_n[None, :]
    w = tl.load(w_ptr + offs_m[:, None].to(tl.int64) * stride_wm + offs_n[None, :] * stride_wn,
                mask=valid, other=0.0).to(tl.float32)
    norm = tl.load(norm_ptr + offs_m, mask=mask_m, other=1.0)
    # d||w||/dw = w / ||w||, taken as 0 for an all-zero row (as torch does).
    unit = tl.where(norm[:, None] > 0.0, w / tl.where(norm > 0.0, norm, 1.0)[:, None], 0.0)
    s_gy = tl.load(coef_ptr)
    g_w = s_gy * acc + tl.load(coef_ptr + 1) * acts_sum[:, None] * unit
    out = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(gw_ptr + out, cast(g_w, gw_ptr.dtype.element_ty, INTERPRETED), mask=valid)
    tl.store(gb_ptr + offs_n, cast((s_gy * g_sum), gb_ptr.dtype.element_ty, INTERPRETED),
             mask=mask_n & first_row_of_programs(pid_m, offs_n))


@triton.autotune(configs=CONFIGS, key=KEY, prune_configs_by=PRUNE)
@triton.jit
def dwenc_kernel(
    x_ptr, gpre_ptr, gw_ptr, gb_ptr,
    M, N, K,
    stride_xk, stride_xm,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = d_model, N = latents, K = batch: g_W_enc, and g_b_enc from the pid_m == 0 programs."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        x_t = tl.load(x_ptr + kk[None, :].to(tl.int64) * stride_xk + offs_m[:, None] * stride_xm,
                      mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        g = tl.load(gpre_ptr + kk[:, None].to(tl.int64) * N + offs_n[None, :],
                    mask=(kk[:, None] < K) & mask_n[None, :], other=0.0)
        g_sum += tl.sum(g.to(tl.float32), axis=0)
        acc = dot(x_t, g, acc, INTERPRETED, PRECISION)

    valid = mask_m[:, None] & mask_n[None, :]
    out = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(gw_ptr + out, cast(acc, gw_ptr.dtype.element_ty, INTERPRETED), mask=valid)
    tl.store(gb_ptr + offs_n, cast(g_sum, gb_ptr.dtype.element_ty, INTERPRETED),
             mask=mask_n & first_row_of_programs(pid_m, offs_n))


@triton.autotune(configs=CONFIGS, key=KEY, prune_configs_by=PRUNE)
@triton.jit
def dx_kernel(
    gpre_ptr, w_ptr, diff_ptr, coef_ptr, gx_ptr,
    M, N, K,
    stride_wn, stride_wk,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = batch, N = d_model, K = latents: g_x (W_enc is (N, K), read transposed)."""
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
        g = tl.load(gpre_ptr + rows[:, None] * K + kk[None, :],
                    mask=mask_m[:, None] & (kk[None, :] < K), other=0.0)
        w_t = tl.load(w_ptr + offs_n[None, :].to(tl.int64) * stride_wn + kk[:, None] * stride_wk,
                      mask=(kk[:, None] < K) & mask_n[None, :], other=0.0)
        acc = dot(g, w_t, acc, INTERPRETED, PRECISION)

    valid = mask_m[:, None] & mask_n[None, :]
    out = rows[:, None] * N + offs_n[None, :]
    # x also enters the loss directly through (x - x_hat)^2.
    diff = tl.load(diff_ptr + out, mask=valid, other=0.0).to(tl.float32)
    g_x = acc - tl.load(coef_ptr + 3) * diff
    tl.store(gx_ptr + out, cast(g_x, gx_ptr.dtype.element_ty, INTERPRETED), mask=valid)



def backward(x_BD, W_enc_DH, W_dec_HD, threshold_H, dec_norm_H, acts_BH, code_BH, diff_BD,
             coef_3, grad_x_hat, grad_acts, bandwidth: float, needs: dict[str, bool]) -> dict:
    """Gradients {name: tensor or None} for x, W_enc, b_enc, W_dec, b_dec, threshold.

    coef_3 = (c_mse, c_l1, c_l0), an fp32 device tensor; grad_x_hat and grad_acts are the
    caller's gradients wrt those outputs, or None; `needs` says which input gradients to
    compute (a frozen input costs no kernel).
    """
    (B, D), H = x_BD.shape, W_enc_DH.shape[1]
    dev, dtype, prec = x_BD.device, x_BD.dtype, dot_precision(x_BD.dtype)
    grads = dict.fromkeys(["x", "W_enc", "b_enc", "W_dec", "b_dec", "threshold"])
    s_mse = 2.0 * coef_3[0] / B
    if grad_x_hat is None:
        gy, s_gy = diff_BD, s_mse
    else:  # rare: someone backpropagates through x_hat too; one elementwise pass
        gy, s_gy = (s_mse * diff_BD.float() + grad_x_hat.float()).to(dtype), torch.ones_like(s_mse)
    coef = torch.stack([s_gy, coef_3[1] / B, coef_3[2] / B, s_mse]).float().contiguous()

    if needs["W_dec"] or needs["b_dec"]:
        grads["W_dec"] = new_output((H, D), dtype, dev)
        grads["b_dec"] = new_output((D,), dtype, dev)
        dwdec_kernel[grid(H, D)](
            acts_BH, gy, W_dec_HD, dec_norm_H, coef, grads["W_dec"], grads["b_dec"],
            H, D, B, W_dec_HD.stride(0), W_dec_HD.stride(1),
            INTERPRETED=INTERPRET, PRECISION=prec,
        )

    need_thr = threshold_H is not None and needs["threshold"]
    if not (needs["x"] or needs["W_enc"] or needs["b_enc"] or need_thr):
        return grads
    g_pre = new_output((B, H), dtype, dev)
    thr_part = torch.zeros((max_tiles(B, H)[0], H) if threshold_H is not None else (1,),
                           dtype=torch.float32, device=dev)
    ga = grad_acts if grad_acts is not None else acts_BH
    dacts_kernel[grid(B, H)](
        gy, W_dec_HD, dec_norm_H, acts_BH, code_BH if code_BH is not None else acts_BH, ga,
        threshold_H if threshold_H is not None else dec_norm_H, coef, g_pre, thr_part,
        B, H, D, float(bandwidth),
        W_dec_HD.stride(0), W_dec_HD.stride(1), ga.stride(0), ga.stride(1),
        HAS_GA=grad_acts is not None, HAS_THRESHOLD=threshold_H is not None,
        INTERPRETED=INTERPRET, PRECISION=prec,
    )
    if need_thr:
        grads["threshold"] = thr_part.sum(0).to(threshold_H.dtype)
    if needs["W_enc"] or needs["b_enc"]:
        grads["W_enc"] = new_output((D, H), dtype, dev)
        grads["b_enc"] = new_output((H,), dtype, dev)
        dwenc_kernel[grid(D, H)](
            x_BD, g_pre, grads["W_enc"], grads["b_enc"], D, H, B, x_BD.stride(0), x_BD.stride(1),
            INTERPRETED=INTERPRET, PRECISION=prec,
        )
    if needs["x"]:
        grads["x"] = new_output((B, D), dtype, dev)
        dx_kernel[grid(B, D)](
            g_pre, W_enc_DH, diff_BD, coef, grads["x"], B, D, H,
            W_enc_DH.stride(0), W_enc_DH.stride(1),
            INTERPRETED=INTERPRET, PRECISION=prec,
        )
    return grads
