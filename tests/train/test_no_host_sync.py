"""A steady-state training step never reads the device back: zero sync-prone calls (.item, int,
float, bool, tolist, numpy, bincount, nonzero, unique, masked_select, boolean-mask indexing), counted
in the training thread on the CPU, for every architecture, with the layer resident and streamed.

Steady state (see ghosttrack/train/trainer.py): every step but log steps, the first and last step of
an epoch, and the last step of the run. The counts at log steps must be non-zero: the recorder
sees the loop's deliberate syncs, so a zero elsewhere is not a blind spot."""
import pytest
import torch

from ghosttrack.sae.config import JumpReluSAEConfig, ReluSAEConfig, TopKSAEConfig
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.host_syncs import SyncRecorder, is_steady_step
from ghosttrack.train.trainer import SAETrainer

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

D, H, LOG_EVERY = 16, 64, 8
ARCHS = {"relu": ReluSAEConfig(d_in=D, d_sae=H, l1_coeff=0.3),
         "jumprelu": JumpReluSAEConfig(d_in=D, d_sae=H, l0_coeff=0.02, bandwidth=0.1, init_threshold=0.1),
         # dead_tokens of a few batches: AuxK runs with dead latents during the counted steps
         "topk": TopKSAEConfig(d_in=D, d_sae=H, k=3, aux_k=8, dead_tokens=384)}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncs") / "store"
    write_store(path, layers=(0,), n_tokens=4096)
    return ActivationStore.open(path)


def _syncs_per_step(store, arch, resident, out, plant=None, target_l0=None):
    cfg = TrainerConfig(batch_size=128, epochs=1.5, log_every=LOG_EVERY, checkpoint_every=LOG_EVERY * 2,
                        device="cpu", device_resident=resident, lr=1e-2, target_l0=target_l0)
    trainer = SAETrainer(store, 0, ARCHS[arch], cfg, out, progress=False)
    if plant is not None:
        trainer._train_step = plant(trainer._train_step)
    per_step = {}
    with SyncRecorder() as recorder:
        trainer.run(on_step=lambda step: per_step.__setitem__(step, recorder.take()))
    steady = {s: v for s, v in per_step.items() if is_steady_step(
        s, log_every=LOG_EVERY, steps_per_epoch=trainer.steps_per_epoch, total_steps=trainer.total_steps)}
    logs = {s: v for s, v in per_step.items() if s % LOG_EVERY == 0}
    assert len(steady) >= 20 and logs, (trainer.steps_per_epoch, trainer.total_steps)
    return steady, logs, trainer


@pytest.mark.parametrize("arch,resident,target_l0", [("relu", "yes", None), ("jumprelu", "yes", None),
                                                     ("topk", "yes", None), ("topk", "no", None),
                                                     ("jumprelu", "yes", 6.0)])  # the --target-l0 controller
def test_steady_state_steps_make_no_sync_prone_call(tmp_path, store, arch, resident, target_l0):
    steady, logs, trainer = _syncs_per_step(store, arch, resident, tmp_path, target_l0=target_l0)
    assert {s: v for s, v in steady.items() if v} == {}
    assert all(logs.values())  # the log steps' deliberate read-backs are seen
    if arch == "topk":
        assert trainer.state.history["train"][-1]["auxk"] > 0  # AuxK ran with dead latents


def test_a_planted_item_call_in_the_step_is_caught(tmp_path, store):
    def plant(step):
        def with_sync(x):
            step(x)
            step.__self__.window_losses[-1].item()  # what a careless metric would do
        return with_sync

    steady, _, _ = _syncs_per_step(store, "relu", "yes", tmp_path, plant=plant)
    assert steady and all(v == ["aten._local_scalar_dense.default"] for v in steady.values())


def test_skipping_auxk_while_no_latent_can_be_dead_changes_nothing(tmp_path, store, monkeypatch):
    """At each log step the trainer counts the latents that can reach dead_tokens before the next one,
    and AuxK works on at most that many (none at 0: it is then exactly 0 and skipped). A run that
    always uses aux_k latents must end with the very same SAE."""
    cfg = TrainerConfig(batch_size=128, epochs=1.5, log_every=4, checkpoint_every=8, device="cpu", lr=1e-2)
    sae_cfg = TopKSAEConfig(d_in=D, d_sae=H, k=3, aux_k=8, dead_tokens=1500)  # > 4 steps of 128 rows
    gated = SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "gated", progress=False)
    bounds = []
    gated.run(on_step=lambda step: bounds.append(gated.state.max_dead))
    assert bounds[0] == 0 and 0 < max(bounds) < H  # none while all latents are fresh, then some
    assert gated.state.history["train"][-1]["auxk"] > 0
    monkeypatch.setattr(SAETrainer, "_latents_that_can_die_soon", lambda self: None)
    always = SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "always", progress=False)
    always.run()
    for name, value in always.sae.state_dict().items():
        assert torch.equal(gated.sae.state_dict()[name], value), name


def test_the_dead_latent_bound_covers_every_step_until_the_next_log_step(tmp_path, store):
    cfg = TrainerConfig(batch_size=128, epochs=1, log_every=4, device="cpu")
    sae_cfg = TopKSAEConfig(d_in=D, d_sae=H, k=3, aux_k=8, dead_tokens=1500)
    trainer = SAETrainer(store, 0, sae_cfg, cfg, tmp_path, progress=False)
    since = torch.linspace(800, 1600, H).long()  # every distance to the window, some already past it
    trainer.tracker.tokens_since_fired_H.copy_(since)
    bound = trainer._latents_that_can_die_soon()
    # If no latent fires again, step s + 1 + j after the log step s sees since + j * 128 (j < log_every).
    worst = max(int((since + j * 128 >= 1500).sum()) for j in range(4))
    assert worst <= bound <= int((since + 4 * 128 >= 1500).sum())
