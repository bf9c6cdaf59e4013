"""Tiling shared by the fused SAE kernels: autotune configs, tile order, the dot product.

Imports triton: only `ghosttrack.kernels.fused` imports this module, lazily.
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Read once, like triton.jit itself: the interpreter needs one config and fp32 dots."""


def _config(m: int, n: int, k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8},
                         num_warps=warps, num_stages=stages)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Tensor-core tiles for 16-bit and
# TF32 dots; exact fp32 dots run on the FMA units, where big tiles only spill registers.
TENSOR_CORE_SHAPES = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 3),
                      (128, 128, 32, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 3)]
FMA_SHAPES = [(128, 128, 16, 8, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (64, 64, 32, 4, 3)]


TENSOR_CORE_CONFIGS = [_config(*s) for s in TENSOR_CORE_SHAPES]
FMA_CONFIGS = [_config(*s) for s in FMA_SHAPES]


def gemm_configs() -> list[triton.Config]:
    """Tile shapes to autotune over on a GPU; exactly one under the interpreter, where
    multi-config autotuning fails (and where small tiles keep the numpy loops short)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4},
                              num_warps=4, num_stages=1)]
    return TENSOR_CORE_CONFIGS + FMA_CONFIGS


CONFIGS = gemm_configs()
MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in CONFIGS)
MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in CONFIGS)
KEY = ["M", "N", "K", "PRECISION"]
"""Autotune cache key (the autotuner adds the tensors' dtypes itself)."""


def prune_configs(configs, named_args, **kwargs):
    """Keep the tile family that fits the dot: FMA tiles for exact fp32, tensor-core ones else."""
    family = FMA_CONFIGS if kwargs.get("PRECISION") == "ieee" else TENSOR_CORE_CONFIGS
    return [c for c in configs if c in family] or configs


PRUNE = {"early_config_prune": prune_configs}


def max_tiles(M: int, N: int) -> tuple[int, int]:
    """Upper bounds on the tile-grid size over all configs: partial-sum buffers are
    allocated this big (and zeroed) before the autotuner has picked a config."""
    return triton.cdiv(M, MIN_BLOCK_M), triton.cdiv(N, MIN_BLOCK_N)


def grid(M: int, N: int):
    """Launch grid: one program per (BLOCK_M, BLOCK_N) output tile, in a 1-D order."""
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


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
def dot(a, b, acc, INTERPRETED: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation. INTERPRETED: upcast the operands first (the
    interpreter's half-precision dot is wrong); PRECISION: fp32 dots, "tf32" or "ieee"."""
    if INTERPRETED:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


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


POISON = os.environ.get("GHOSTTRACK_POISON") == "1"
"""Debug mode: fill every fresh output with NaN (ints with -1), so that an element a
kernel forgot to write shows up in the parity tests instead of passing by luck."""


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for a kernel's output (poisoned in debug mode, see POISON)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if dtype.is_floating_point else -1)
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's own matmul setting, so both paths are compared like for
    like: exact fp32 ("ieee") by default, TF32 after torch.set_float32_matmul_precision("high")."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"
