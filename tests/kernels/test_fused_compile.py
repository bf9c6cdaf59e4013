"""Every fused kernel with every tile config compiles for an H100 (sm_90) and an A100 (sm_80)
on this GPU-less machine, without register spills and within shared memory: the interpreter
accepts code that the GPU compiler rejects, and it cannot see registers at all.

`make test-full` compiles every config: cold (empty Triton cache) 188 kernels, 2.7 CPU-minutes
measured (`--jobs 2`, about 1.5 minutes on 2 idle cores, 500 s on a loaded machine); Triton's cache
makes later runs of unchanged kernels take about 15 seconds. `make test` compiles the first config
of each kernel and family (`fused_aot --quick`): every kernel, both cards, the spill and shared-memory
checks, on fewer tile shapes."""

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(PTXAS), reason="triton's NVIDIA backend (ptxas) is not installed")]


def compiler_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


FULL = os.environ.get("GHOSTTRACK_FULL_TESTS") == "1"


def test_every_config_compiles_for_sm90_and_sm80_without_spills():
    from ghosttrack.kernels import fused_aot, fused_tiles

    quick = [] if FULL else ["--quick"]
    run = subprocess.run([sys.executable, "-W", "ignore", "-m", "ghosttrack.kernels.fused_aot", "--jobs", "2", *quick],
                         env=compiler_env(), capture_output=True, text=True, timeout=1800)
    failing = [ln for ln in run.stdout.splitlines() if "FAIL" in ln]
    assert run.returncode == 0, "\n".join(failing) + run.stderr[-3000:]
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("sm_")]
    expected = sum(len(list(fused_aot.jobs(arch, family, not FULL)))
                   for arch in fused_aot.ARCHS for family in fused_tiles.FAMILIES)
    assert len(lines) == expected, run.stdout
    every_config = {(role, family): len(fused_tiles.family_configs(role, family)) if FULL else 1
                    for role in fused_tiles.ROLES for family in fused_tiles.FAMILIES}
    for family in fused_tiles.FAMILIES:  # nothing pruned for shared memory on these two cards
        assert sum(f"encode_kernel {family} " in ln for ln in lines) == 2 * every_config[("epilogue", family)]
        assert sum(f"dwdec_kernel {family} " in ln for ln in lines) == 2 * every_config[("gemm", family)]
        assert sum(f"decode_kernel {family} " in ln for ln in lines) == 2 * every_config[("splitk", family)]
    gemms = [ln for ln in lines if "_kernel 16bit" in ln or "_kernel tf32" in ln]
    assert all(ln.split()[-1] == ("wgmma" if ln.startswith("sm_90") else "mma") for ln in gemms), \
        "16-bit and TF32 GEMMs on tensor cores"
    assert all(ln.split()[-1] == "fma" for ln in lines if "_kernel ieee" in ln), "exact fp32 on the FMA units"


def test_the_spill_check_sees_a_spilling_tile():
    """A 128 x 128 tile at 4 warps (128 accumulator registers a thread) spills in the JumpReLU
    encode epilogue: the check that keeps such configs out must report it."""
    code = ("from ghosttrack.kernels import fused_aot, fused_forward\n"
            "c = fused_aot.compile_kernel(fused_forward.encode_kernel.fn, 'bf16', {'INTERPRETED': False, "
            "'PRECISION': 'tf32', 'HAS_THRESHOLD': True, 'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, "
            "'GROUP_M': 8}, 4, 4, 90)\n"
            "regs, stack = fused_aot.resources(c)\n"
            "r = fused_aot.Compiled(90, 'encode', '128x128x64 w4', c.metadata.shared, regs, stack, 'wgmma')\n"
            "print(stack, r.problems())\n")
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=compiler_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    stack, problems = run.stdout.split(" ", 1)
    assert int(stack) > 0 and "spills" in problems
