"""Forward kernels of the fused SAE: two GEMMs with everything elementwise in their epilogues.

encode: pre = x @ W_enc + b_enc, then ReLU / JumpReLU, the activations stored once, per-tile
        partial sums of the L1 (acts * ||W_dec[h]||) and L0 terms, and per-row-tile column
        sums of acts (the backward's L1 term of g_W_dec needs colsum(acts): summed here, where
        the tile is in registers, dW_dec stays a plain GEMM). With a threshold, an int8 code
        per activation (bit 0: pre > threshold, bit 1: pre within the STE window) is all the
        backward needs of `pre`, so `pre` is never stored.
decode: x_hat = acts @ W_dec + b_dec, then diff = x_hat - x (the backward's operand), per-tile
        partial sums of diff^2 and per-row-tile column sums of diff (g_b_dec). K = H is long
        and the B x D output small, so decode may split K (SPLIT_K > 1): each split writes
        its fp32 partial product, `decode_reduce_kernel` adds them in split order and runs
        the same epilogue. The autotuner picks the split (1, 2 or 4) with the tile.

Partial sums go to one slot per program (deterministic, no atomics); the caller sums the
slots that the launched config wrote. Imports triton: loaded lazily by `ghosttrack.kernels.fused`.
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
def encode_kernel(
    x_ptr, w_ptr, b_ptr, thr_ptr, norm_ptr, acts_ptr, code_ptr, part_ptr, colsum_ptr,
    M, N, K, n_slots, n_rows, bandwidth,
    stride_xm, stride_xk, stride_wk, stride_wn, stride_am, stride_an,
    HAS_THRESHOLD: tl.constexpr, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """M = batch, N = latents, K = d_model. Writes acts (and code), part[pid] = L1 partial,
    part[n_slots + pid] = L0 partial, colsum[pid_m, :] = column sums of this tile's acts."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = gemm_tile(x_ptr, w_ptr, offs_m, offs_n, M, N, 0, K, stride_xm, stride_xk, stride_wk, stride_wn,
                    BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)

    mask_n = offs_n < N
    valid = (offs_m < M)[:, None] & mask_n[None, :]
    pre = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_THRESHOLD:
        thr = tl.load(thr_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        gate = (pre > thr) & valid
    else:
        gate = (pre > 0.0) & valid
    acts = cast(tl.where(gate, pre, 0.0), acts_ptr.dtype.element_ty, INTERPRETED)
    out_offs = offsets_2d(offs_m, offs_n, stride_am, stride_an)
    tl.store(acts_ptr + out_offs, acts, mask=valid)
    if HAS_THRESHOLD:  # first, so that pre and thr are dead before the reductions
        window = tl.abs((pre - thr) / bandwidth) < 0.5
        code = gate.to(tl.int8) + 2 * window.to(tl.int8)
        tl.store(code_ptr + out_offs, code, mask=valid)

    # Loss partials and column sums from the stored (rounded) activations, as the reference sees them.
    # The L1 partial from the column sums (sum_n ||W_dec[n]|| colsum[n]): 1-D work, fewer registers.
    colsum = tl.sum(acts.to(tl.float32), axis=0)
    norm = tl.load(norm_ptr + offs_n, mask=mask_n, other=0.0)
    slot_ok = pid < n_slots
    tl.store(part_ptr + pid, tl.sum(colsum * norm, axis=0), mask=slot_ok)
    tl.store(part_ptr + n_slots + pid, tl.sum(tl.sum(gate.to(tl.float32), axis=0), axis=0), mask=slot_ok)
    tl.store(colsum_ptr + tl.cast(pid_m, tl.int64) * N + offs_n, colsum, mask=mask_n & row_slot_ok(pid_m, offs_n, n_rows))


@triton.jit
def decode_epilogue(acc, pid, pid_m, offs_m, offs_n, M, N, b_ptr, x_ptr, xhat_ptr, diff_ptr, part_ptr, colsum_ptr,
                    n_slots, n_rows, stride_xm, stride_xn, INTERPRETED: tl.constexpr):
    """x_hat = acc + b_dec, diff = x_hat - x (x_hat and diff are ours, contiguous), the tile's
    sum of diff^2 into part[pid] and its column sums of diff into colsum[pid_m, :]."""
    mask_n = offs_n < N
    valid = (offs_m < M)[:, None] & mask_n[None, :]
    x_hat = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    x_hat = cast(x_hat, xhat_ptr.dtype.element_ty, INTERPRETED)
    out_offs = offsets_2d(offs_m, offs_n, N, 1)
    tl.store(xhat_ptr + out_offs, x_hat, mask=valid)
    x = tl.load(x_ptr + offsets_2d(offs_m, offs_n, stride_xm, stride_xn), mask=valid, other=0.0)
    # From the stored (rounded) x_hat, as the reference sees it.
    diff = tl.where(valid, x_hat.to(tl.float32) - x.to(tl.float32), 0.0)
    tl.store(diff_ptr + out_offs, cast(diff, diff_ptr.dtype.element_ty, INTERPRETED), mask=valid)
    tl.store(part_ptr + pid, tl.sum(tl.sum(diff * diff, axis=1), axis=0), mask=pid < n_slots)
    tl.store(colsum_ptr + tl.cast(pid_m, tl.int64) * N + offs_n, tl.sum(diff, axis=0),
             mask=mask_n & row_slot_ok(pid_m, offs_n, n_rows))


@triton.autotune(configs=CONFIGS["splitk"], key=KEY, prune_configs_by=PRUNE)
@triton.jit
def decode_kernel(
    acts_ptr, w_ptr, b_ptr, x_ptr, xhat_ptr, diff_ptr, part_ptr, colsum_ptr, ws_ptr,
    M, N, K, n_slots, n_rows,
    stride_am, stride_ak, stride_wk, stride_wn, stride_xm, stride_xn,
    INTERPRETED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """M = batch, N = d_model, K = latents: the epilogue (SPLIT_K = 1) or split pid_k's
    partial product into the workspace (SPLIT_K > 1, program axis 1 is the split)."""
    pid, pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if SPLIT_K == 1:
        acc = gemm_tile(acts_ptr, w_ptr, offs_m, offs_n, M, N, 0, K, stride_am, stride_ak, stride_wk, stride_wn,
                        BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
        decode_epilogue(acc, pid, pid_m, offs_m, offs_n, M, N, b_ptr, x_ptr, xhat_ptr, diff_ptr, part_ptr,
                        colsum_ptr, n_slots, n_rows, stride_xm, stride_xn, INTERPRETED)
    else:
        pid_k = tl.program_id(1)
        k_start, k_stop = split_range(K, pid_k, SPLIT_K, BLOCK_K)
        acc = gemm_tile(acts_ptr, w_ptr, offs_m, offs_n, M, N, k_start, k_stop, stride_am, stride_ak, stride_wk,
                        stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, INTERPRETED, PRECISION)
        store_split(ws_ptr, acc, pid_k, offs_m, offs_n, M, N)


@triton.jit
def decode_reduce_kernel(
    ws_ptr, b_ptr, x_ptr, xhat_ptr, diff_ptr, part_ptr, colsum_ptr,
    M, N, n_slots, n_rows, stride_xm, stride_xn,
    SPLIT_K: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The split-K partial products summed in order, then decode's epilogue."""
    pid, pid_m, pid_n = reduce_tile_ids(N, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = sum_splits(ws_ptr, offs_m, offs_n, M, N, SPLIT_K, BLOCK_M, BLOCK_N)
    decode_epilogue(acc, pid, pid_m, offs_m, offs_n, M, N, b_ptr, x_ptr, xhat_ptr, diff_ptr, part_ptr,
                    colsum_ptr, n_slots, n_rows, stride_xm, stride_xn, INTERPRETED)


def encode(x_BD: torch.Tensor, W_enc_DH: torch.Tensor, b_enc_H: torch.Tensor,
           threshold_H: torch.Tensor | None, dec_norm_H: torch.Tensor, bandwidth: float):
    """-> (acts_BH, code_BH or None, l1 summed over rows, l0 summed over rows, colsum(acts) (H,) fp32)."""
    (B, D), H = x_BD.shape, W_enc_DH.shape[1]
    dev = x_BD.device
    acts = new_output((B, H), x_BD.dtype, dev)
    code = new_output((B, H), torch.int8, dev) if threshold_H is not None else None
    n_rows, tiles_n = max_tiles(B, H)
    n_slots = n_rows * tiles_n
    part = new_output((2, n_slots), torch.float32, dev)
    colsum = new_output((n_rows, H), torch.float32, dev)
    cfg = launch(
        encode_kernel, "epilogue", grid(B, H),
        x_BD, W_enc_DH, b_enc_H, threshold_H if threshold_H is not None else b_enc_H,
        dec_norm_H, acts, code if code is not None else acts, part, colsum,
        B, H, D, n_slots, n_rows, float(bandwidth),
        x_BD.stride(0), x_BD.stride(1), W_enc_DH.stride(0), W_enc_DH.stride(1), acts.stride(0), acts.stride(1),
        HAS_THRESHOLD=threshold_H is not None, INTERPRETED=INTERPRET, PRECISION=dot_precision(x_BD.dtype),
    )
    used_m, used_n = tiles(B, H, cfg["BLOCK_M"], cfg["BLOCK_N"])
    sums = part[:, :used_m * used_n].sum(1)
    return acts, code, sums[0], sums[1], colsum[:used_m].sum(0)


def decode(acts_BH: torch.Tensor, W_dec_HD: torch.Tensor, b_dec_D: torch.Tensor, x_BD: torch.Tensor):
    """-> (x_hat_BD, diff_BD = x_hat - x, sum over rows of the squared error, colsum(diff) (D,) fp32)."""
    (B, H), D = acts_BH.shape, W_dec_HD.shape[1]
    dev = x_BD.device
    x_hat = new_output((B, D), x_BD.dtype, dev)
    diff = new_output((B, D), x_BD.dtype, dev)
    n_rows, tiles_n = max_tiles(B, D)
    n_slots = n_rows * tiles_n
    part = new_output((n_slots,), torch.float32, dev)
    colsum = new_output((n_rows, D), torch.float32, dev)
    ws = new_output((MAX_SPLIT_K, B, D), torch.float32, dev)
    epilogue_args = (b_dec_D, x_BD, x_hat, diff, part, colsum)
    cfg = launch(
        decode_kernel, "splitk", grid(B, D),
        acts_BH, W_dec_HD, *epilogue_args, ws, B, D, H, n_slots, n_rows,
        acts_BH.stride(0), acts_BH.stride(1), W_dec_HD.stride(0), W_dec_HD.stride(1), x_BD.stride(0), x_BD.stride(1),
        INTERPRETED=INTERPRET, PRECISION=dot_precision(x_BD.dtype),
    )
    block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    if cfg["SPLIT_K"] > 1:
        block_m, block_n = REDUCE_BLOCK_M, REDUCE_BLOCK_N
        decode_reduce_kernel[(triton.cdiv(B, block_m) * triton.cdiv(D, block_n),)](
            ws, *epilogue_args, B, D, n_slots, n_rows, x_BD.stride(0), x_BD.stride(1),
            SPLIT_K=cfg["SPLIT_K"], INTERPRETED=INTERPRET, BLOCK_M=block_m, BLOCK_N=block_n,
        )
    used_m, used_n = tiles(B, D, block_m, block_n)
    return x_hat, diff, part[:used_m * used_n].sum(), colsum[:used_m].sum(0)
