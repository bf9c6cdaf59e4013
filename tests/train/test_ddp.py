"""Data-parallel training: two CPU processes (gloo) under torchrun, through accelerate's Accelerator."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_data import write_store


@pytest.mark.slow
def test_two_process_data_parallel_run_splits_the_batches(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not installed")
    write_store(tmp_path / "store", n_tokens=4096, layers=(0,))
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "ghosttrack.cli", "train", "--store", str(tmp_path / "store"),
           "--layer", "0", "--arch", "relu", "--l1", "0.3", "--d-hidden", "32", "--epochs", "1", "--batch-size", "128",
           "--device", "cpu", "--log-every", "2", "--out", str(tmp_path / "sae")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((tmp_path / "sae" / "layer_0" / "history.json").read_text())
    summary = history["summary"]
    train_rows = history["skipped"]["train_rows"]
    # Each step takes one batch per process: half the steps of a single process, same tokens.
    assert summary["steps"] == (train_rows // 128) // 2
    assert summary["tokens"] == summary["steps"] * 128 * 2
    assert (tmp_path / "sae" / "layer_0" / "final" / "sae_weights.safetensors").is_file()
