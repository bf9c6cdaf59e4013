"""Compile the fused kernels for a GPU without one: catches GPU-only compile errors (the
interpreter runs code the GPU compiler would reject) and reports each config's resources.

    python -m ghosttrack.kernels.fused_aot            # every kernel and config, sm_90 (H100)
    python -m ghosttrack.kernels.fused_aot --quick    # one config per kernel

Kernels are specialised the way the runtime JIT specialises them for contiguous tensors
whose sizes are multiples of 16: 16-aligned pointers and sizes, inner strides equal to 1.
Needs triton's NVIDIA backend (ptxas ships in the triton wheel); TRITON_INTERPRET must be
unset, since interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Inner strides that are 1 for contiguous inputs (the JIT turns those into constants).
UNIT_STRIDES = {
    "encode_kernel": {"stride_xk", "stride_wn", "stride_an"},
    "decode_kernel": {"stride_ak", "stride_wn", "stride_xn"},
    "dacts_kernel": {"stride_wk", "stride_gan"},
    "dwdec_kernel": {"stride_wn"},
    "dwenc_kernel": {"stride_xm"},
    "dx_kernel": {"stride_wk"},
    "sparse_decode_kernel": {"stride_ak", "stride_ik", "stride_wd"},
    "sparse_grad_acts_kernel": {"stride_gd", "stride_ik", "stride_wd"},
    "sparse_grad_w_kernel": {"stride_gd", "stride_ak", "stride_ik"},
}
FP32_POINTERS = {"norm_ptr", "part_ptr", "thr_part_ptr", "coef_ptr", "thr_ptr", "gw_ptr", "gb_ptr"}


@dataclass
class Compiled:
    """One kernel compiled with one config."""

    label: str
    config: str
    shared_bytes: int
    resources: str
    dot: str

    def __str__(self) -> str:
        return f"{self.label:40s} {self.config:18s} shared={self.shared_bytes:6d}  {self.resources}  {self.dot}"


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
            signature[name] = ("*i8" if name == "code_ptr" else "*i64" if name == "idx_ptr"
                               else "*fp32" if name in FP32_POINTERS
                               else f"*{dtype}" if name.endswith("_ptr") else "i32")
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(jit_fn, signature, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resources(compiled) -> str:
    """Registers / spill stack as cuobjdump reports them for the cubin."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    line = next((ln for ln in out.splitlines() if "REG:" in ln), "")
    return " ".join(w for w in line.split() if w.startswith(("REG:", "STACK:")))


def compile_all(quick: bool, arch: int = 90):
    """Yield a Compiled per (kernel, dtype, config): 16-bit on tensor cores, fp32 exact on FMA."""
    from . import fused_backward as bwd
    from . import fused_forward as fwd
    from . import fused_sparse as sparse
    from .fused_tiles import FMA_CONFIGS, TENSOR_CORE_CONFIGS

    for dtype, precision, configs in (("bf16", "tf32", TENSOR_CORE_CONFIGS), ("fp32", "ieee", FMA_CONFIGS)):
        common = {"INTERPRETED": False, "PRECISION": precision}
        gemms = [(fwd.encode_kernel, {"HAS_THRESHOLD": True}), (fwd.encode_kernel, {"HAS_THRESHOLD": False}),
                 (fwd.decode_kernel, {}), (bwd.dacts_kernel, {"HAS_THRESHOLD": True, "HAS_GA": True}),
                 (bwd.dacts_kernel, {"HAS_THRESHOLD": False, "HAS_GA": False}), (bwd.dwdec_kernel, {}),
                 (bwd.dwenc_kernel, {}), (bwd.dx_kernel, {})]
        for kernel, flags in gemms:
            for cfg in configs[-1:] if quick else configs:
                c = compile_kernel(kernel.fn, dtype, {**common, **flags, **cfg.kwargs}, cfg.num_warps,
                                   cfg.num_stages, arch)
                dot = "wgmma" if "wgmma" in c.asm["ptx"] else "mma" if "mma.sync" in c.asm["ptx"] else "fma"
                shape = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                label = f"{kernel.fn.__name__} {dtype} " + " ".join(k for k, v in flags.items() if v)
                yield Compiled(label, f"{shape} w{cfg.num_warps} s{cfg.num_stages}", c.metadata.shared,
                               resources(c), dot)
        for kernel in (sparse.sparse_decode_kernel, sparse.sparse_grad_acts_kernel, sparse.sparse_grad_w_kernel):
            blocks = {"BLOCK_B": sparse.BLOCK_B, "BLOCK_D": sparse.BLOCK_D}
            if "INTERPRETED" in kernel.arg_names:
                blocks["INTERPRETED"] = False
            c = compile_kernel(kernel, dtype, blocks, 4, 3, arch)
            yield Compiled(f"{kernel.__name__} {dtype}", f"{sparse.BLOCK_B}x{sparse.BLOCK_D} w4 s3",
                           c.metadata.shared, resources(c), "-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one config per kernel instead of all")
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 (H100), 80 (A100)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    for compiled in compile_all(args.quick, args.arch):
        print(compiled, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
