"""The fused kernels compile for an H100 (sm_90) on this GPU-less machine: the interpreter
accepts code that the GPU compiler would reject (dtype mismatches in tl.dot, layouts)."""

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton's NVIDIA backend (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-W", "ignore", "-m", "ghosttrack.kernels.fused_aot", "--quick"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 22, run.stdout
    gemm_bf16 = [ln for ln in lines if " bf16 " in ln and not ln.startswith("sparse")]
    assert len(gemm_bf16) == 8 and all(ln.endswith("wgmma") for ln in gemm_bf16), "bf16 GEMMs on tensor cores"
