"""Compile every fused kernel with every tile config for a GPU, without one: catches what
the interpreter accepts but the GPU compiler rejects, register spills, and shared memory
over the card's limit. Exit status 1 when any compile spills or overflows.

    python -m ghosttrack.kernels.fused_aot                 # sm_90 (H100/H200) and sm_80 (A100)
    python -m ghosttrack.kernels.fused_aot --arch 90 --quick --jobs 2

Configs are the autotuner's, filtered the way it filters them on that GPU (family by dtype
and dot precision, shared-memory estimate). Kernels are specialised the way the runtime
JIT specialises them for contiguous tensors whose sizes are multiples of 16 (16-aligned
pointers and sizes, inner strides equal to 1), in their largest variant (JumpReLU with an
upstream gradient wrt acts). Needs triton's NVIDIA backend (ptxas and cuobjdump ship in
the triton wheel); TRITON_INTERPRET must be unset, since interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

ARCHS = (90, 80)
DTYPE = {"16bit": "bf16", "tf32": "fp32", "ieee": "fp32"}
# Inner strides that are 1 for contiguous inputs (the JIT turns those into constants).
UNIT_STRIDES = {
    "encode_kernel": {"stride_xk", "stride_wn", "stride_an"},
    "decode_kernel": {"stride_ak", "stride_wn", "stride_xn"},
    "decode_reduce_kernel": {"stride_xn"},
    "dacts_kernel": {"stride_wk", "stride_gan"},
    "dwdec_kernel": {"stride_wn"},
    "dwenc_kernel": {"stride_xm"},
    "dx_kernel": {"stride_wk"},
    "dx_reduce_kernel": set(),
    "sparse_decode_kernel": {"stride_ak", "stride_ik", "stride_wd"},
    "sparse_grad_acts_kernel": {"stride_gd", "stride_ik", "stride_wd"},
    "segment_rows_kernel": {"stride_dn"},
}
FP32_POINTERS = {"norm_ptr", "part_ptr", "thr_part_ptr", "gb_part_ptr", "coef_ptr", "thr_ptr", "colsum_ptr",
                 "acts_sum_ptr", "ws_ptr", "out32_ptr", "vsum_ptr"}
INT64_POINTERS = {"idx_ptr", "order_ptr", "seg_ptr"}


@dataclass
class Compiled:
    """One kernel compiled with one config for one architecture."""

    arch: int
    label: str
    config: str
    shared_bytes: int
    registers: int
    stack_bytes: int
    dot: str

    def problems(self) -> list[str]:
        out = []
        if self.stack_bytes:
            out.append(f"spills ({self.stack_bytes} bytes of stack)")
        if self.shared_bytes > shared_limit(self.arch):
            out.append(f"needs {self.shared_bytes} bytes of shared memory, the limit is {shared_limit(self.arch)}")
        return out

    def __str__(self) -> str:
        flag = "  FAIL: " + "; ".join(self.problems()) if self.problems() else ""
        return (f"sm_{self.arch} {self.label:38s} {self.config:22s} shared={self.shared_bytes:6d} "
                f"REG:{self.registers} STACK:{self.stack_bytes} {self.dot}{flag}")


def shared_limit(arch: int) -> int:
    from .fused_tiles import SHARED_MEMORY_LIMIT

    return SHARED_MEMORY_LIMIT[arch]


def compile_kernel(jit_fn, dtype: str, constexprs: dict, num_warps: int, num_stages: int, arch: int):
    """triton.compile one JITFunction; dtype names the data pointers ("bf16", "fp32", ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = jit_fn.arg_names
    const, signature, attrs = dict(constexprs), {}, {}
    for i, name in enumerate(names):
        if name in const:
            signature[name] = "constexpr"
        elif name in UNIT_STRIDES[jit_fn.__name__]:
            signature[name], const[name] = "constexpr", 1
        elif name == "bandwidth":
            signature[name] = "fp32"
        else:
            signature[name] = ("*i8" if name == "code_ptr" else "*i64" if name in INT64_POINTERS
                               else "*fp32" if name in FP32_POINTERS
                               else f"*{dtype}" if name.endswith("_ptr") else "i32")
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(jit_fn, signature, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resources(compiled) -> tuple[int, int]:
    """(registers, stack bytes) as cuobjdump reports them for the cubin; stack > 0 means spills."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    fields = dict(w.split(":", 1) for w in next(ln for ln in out.splitlines() if "REG:" in ln).split() if ":" in w)
    return int(fields["REG"]), int(fields["STACK"]) + int(fields.get("LOCAL", 0))


def dot_kind(compiled) -> str:
    ptx = compiled.asm["ptx"]
    return "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "fma"


def jobs(arch: int, family: str, quick: bool):
    """(label, jit fn, dtype, constexprs, config) to compile for one architecture and family."""
    from . import fused_backward as bwd
    from . import fused_forward as fwd
    from . import fused_sparse as sparse
    from .fused_tiles import GPU_CONFIGS, REDUCE_BLOCK_M, REDUCE_BLOCK_N, fitting_configs
    import triton

    dtype = DTYPE[family]
    size = 2 if dtype == "bf16" else 4
    common = {"INTERPRETED": False, "PRECISION": "ieee" if family == "ieee" else "tf32"}
    kernels = {"epilogue": [(fwd.encode_kernel, {"HAS_THRESHOLD": True}),
                            (bwd.dacts_kernel, {"HAS_THRESHOLD": True, "HAS_GA": True})],
               "gemm": [(bwd.dwdec_kernel, {}), (bwd.dwenc_kernel, {})],
               "splitk": [(fwd.decode_kernel, {}), (bwd.dx_kernel, {})]}
    for role, pairs in kernels.items():
        configs = fitting_configs(GPU_CONFIGS[role], family, size, shared_limit(arch))
        for kernel, flags in pairs:
            for cfg in configs[:1] if quick else configs:
                yield (f"{kernel.fn.__name__} {family}", kernel.fn, dtype, {**common, **flags, **cfg.kwargs}, cfg)
    if family != "ieee":  # the elementwise kernels do not depend on the dot precision
        reduce_cfg = triton.Config({"BLOCK_M": REDUCE_BLOCK_M, "BLOCK_N": REDUCE_BLOCK_N, "SPLIT_K": 4}, num_warps=4)
        for kernel in (fwd.decode_reduce_kernel, bwd.dx_reduce_kernel):
            yield (f"{kernel.__name__} {dtype}", kernel, dtype, {"INTERPRETED": False, **reduce_cfg.kwargs}, reduce_cfg)
        for kernel, constexprs, cfg in sparse.aot_specs():
            yield (f"{kernel.__name__} {dtype}", kernel, dtype, constexprs, cfg)


def compile_family(arch: int, family: str, quick: bool) -> list[Compiled]:
    """Compile one (architecture, family): the unit of work of one process."""
    out = []
    for label, fn, dtype, constexprs, cfg in jobs(arch, family, quick):
        c = compile_kernel(fn, dtype, constexprs, cfg.num_warps, cfg.num_stages, arch)
        shape = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in cfg.kwargs)
        split = f" k/{cfg.kwargs['SPLIT_K']}" if cfg.kwargs.get("SPLIT_K", 1) > 1 else ""
        regs, stack = resources(c)
        out.append(Compiled(arch, label, f"{shape}{split} w{cfg.num_warps} s{cfg.num_stages}", c.metadata.shared,
                            regs, stack, dot_kind(c)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, action="append", choices=[80, 86, 89, 90],
                   help="CUDA compute capability (repeatable); default: 90 and 80")
    p.add_argument("--quick", action="store_true", help="one config per kernel and family instead of all")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    from .fused_tiles import FAMILIES

    work = [(arch, family, args.quick) for arch in args.arch or ARCHS for family in FAMILIES]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(compile_family, *zip(*work)))
    else:
        results = [compile_family(*w) for w in work]
    failed = 0
    for compiled in (c for batch in results for c in batch):
        print(compiled, flush=True)
        failed += bool(compiled.problems())
    if failed:
        print(f"error: {failed} compiled kernels spill registers or overflow shared memory", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
