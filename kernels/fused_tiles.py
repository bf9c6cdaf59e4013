"""Tile configurations of the fused SAE kernels and how they are launched.

Three families, picked per call from the operands' dtype and the fp32 dot precision:
  16-bit  bf16/fp16 operands on tensor cores (wgmma on sm_90, mma on sm_80)
  tf32    fp32 operands on tensor cores in TF32: the same bytes per K step, so BLOCK_K is halved
  ieee    exact fp32 dots on the FMA units, where big tiles only spill registers
Three roles: "epilogue" (encode and dacts, whose JumpReLU epilogues need the most registers),
"gemm" (dW_dec, dW_enc) and "splitk" (decode and dx: a B x D output with K = H, too few
output tiles to fill the GPU at B = 4096, D = 768, so their configs add SPLIT_K = 2, 4 and
the partial products are summed in a fixed order).

Every config is compiled for sm_90 and sm_80 by `fused_aot` (no register spills, shared
memory within the limit: tests/kernels/test_fused_compile.py) and run under the Triton
interpreter on shapes with partial tiles (tests/kernels/test_fused_configs.py, through
`FORCED`). Imports triton: only `ghosttrack.kernels.fused` imports this module, lazily.
"""

from __future__ import annotations

import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Read once, like triton.jit itself: the interpreter runs one small config and fp32 dots."""


def _config(m: int, n: int, k: int, warps: int, stages: int, split_k: int | None = None) -> triton.Config:
    kwargs = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}
    if split_k is not None:
        kwargs["SPLIT_K"] = split_k
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per family. At most 64 accumulator
# registers a thread (128 x 256 at 8 warps, or 128 x 128 at 4, spill); fused_aot measures it
# (tests/kernels/test_fused_compile.py).
SHAPES = {
    "16bit": [(128, 128, 64, 8, 4), (64, 128, 64, 8, 4), (128, 64, 64, 8, 4), (64, 64, 64, 4, 4)],
    "tf32": [(128, 128, 32, 8, 4), (64, 128, 32, 8, 4), (128, 64, 32, 8, 4), (64, 64, 32, 4, 4)],
    "ieee": [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3)],
}
SPILLS_IN_EPILOGUE = {"16bit": (128, 128, 64, 8, 4), "tf32": (128, 128, 32, 8, 4), "ieee": (64, 128, 32, 8, 3)}
"""The shape the heavy JumpReLU epilogues of encode and dacts spill in (sm_90 or sm_80): not theirs."""
SPLITS = (2, 4)
"""Split-K factors tried for decode and dx on the first two shapes of each family."""
FAMILIES = tuple(SHAPES)
ROLES = ("epilogue", "gemm", "splitk")


def family_configs(role: str, family: str) -> list[triton.Config]:
    """The GPU configs of one role and family (what the autotuner picks from)."""
    shapes = SHAPES[family]
    if role == "epilogue":
        return [_config(*s) for s in shapes if s != SPILLS_IN_EPILOGUE[family]]
    if role == "gemm":
        return [_config(*s) for s in shapes]
    return [_config(*s, split_k=1) for s in shapes] + [_config(*s, split_k=k) for s in shapes[:2] for k in SPLITS]


GPU_CONFIGS = {role: [c for f in FAMILIES for c in family_configs(role, f)] for role in ROLES}
INTERPRETER_CONFIGS = {
    # Multi-config autotuning does not run under the interpreter: one small config there
    # (tests force every GPU config through FORCED instead).
    "epilogue": [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)],
    "gemm": [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)],
    "splitk": [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "SPLIT_K": 2},
                             num_warps=4, num_stages=1)],
}
CONFIGS = INTERPRETER_CONFIGS if INTERPRET else GPU_CONFIGS
REDUCE_BLOCK_M, REDUCE_BLOCK_N = 32, 128
"""Tile of the split-K reduction kernels (elementwise: a fixed shape is enough)."""

_ALL = [c for cs in (*GPU_CONFIGS.values(), *INTERPRETER_CONFIGS.values()) for c in cs]
MIN_BLOCK_M = min([c.kwargs["BLOCK_M"] for c in _ALL] + [REDUCE_BLOCK_M])
MIN_BLOCK_N = min([c.kwargs["BLOCK_N"] for c in _ALL] + [REDUCE_BLOCK_N])
MAX_SPLIT_K = max(c.kwargs.get("SPLIT_K", 1) for c in _ALL)
KEY = ["M", "N", "K", "PRECISION"]
"""Autotune cache key (the autotuner adds the tensors' dtypes itself)."""

SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912, 86: 101376, 89: 101376}
"""Bytes of shared memory one program may use, by compute capability (CUDA's opt-in maximum)."""


def family_of(precision: str, element_size: int) -> str:
    """The config family for a dot precision and an operand element size in bytes."""
    if precision == "ieee":
        return "ieee"
    return "tf32" if element_size == 4 else "16bit"


def shared_bytes_estimate(config: triton.Config, element_size: int) -> int:
    """Upper bound on the main loop's shared memory: num_stages copies of the A and B tiles."""
    k = config.kwargs
    return config.num_stages * (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * element_size


def fitting_configs(configs, family: str, element_size: int, shared_limit: int | None):
    """The configs of `family` (in order) whose shared memory fits the limit (None: no limit)."""
    family_set = {c for role in ROLES for c in family_configs(role, family)}
    return [c for c in configs if c in family_set
            and (shared_limit is None or shared_bytes_estimate(c, element_size) <= shared_limit)]


def _device_shared_limit(device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def prune_configs(configs, named_args, **kwargs):
    """Keep the family that fits the dot, and what fits this GPU's shared memory."""
    first = next(v for v in named_args.values() if isinstance(v, torch.Tensor))
    family = family_of(kwargs.get("PRECISION", "tf32"), first.element_size())
    return fitting_configs(configs, family, first.element_size(), _device_shared_limit(first.device)) or configs


PRUNE = {"early_config_prune": prune_configs}

FORCED: dict[str, triton.Config] = {}
"""role -> config that every launch of that role uses instead of autotuning (tests set it)."""


def launch(kernel, role: str, grid, *args, **kwargs) -> dict:
    """Run an autotuned kernel (or its FORCED config) and return the config's kwargs, so that
    the caller knows how many partial-sum slots the launch wrote (no device sync)."""
    forced = FORCED.get(role)
    if forced is None:
        kernel[grid](*args, **kwargs)
        return kernel.best_config.kwargs
    kernel.fn[grid](*args, **kwargs, **forced.all_kwargs())
    return forced.kwargs


def tiles(M: int, N: int, block_m: int, block_n: int) -> tuple[int, int]:
    return triton.cdiv(M, block_m), triton.cdiv(N, block_n)


def max_tiles(M: int, N: int) -> tuple[int, int]:
    """Upper bounds on the tile grid over every config and the reduction tile: partial-sum
    buffers are allocated this big, from the SMALLEST tile, before a config is picked."""
    return tiles(M, N, MIN_BLOCK_M, MIN_BLOCK_N)


def grid(M: int, N: int):
    """Launch grid: one program per (BLOCK_M, BLOCK_N) output tile (x SPLIT_K where it applies)."""
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta.get("SPLIT_K", 1))


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
    like: exact fp32 ("ieee") under "highest" (torch's default), TF32 under "high"/"medium"
    (torch.set_float32_matmul_precision). 16-bit operands ignore it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"
