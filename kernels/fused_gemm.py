"""The Triton pieces every fused SAE kernel shares: tile order, int64 offsets, the GEMM
main loop (one `@triton.jit` helper, not a copy per kernel), split-K ranges, the dot and
the rounding casts.

Offsets are int64 throughout: with int32, `k * stride` overflows once a matrix spans 2^31
elements (W_enc of 2304 x 1M latents), and the wrapped address reads someone else's memory.
Imports triton: only `ghosttrack.kernels.fused` imports this module, lazily.
"""

import triton
import triton.language as tl


@triton.jit
def tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid, pid_m, pid_n) of this program. Consecutive programs walk GROUP_M row tiles
    before moving to the next column tile, so the operands they share stay in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid, pid_m, pid_n


@triton.jit
def offsets_2d(rows, cols, stride_r, stride_c):
    """int64 element offsets rows[:, None] * stride_r + cols[None, :] * stride_c."""
    return tl.cast(rows, tl.int64)[:, None] * stride_r + tl.cast(cols, tl.int64)[None, :] * stride_c


@triton.jit
def dot(a, b, acc, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation. INTERPRETED: upcast the operands first (the
    interpreter's half-precision dot is wrong); PRECISION: fp32 dots, "tf32" or "ieee"."""
    if INTERPRETED:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def gemm_tile(a_ptr, b_ptr, offs_m, offs_n, M, N, k_start, k_stop,
              stride_am, stride_ak, stride_bk, stride_bn,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              INTERPRETED: tl.constexpr, PRECISION: tl.constexpr):
    """The main loop: A[offs_m, k_start:k_stop] @ B[k_start:k_stop, offs_n] as a
    (BLOCK_M, BLOCK_N) fp32 tile. Any strides (transposed operands are strides swapped);
    rows, columns and k outside the matrices read as zeros."""
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_stop, BLOCK_K):
        kk = k0 + offs_k
        in_k = kk < k_stop
        a = tl.load(a_ptr + offsets_2d(offs_m, kk, stride_am, stride_ak),
                    mask=mask_m[:, None] & in_k[None, :], other=0.0)
        b = tl.load(b_ptr + offsets_2d(kk, offs_n, stride_bk, stride_bn),
                    mask=in_k[:, None] & mask_n[None, :], other=0.0)
        acc = dot(a, b, acc, INTERPRETED, PRECISION)
    return acc


@triton.jit
def split_range(K, pid_k, SPLIT_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """[k_start, k_stop) of split pid_k: whole BLOCK_K steps, the last splits possibly empty."""
    per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = pid_k * per_split
    return k_start, tl.minimum(k_start + per_split, K)


@triton.jit
def store_split(ws_ptr, acc, pid_k, offs_m, offs_n, M, N):
    """Write split pid_k's fp32 partial product into the (SPLIT_K, M, N) workspace."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    base = tl.cast(pid_k, tl.int64) * M * N
    tl.store(ws_ptr + base + offsets_2d(offs_m, offs_n, N, 1), acc, mask=mask)


@triton.jit
def sum_splits(ws_ptr, offs_m, offs_n, M, N, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The splits' partial products summed in split order (deterministic, no atomics)."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    offs = offsets_2d(offs_m, offs_n, N, 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + s * tl.cast(M, tl.int64) * N + offs, mask=mask, other=0.0)
    return acc


@triton.jit
def reduce_tile_ids(N, BLOCK_N: tl.constexpr):
    """(pid, pid_m, pid_n) in plain row-major order, for the split-K reduction kernels."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    return pid, pid // num_n, pid % num_n


@triton.jit
def row_slot_ok(pid_m, offs_n, n_rows):
    """pid_m < n_rows as a vector like offs_n (the interpreter rejects a scalar-broadcast
    mask): partial-sum rows past the buffer are dropped, never written out of bounds."""
    return (pid_m + tl.zeros_like(offs_n)) < n_rows


@triton.jit
def cast(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """x (fp32) rounded to dtype to nearest even, as the GPU does. The interpreter truncates
    fp32 -> bf16 (a bias toward zero), so there the rounding is done on the bits."""
    if INTERPRETED and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)
