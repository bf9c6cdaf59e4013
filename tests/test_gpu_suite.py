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


def load_summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "bench" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_names_every_target_whose_step_failed(tmp_path):
    """A failed step (no result file) or a fused path that errored keeps its targets in the table as
    NOT MEASURED, and the summary exits 1: a target never silently disappears."""
    import json

    summary = load_summary()
    kernel = {"machine": "gpu x", "bf16_matmul_peak_tflops": 700.0, "rows": [
        {"dtype": "bfloat16", "method": "reference", "B": 4096, "H": 24576, "ms": 2.0},
        {"dtype": "bfloat16", "method": "fused", "B": 4096, "H": 24576, "error": "OutOfResources"}]}
    (tmp_path / "kernel_x.json").write_text(json.dumps(kernel))
    assert summary.main(["--results", str(tmp_path), "--gpu", "x"]) == 1
    table = (tmp_path / "gpu_suite_x.md").read_text()
    for target in (*summary.KERNEL_TARGETS, summary.TRAIN_TARGET, summary.EXTRACT_TARGET):
        row = next(line for line in table.splitlines() if line.startswith(f"| {target}"))
        assert "NOT MEASURED" in row, table
    assert "train_x.json" in table and "extract_x.json" in table


def test_the_smoke_run_sees_the_device_packages_only_from_the_carried_wheels(tmp_path):
    """bench/device_env hides the packages the device lacks, except from the carried site."""
    carried = tmp_path / "site"
    (carried / "zarr").mkdir(parents=True)
    (carried / "zarr" / "__init__.py").write_text("CARRIED = True\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench" / "device_env"), "GT_DEVICE_HIDDEN": "zarr numcodecs"}
    hidden = subprocess.run([sys.executable, "-c", "import zarr"], env=env, capture_output=True, text=True)
    assert hidden.returncode != 0 and "not carried" in hidden.stderr
    code = "import zarr, numpy; print(zarr.CARRIED)"
    seen = subprocess.run([sys.executable, "-c", code], env={**env, "GT_CARRIED_SITE": str(carried)},
                          capture_output=True, text=True)
    assert seen.returncode == 0 and seen.stdout.strip() == "True", seen.stderr


def test_the_cuda_step_collects_only_files_with_gpu_tests():
    suite = SUITE.read_text()
    assert '-m gpu -p no:cacheprovider $GPU_TESTS' in suite and " tests\n" not in suite.split("gpu_steps()")[1]
    line = next(ln for ln in suite.splitlines() if ln.startswith("GPU_TESTS="))
    listed = subprocess.run(["bash", "-c", f"{line}; echo $GPU_TESTS"], cwd=ROOT, capture_output=True,
                            text=True).stdout.split()
    assert "tests/kernels/test_fused_cuda.py" in listed and "tests/store/test_loader.py" in listed
    assert "tests/sae/test_saelens.py" not in listed and "tests/test_gpu_suite.py" not in listed
