"""Sparse TopK kernels: only the k selected latents of each row get work (never a (B, H) tensor).

    gather_decode   out[b] = sum_j vals[b, j] * W[idx[b, j]] (+ bias)   the decoder; with
                    W = W_enc^T also the encoder's gradient wrt x
    row_dots        out[b, j] = <g[b], W[idx[b, j]]>                    gradient wrt vals
    segment_rows    out[h] = sum_{(b, j): idx[b, j] = h} vals[b, j] * dense[b]   gradient wrt
                    W_dec (dense = g) and W_enc^T (dense = x), and sum of vals per h (biases)

segment_rows is deterministic: the (b, j) pairs are sorted by latent once (a stable sort on
the device, no host sync), and one program per (latent, column block) adds its segment in
that order and writes its row, zeros included: no float atomics, no zero-fill, the same bits
on every run (as OpenAI's and sparsify's sparse kernels do it).
Imports triton: loaded lazily by `ghosttrack.kernels.fused` and `ghosttrack.kernels.topk_sparse`.
"""

import torch
import triton
import triton.language as tl

from .fused_gemm import cast
from .fused_tiles import INTERPRET, new_output

# No tl.dot here: plain vector work, one tile shape that suits both targets.
BLOCK_B = 16 if INTERPRET else 32
BLOCK_D = 32 if INTERPRET else 128
BLOCK_E = 16 if INTERPRET else 32
"""Segment entries added per step of segment_rows."""


@triton.jit
def sparse_decode_kernel(acts_ptr, idx_ptr, w_ptr, b_ptr, out_ptr, B, D, K,
                         stride_ab, stride_ak, stride_ib, stride_ik, stride_wh, stride_wd,
                         HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                         INTERPRETED: tl.constexpr):
    """One (BLOCK_B, BLOCK_D) tile of out; out is ours, contiguous (B, D)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask_d = offs_d < D
    mask = mask_b[:, None] & mask_d[None, :]
    rows_b = offs_b.to(tl.int64)
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for j in range(0, K):
        idx = tl.load(idx_ptr + rows_b * stride_ib + j * stride_ik, mask=mask_b, other=0)
        a = tl.load(acts_ptr + rows_b * stride_ab + j * stride_ak, mask=mask_b, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None].to(tl.int64) * stride_wh + offs_d[None, :].to(tl.int64) * stride_wd,
                    mask=mask, other=0.0).to(tl.float32)
        acc += a[:, None] * w
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows_b[:, None] * D + offs_d[None, :], cast(acc, out_ptr.dtype.element_ty, INTERPRETED),
             mask=mask)


@triton.jit
def sparse_grad_acts_kernel(g_ptr, idx_ptr, w_ptr, out_ptr, B, D, K,
                            stride_gb, stride_gd, stride_ib, stride_ik, stride_wh, stride_wd,
                            BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRETED: tl.constexpr):
    """out[:, j] for one block of rows (program axis 1 is j); out is ours, contiguous (B, K)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    j = tl.program_id(1)
    mask_b = offs_b < B
    rows_b = offs_b.to(tl.int64)
    idx = tl.load(idx_ptr + rows_b * stride_ib + j * stride_ik, mask=mask_b, other=0)
    acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_b[:, None] & (offs_d[None, :] < D)
        g = tl.load(g_ptr + rows_b[:, None] * stride_gb + offs_d[None, :].to(tl.int64) * stride_gd,
                    mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None].to(tl.int64) * stride_wh + offs_d[None, :].to(tl.int64) * stride_wd,
                    mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(g * w, axis=1)
    tl.store(out_ptr + rows_b * K + j, cast(acc, out_ptr.dtype.element_ty, INTERPRETED), mask=mask_b)


