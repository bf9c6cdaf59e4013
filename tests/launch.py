"""`accelerate launch` with two CPU processes, for the data-parallel tests (train and extract)."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repo root: where a user runs `accelerate launch -m`
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same reductions in every process


def free_port() -> int:
    """A port free on this machine now: two suites running side by side must not both take 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch(*args: str, processes: int = 2, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `accelerate launch` (torchrun's launcher; the code's Accelerator(cpu=True) then runs gloo)."""
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    if not Path(accelerate).exists():
        pytest.skip("accelerate's launcher is not installed")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--main_process_port", str(free_port()),
           "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
