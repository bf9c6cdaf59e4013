"""A real `ghosttrack train` process interrupted by Ctrl-C (SIGINT) and then killed (SIGKILL) resumes
with --resume to exactly the SAE an uninterrupted run produces."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from click.testing import CliRunner

from ghosttrack.sae.files import STATE_FILE
from ghosttrack.cli import main

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

ARGS = ["--layer", "0", "--arch", "topk", "--d-hidden", "64", "--k", "3", "--epochs", "6", "--batch-size", "128",
        "--device", "cpu", "--log-every", "5", "--checkpoint-every", "10", "--lr", "0.01"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same reductions in every process


def _cmd(store, out, *extra):
    code = "import sys; from ghosttrack.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, "train", "--store", str(store), *ARGS, "--out", str(out), *extra]


def _wait_for_checkpoint(proc, state, min_step: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be interrupted: {proc.stderr.read()}")
        if state.exists():
            try:
                if torch.load(state, weights_only=False)["training"]["step"] >= min_step:
                    return
            except Exception:  # noqa: BLE001 - being replaced right now; look again
                pass
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared in time")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_sigint_then_sigkill_then_resume_equals_uninterrupted(tmp_path):
    store = tmp_path / "store"
    write_store(store, n_tokens=4096, layers=(0,))
    # The uninterrupted run, in this process with the subprocesses' single thread.
    assert CliRunner().invoke(main, ["train", "--store", str(store), *ARGS, "--out", str(tmp_path / "full")],
                              catch_exceptions=False).exit_code == 0

    out = tmp_path / "cut"
    state = out / "layer_0" / STATE_FILE
    # SIGINT's default restored in the child: started in the background by a script, it inherits an
    # ignored SIGINT, which ghosttrack keeps ignored (as the shell asked).
    proc = subprocess.Popen(_cmd(store, out), env=ENV, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_checkpoint(proc, state, 10)
    proc.send_signal(signal.SIGINT)  # graceful: finishes the step, saves, exits 130
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command with --resume" in err
    interrupted_at = torch.load(state, weights_only=False)["training"]["step"]

    proc = subprocess.Popen(_cmd(store, out, "--resume"), env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, state, interrupted_at + 20)
    proc.send_signal(signal.SIGKILL)  # no chance to save anything
    proc.communicate(timeout=60)

    done = subprocess.run(_cmd(store, out, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ("sae_weights.safetensors", "final/sae_weights.safetensors"):
        a = load_file(str(tmp_path / "full" / "layer_0" / name))
        b = load_file(str(out / "layer_0" / name))
        assert all(torch.equal(a[key], b[key]) for key in a), name
