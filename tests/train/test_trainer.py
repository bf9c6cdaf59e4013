"""SAETrainer on a small store with sparse structure: it learns, writes SAELens-layout files that work
on raw activations, skips and reports outlier rows, resumes exactly after a kill, and stops
cleanly on NaN, on mismatched resumes and on stores that are not ready."""
import json

import numpy as np
import pytest
import torch

from ghosttrack.sae.files import STATE_FILE, load_trainer_state
from ghosttrack.sae.module import load_sae
from ghosttrack.errors import GhostTrackError
from ghosttrack.metrics import fvu
from ghosttrack.sae.config import JumpReluSAEConfig, ReluSAEConfig, TopKSAEConfig
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train.layers import open_training_store, train_sae_for_layer
from ghosttrack.train.trainer import SAETrainer
from ghosttrack.train.config import TrainerConfig

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

D, H = 16, 64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store_info(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer") / "store"
    info = write_store(path)
    return ActivationStore.open(path), info


def _cfg(**kw):
    base = dict(batch_size=256, epochs=2, lr=1e-2, log_every=5, checkpoint_every=10, device="cpu")
    return TrainerConfig(**{**base, **kw})


ARCHS = {"relu": ReluSAEConfig(d_in=D, d_sae=H, l1_coeff=0.3),
         "topk": TopKSAEConfig(d_in=D, d_sae=H, k=3, aux_k=8, dead_tokens=1500),
         "jumprelu": JumpReluSAEConfig(d_in=D, d_sae=H, l0_coeff=0.02, bandwidth=0.1, init_threshold=0.1)}


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_trains_reports_skips_and_saves_an_sae_for_raw_activations(tmp_path, store_info, arch):
    store, info = store_info
    summary = train_sae_for_layer(store, 0, ARCHS[arch], _cfg(epochs=3), tmp_path, progress=False)
    run = tmp_path / "layer_0"
    history = json.loads((run / "history.json").read_text())
    assert summary["val_fvu"] < 0.8 * history["val"][0]["fvu"], [v["fvu"] for v in history["val"]]
    assert history["train"][-1]["fvu"] < history["train"][0]["fvu"]
    assert len(history["val"]) == 3 and summary["steps"] == len(history["train"]) * 5 - (5 - summary["steps"] % 5) % 5
    # Attention-sink-like rows: every position 0 and the planted outliers, skipped and counted.
    assert summary["skipped"]["flagged_skipped"] == info["flagged"]
    assert summary["skipped"]["outliers_skipped"] == info["outliers"]
    for d in (run, run / "final"):
        assert (d / "sae_weights.safetensors").is_file() and (d / "cfg.json").is_file()
    # The saved SAE has the input scale folded in: raw store rows in, raw reconstructions out.
    sae = load_sae(run)
    assert sae.metadata["hook_name"] == "blocks.0.hook_resid_post" and sae.metadata["hook_layer"] == 0
    x = torch.from_numpy(np.asarray(store.read_rows(0, 0, 4096), dtype=np.float32))
    keep = (torch.from_numpy(np.asarray(store.positions(0, 4096))) != 0) & (x.norm(dim=1) < 3 * x.norm(dim=1).median())
    with torch.no_grad():
        raw_fvu = fvu(x[keep], sae(x[keep]))
    assert raw_fvu < 0.6, raw_fvu
    if arch == "topk":
        assert (sae.encode(x[:50]) > 0).sum(1).max() <= 3


class _Kill(Exception):
    pass


def _kill_at(step_to_die):
    def on_step(step):
        if step == step_to_die:
            raise _Kill
    return on_step


@pytest.mark.parametrize("arch,resident", [("topk", "yes"), ("relu", "no")])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, store_info, arch, resident):
    store, _ = store_info
    cfg = _cfg(epochs=1.5, device_resident=resident)  # the layer held in memory, and streamed
    full = SAETrainer(store, 0, ARCHS[arch], cfg, tmp_path / "full", progress=False)
    full_summary = full.run()

    first = SAETrainer(store, 0, ARCHS[arch], cfg, tmp_path / "cut", progress=False)
    with pytest.raises(_Kill):
        first.run(on_step=_kill_at(37))  # mid-epoch 2; last checkpoint at step 30
    saved = load_trainer_state(tmp_path / "cut" / STATE_FILE)
    assert saved["training"]["step"] == 30
    second = SAETrainer(store, 0, ARCHS[arch], cfg, tmp_path / "cut", progress=False)
    summary = second.run(saved)

    for name, value in full.sae.state_dict().items():
        assert torch.equal(second.sae.state_dict()[name], value), name
    assert torch.equal(second.tracker.tokens_since_fired_H, full.tracker.tokens_since_fired_H)
    strip = lambda entries: [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in entries]  # noqa: E731
    h_full, h_cut = full.state.history, second.state.history
    assert strip(h_cut["train"]) == strip(h_full["train"]) and h_cut["val"] == h_full["val"]
    assert summary["val_fvu"] == full_summary["val_fvu"]
    # Resuming a finished run does nothing and returns its summary.
    again = SAETrainer(store, 0, ARCHS[arch], cfg, tmp_path / "cut", progress=False)
    assert again.run(load_trainer_state(tmp_path / "cut" / STATE_FILE))["steps"] == summary["steps"]


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, store_info):
    store, _ = store_info
    trainer = SAETrainer(store, 0, ARCHS["relu"], _cfg(), tmp_path, progress=False)

    def poison(step):
        if step == 12:
            with torch.no_grad():
                trainer.sae.W_enc[0, 0] = float("nan")

    with pytest.raises(GhostTrackError, match=r"NaN/inf at step 13;.*last good checkpoint \(step 10\)"):
        trainer.run(on_step=poison)
    state = load_trainer_state(tmp_path / STATE_FILE)
    assert state["training"]["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_refuses_other_settings_and_other_widths(tmp_path, store_info):
    store, _ = store_info
    run = tmp_path / "layer_0"
    with pytest.raises(_Kill):
        SAETrainer(store, 0, ARCHS["topk"], _cfg(), run, progress=False).run(on_step=_kill_at(11))
    saved = load_trainer_state(run / STATE_FILE)
    other = TopKSAEConfig(d_in=D, d_sae=H, k=5, aux_k=8, dead_tokens=1500)
    with pytest.raises(GhostTrackError, match=r"other settings \(k: 3 -> 5\)"):
        SAETrainer(store, 0, other, _cfg(), run, progress=False).run(saved)
    with pytest.raises(GhostTrackError, match=r"lr: 0.01 -> 0.001"):
        SAETrainer(store, 0, ARCHS["topk"], _cfg(lr=1e-3), run, progress=False).run(saved)
    wider = dict(saved, store={**saved["store"], "d_model": 32})
    with pytest.raises(GhostTrackError, match="d_model 32"):
        SAETrainer(store, 0, ARCHS["topk"], _cfg(), run, progress=False).run(wider)
    # Without --resume an existing run is never clobbered; --resume continues it.
    with pytest.raises(GhostTrackError, match="already holds a training run"):
        train_sae_for_layer(store, 0, ARCHS["topk"], _cfg(), tmp_path, progress=False)
    summary = train_sae_for_layer(store, 0, ARCHS["topk"], _cfg(), tmp_path, resume=True, progress=False)
    assert summary["steps"] == 2 * (7473 // 256)


def test_stores_that_are_not_ready_or_hold_nan_are_refused(tmp_path):
    write_store(tmp_path / "partial", n_tokens=2048, complete=False)
    with pytest.raises(GhostTrackError, match="incomplete"):
        open_training_store(tmp_path / "partial")
    write_store(tmp_path / "nan", n_tokens=2048, nan_row=1500)
    with pytest.raises(StoreError, match=r"1 rows with NaN/inf \(first at rows 1500"):
        SAETrainer(ActivationStore.open(tmp_path / "nan"), 0, ARCHS["relu"], _cfg(), tmp_path / "o", progress=False)
    with pytest.raises(StoreError, match="layer 7 is not in store"):
        SAETrainer(ActivationStore.open(tmp_path / "nan"), 7, ARCHS["relu"], _cfg(), tmp_path / "o", progress=False)


def test_bf16_autocast_trains(tmp_path, store_info):
    store, _ = store_info
    summary = SAETrainer(store, 2, ARCHS["topk"], _cfg(epochs=1, dtype="bfloat16"), tmp_path, progress=False).run()
    assert summary["val_fvu"] < 1.0


@pytest.mark.slow
def test_fused_trainer_follows_the_reference_loss_curve(tmp_path, store_info):
    """--fused (Triton interpreter on CPU) tracks the reference trainer step by step."""
    pytest.importorskip("triton")
    store, _ = store_info
    cfg = dict(epochs=0.05, batch_size=64, log_every=1)  # 6 steps: the interpreter is slow
    for arch in ("relu", "jumprelu"):
        ref = SAETrainer(store, 0, ARCHS[arch], _cfg(**cfg), tmp_path / f"ref_{arch}", progress=False)
        ref.run()
        fused = SAETrainer(store, 0, ARCHS[arch], _cfg(fused=True, **cfg), tmp_path / f"fused_{arch}", progress=False)
        fused.run()
        ref_loss = [e["loss"] for e in ref.state.history["train"]]
        fused_loss = [e["loss"] for e in fused.state.history["train"]]
        assert len(ref_loss) == len(fused_loss) >= 5
        np.testing.assert_allclose(fused_loss, ref_loss, rtol=2e-3)
        for name, value in ref.sae.state_dict().items():
            torch.testing.assert_close(fused.sae.state_dict()[name], value, rtol=2e-3, atol=2e-4)


def test_fused_topk_is_refused_up_front(tmp_path, store_info):
    store, _ = store_info
    with pytest.raises(GhostTrackError, match="--fused covers the relu and jumprelu"):
        SAETrainer(store, 0, ARCHS["topk"], _cfg(fused=True), tmp_path, progress=False)
