"""Data-parallel training under `accelerate launch` with two CPU processes (gloo): Ctrl-C on one
rank stops both at the same log step; the resumed run equals one process with twice the batch."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ghosttrack.cli import main
from ghosttrack.sae.files import STATE_FILE

from launch import accelerate_launch
from trainer_data import one_thread, write_store  # noqa: F401 - fixture

ARGS = ["--layers", "0,1", "--arch", "relu", "--l1", "0.3", "--d-hidden", "32", "--epochs", "1", "--device", "cpu",
        "--log-every", "4", "--checkpoint-every", "8", "--lr", "0.01"]
DRIVER = Path(__file__).with_name("ddp_interrupt.py")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_processes_stop_together_resume_and_equal_one_process_with_twice_the_batch(tmp_path):
    store = tmp_path / "store"
    write_store(store, n_tokens=4096, layers=(0, 1))
    out = tmp_path / "two"
    train = ["train", "--store", str(store), *ARGS, "--batch-size", "128", "--out", str(out)]

    # Rank 1 alone gets Ctrl-C after step 3; both ranks stop at the log step 4, after a checkpoint.
    cut = accelerate_launch(str(DRIVER), "3", *train)
    assert cut.returncode != 0 and cut.stderr.count("layer 0 interrupted at step 4)") == 2, cut.stderr[-3000:]
    saved = torch.load(out / "layer_0" / STATE_FILE, weights_only=False)
    assert saved["training"]["step"] == 4 and saved["processes"] == 2
    assert not (out / "layer_1").exists()

    done = accelerate_launch("-m", "ghosttrack.cli", *train, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]

    # One process, batch 256: the same rows per step, so the same SAEs (up to summation order).
    one = tmp_path / "one"
    result = CliRunner().invoke(main, ["train", "--store", str(store), *ARGS, "--batch-size", "256", "--out", str(one)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for layer in (0, 1):
        h1 = json.loads((one / f"layer_{layer}" / "history.json").read_text())
        h2 = json.loads((out / f"layer_{layer}" / "history.json").read_text())
        assert h2["processes"] == 2 and h1["processes"] == 1
        for key in ("steps", "tokens"):
            assert h2["summary"][key] == h1["summary"][key]
        assert h2["summary"]["steps"] == h2["skipped"]["train_rows"] // 256  # each step takes 2 x 128 rows
        for split in ("train", "val"):  # logs and validation are reduced over both ranks' rows
            for e1, e2 in zip(h1[split], h2[split], strict=True):
                for key in ("loss", "fvu", "l0"):
                    assert e2[key] == pytest.approx(e1[key], rel=1e-5), (layer, split, key)
        for name in ("sae_weights.safetensors", "final/sae_weights.safetensors"):
            a, b = load_file(str(one / f"layer_{layer}" / name)), load_file(str(out / f"layer_{layer}" / name))
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{layer} {name} {key}")