@triton.jit
def segment_rows_kernel(order_ptr, seg_ptr, vals_ptr, dense_ptr, out32_ptr, vsum_ptr, N, K,
                        stride_db, stride_dn,
                        WANT_SUMS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row h (program axis 0) of out, columns of block axis 1: the entries order[seg[h]:seg[h+1]]
    (flat (b, j) positions sorted by latent) added in that order; out and vsum are fp32."""
    h = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < N
    start = tl.load(seg_ptr + h)
    stop = tl.load(seg_ptr + h + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    vsum = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for e0 in range(start, stop, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        in_seg = e < stop
        flat = tl.load(order_ptr + e, mask=in_seg, other=0)
        v = tl.load(vals_ptr + flat, mask=in_seg, other=0.0).to(tl.float32)
        rows = tl.load(dense_ptr + (flat // K)[:, None] * stride_db + offs_d[None, :].to(tl.int64) * stride_dn,
                       mask=in_seg[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(v[:, None] * rows, axis=0)
        vsum += v
    tl.store(out32_ptr + tl.cast(h, tl.int64) * N + offs_d, acc, mask=mask_d)
    if WANT_SUMS:
        if tl.program_id(1) == 0:
            tl.store(vsum_ptr + h, tl.sum(vsum, axis=0))


def gather_decode(vals_BK, idx_BK, W_HD, bias_D=None):
    """(B, D) = sum_j vals[b, j] * W[idx[b, j]] (+ bias), in vals' dtype; W may be any strided view."""
    (B, K), D = vals_BK.shape, W_HD.shape[1]
    out = new_output((B, D), vals_BK.dtype, vals_BK.device)
    sparse_decode_kernel[(triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))](
        vals_BK, idx_BK, W_HD, bias_D if bias_D is not None else W_HD, out, B, D, K,
        vals_BK.stride(0), vals_BK.stride(1), idx_BK.stride(0), idx_BK.stride(1), W_HD.stride(0), W_HD.stride(1),
        HAS_BIAS=bias_D is not None, BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, INTERPRETED=INTERPRET,
    )
    return out


def row_dots(g_BD, W_HD, idx_BK, dtype):
    """(B, K) out[b, j] = <g[b], W[idx[b, j]]> in dtype."""
    (B, K), D = idx_BK.shape, g_BD.shape[1]
    out = new_output((B, K), dtype, g_BD.device)
    sparse_grad_acts_kernel[(triton.cdiv(B, BLOCK_B), K)](
        g_BD, idx_BK, W_HD, out, B, D, K, g_BD.stride(0), g_BD.stride(1), idx_BK.stride(0), idx_BK.stride(1),
        W_HD.stride(0), W_HD.stride(1), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, INTERPRETED=INTERPRET,
    )
    return out


def segment_rows(idx_BK, vals_BK, dense_BN, n_latents: int, want_sums: bool = False):
    """(out (H, N) fp32, vsum (H,) fp32 or None): out[h] = sum over (b, j) with idx[b, j] = h of
    vals[b, j] * dense[b], vsum[h] = sum of those vals; deterministic (module docstring)."""
    B, K = idx_BK.shape
    N = dense_BN.shape[1]
    flat_idx = idx_BK.reshape(-1)
    order = torch.argsort(flat_idx, stable=True)
    seg = torch.searchsorted(flat_idx[order], torch.arange(n_latents + 1, device=flat_idx.device))
    vals = vals_BK.contiguous()
    out = new_output((n_latents, N), torch.float32, dense_BN.device)
    vsum = new_output((n_latents,), torch.float32, dense_BN.device) if want_sums else None
    segment_rows_kernel[(n_latents, triton.cdiv(N, BLOCK_D))](
        order, seg, vals, dense_BN, out, vsum if want_sums else out, N, K, dense_BN.stride(0), dense_BN.stride(1),
        WANT_SUMS=want_sums, BLOCK_E=BLOCK_E, BLOCK_D=BLOCK_D,
    )
    return out, vsum


def decode(top_acts_BK, top_indices_BK, W_dec_HD, b_dec_D):
    """x_hat (B, D) in top_acts' dtype."""
    return gather_decode(top_acts_BK, top_indices_BK, W_dec_HD, b_dec_D)


def backward(grad_BD, top_acts_BK, top_indices_BK, W_dec_HD, need_acts: bool, need_dec: bool):
    """-> (g_top_acts or None, g_W_dec or None, g_b_dec or None), deterministic."""
    g_acts = g_w = g_b = None
    if need_acts:
        g_acts = row_dots(grad_BD, W_dec_HD, top_indices_BK, top_acts_BK.dtype)
    if need_dec:
        g_w = segment_rows(top_indices_BK, top_acts_BK, grad_BD, W_dec_HD.shape[0])[0].to(W_dec_HD.dtype)
        g_b = grad_BD.float().sum(0).to(W_dec_HD.dtype)
    return g_acts, g_w, g_b


def aot_specs():
    """(jit fn, constexprs, config) of each kernel here, for `fused_aot`."""
    cfg = triton.Config({}, num_warps=4, num_stages=3)
    common = {"BLOCK_D": BLOCK_D}
    return [(sparse_decode_kernel, {**common, "BLOCK_B": BLOCK_B, "HAS_BIAS": True, "INTERPRETED": False}, cfg),
            (sparse_grad_acts_kernel, {**common, "BLOCK_B": BLOCK_B, "INTERPRETED": False}, cfg),
            (segment_rows_kernel, {**common, "BLOCK_E": BLOCK_E, "WANT_SUMS": True}, cfg)]
