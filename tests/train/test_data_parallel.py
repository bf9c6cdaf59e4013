"""Data-parallel bookkeeping that one process can check: each layer gets a fresh Accelerator and
leaves nothing of itself behind (memory flat across layers), and a resume with another number of
processes is refused with a one-line error."""
import weakref

import pytest

from ghosttrack.errors import GhostTrackError
from ghosttrack.sae.config import ReluSAEConfig
from ghosttrack.sae.files import STATE_FILE, load_trainer_state
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train import layers
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.trainer import SAETrainer

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = dict(arch="relu", l1=0.3, d_hidden=32, epochs=0.3, batch_size=256, device="cpu", log_every=4)


def test_each_layer_gets_a_fresh_accelerator_and_leaves_nothing_alive(tmp_path, monkeypatch):
    write_store(tmp_path / "store", n_tokens=4096, layers=(0, 1, 2))
    alive_at_start: list[list[str]] = []
    refs: list[dict[str, weakref.ref]] = []

    class Spy(SAETrainer):
        def __init__(self, *args, **kwargs):
            alive_at_start.append([f"layer {i} {name}" for i, r in enumerate(refs) for name, ref in r.items()
                                   if ref() is not None])
            super().__init__(*args, **kwargs)
            refs.append({"sae": weakref.ref(self.sae), "optimizer": weakref.ref(self.optimizer.optimizer),
                         "accelerator": weakref.ref(self.acc), "trainer": weakref.ref(self)})

    monkeypatch.setattr(layers, "SAETrainer", Spy)
    results = layers.train_layers(tmp_path / "store", "0,1,2", tmp_path / "out", OPTIONS, progress=False)
    assert all(isinstance(r, dict) for r in results.values()), results
    assert alive_at_start == [[], [], []]  # when a layer starts, nothing of the previous ones is referenced
    assert [name for r in refs for name, ref in r.items() if ref() is not None] == []


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    write_store(tmp_path / "store", n_tokens=4096, layers=(0,))
    store = ActivationStore.open(tmp_path / "store")
    sae_cfg = ReluSAEConfig(d_in=16, d_sae=32, l1_coeff=0.3)
    cfg = TrainerConfig(batch_size=128, epochs=1, log_every=4, checkpoint_every=8, device="cpu")

    class Stop(Exception):
        pass

    def stop_at_9(step):
        if step == 9:
            raise Stop

    with pytest.raises(Stop):
        SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "run", progress=False).run(on_step=stop_at_9)
    saved = load_trainer_state(tmp_path / "run" / STATE_FILE)
    assert saved["processes"] == 1 and saved["training"]["step"] == 8
    by_two = dict(saved, processes=2)
    with pytest.raises(GhostTrackError, match=r"trained by 2 data-parallel processes and this run has 1.*"
                                              r"--num_processes 2"):
        SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "run", progress=False).run(by_two)
    # The same number of processes resumes.
    summary = SAETrainer(store, 0, sae_cfg, cfg, tmp_path / "run", progress=False).run(saved)
    assert summary["steps"] > 8
