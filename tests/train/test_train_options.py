"""Trainer options chosen in issue 11: the pre-encoder bias reaches the SAE, learns, and the saved
SAE (plain form, raw units) gives what the trained one gives; the LR follows the chosen schedule."""
import pytest
import torch

from ghosttrack.sae.config import TopKSAEConfig
from ghosttrack.sae.module import load_sae
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.schedule import lr_factor
from ghosttrack.train.trainer import SAETrainer

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store_info(tmp_path_factory):
    path = tmp_path_factory.mktemp("options") / "store"
    info = write_store(path, layers=(0,))
    return ActivationStore.open(path), info


def test_pre_encoder_bias_trains_and_the_saved_sae_is_the_trained_one(tmp_path, store_info):
    store, info = store_info
    cfg = TrainerConfig(batch_size=256, epochs=1, lr=1e-2, log_every=5, device="cpu", pre_encoder_bias=True,
                        lr_schedule="constant-decay", decay_fraction=0.25)
    trainer = SAETrainer(store, 0, TopKSAEConfig(d_in=16, d_sae=64, k=3), cfg, tmp_path, progress=False)
    summary = trainer.run()
    assert trainer.sae.pre_encoder_bias
    assert summary["val_fvu"] < 0.3  # it learned the planted atoms
    # b_enc no longer holds the centring that the plain form's init puts there.
    assert trainer.sae.b_enc.abs().max() < trainer.sae.b_dec.abs().max()
    x_raw = torch.from_numpy(info["rows"][0][1:2000:7]).float()
    s = trainer.state.input_scale
    saved = load_sae(tmp_path / "final")
    assert not saved.pre_encoder_bias
    with torch.no_grad():
        torch.testing.assert_close(saved(x_raw), trainer.sae(x_raw * s) / s, rtol=1e-4, atol=1e-4)
    # The logged rate (the one the next update will use) is the constant-decay schedule's.
    for entry in trainer.state.history["train"]:
        want = cfg.lr * lr_factor(entry["step"], trainer.total_steps, "constant-decay",
                                  warmup_fraction=cfg.warmup_fraction, decay_fraction=0.25)
        assert entry["lr"] == pytest.approx(want)


def test_a_failed_run_leaves_nothing_that_looks_finished(tmp_path, store_info):
    """--lr inf fails within a few steps: no config.json for final/ (nor a final/ folder), and the layer
    folder is gone, so neither interpret nor --resume takes the failed run for a finished one."""
    from click.testing import CliRunner

    from ghosttrack.cli import main

    store, _ = store_info
    out = tmp_path / "sae"
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--layer", "0", "--out", str(out),
                                       "--lr", "inf", "--batch-size", "256", "--device", "cpu", "--expansion", "2"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (out / "layer_0" / "final").exists() and not (out / "layer_0" / "config.json").exists()
    assert not (out / "layer_0").exists()
