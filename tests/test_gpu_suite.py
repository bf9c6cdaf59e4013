"""bench/gpu_suite.sh, checked without a GPU so that a typo cannot waste GPU minutes: its bash
parses, and every script and --flag its GPU and smoke steps pass exists (--check mode). And the
kernel bench's error check, which makes that bench (hence the suite) exit non-zero."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.sh"


def test_suite_parses_and_every_step_script_and_flag_exists():
    subprocess.run(["bash", "-n", str(SUITE)], check=True)
    run = subprocess.run(["bash", str(SUITE), "--check"], env={**os.environ, "PYTHON": sys.executable},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok: ") == 10, run.stdout


def test_makefile_runs_the_suite():
    make = (ROOT / "Makefile").read_text()
    assert "bench-gpu:" in make and "bench/gpu_suite.sh" in make


def load_bench_kernel():
    spec = importlib.util.spec_from_file_location("bench_kernel", ROOT / "bench" / "bench_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_bench_error_check():
    bench = load_bench_kernel()
    shape = {"dtype": "bfloat16", "B": 4096, "H": 24576}
    eager = {**shape, "method": "reference", "loss_rel_err": 4e-3, "grad_rel_err": 8e-3}
    good = {**shape, "method": "fused", "loss_rel_err": 1e-3, "grad_rel_err": 9e-3}
    assert bench.error_check_failures([eager, good]) == []
    assert len(bench.error_check_failures([eager, {**good, "grad_rel_err": 0.05}])) == 1
    assert len(bench.error_check_failures([eager, {**good, "loss_rel_err": float("nan")}])) == 1
    assert len(bench.error_check_failures([eager, {**shape, "method": "fused", "error": "OutOfResources"}])) == 1
