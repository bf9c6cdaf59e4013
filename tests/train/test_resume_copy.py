"""`--resume` of a finished run that was copied elsewhere reports where the run is now, not where it
was trained."""
import shutil

import pytest

from ghosttrack.sae.config import ReluSAEConfig
from ghosttrack.sae.files import STATE_FILE, load_trainer_state
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.trainer import SAETrainer

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_copied_finished_run_names_its_new_folder(tmp_path):
    write_store(tmp_path / "store", layers=(0,), n_tokens=2048, chunk_tokens=256)
    store = ActivationStore.open(tmp_path / "store")
    cfg = TrainerConfig(batch_size=256, epochs=1, log_every=2, device="cpu")
    first = SAETrainer(store, 0, ReluSAEConfig(d_in=16, d_sae=32), cfg, tmp_path / "a", progress=False).run()
    assert first["out_dir"] == str(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    again = SAETrainer(store, 0, ReluSAEConfig(d_in=16, d_sae=32), cfg, tmp_path / "b", progress=False)
    summary = again.run(load_trainer_state(tmp_path / "b" / STATE_FILE))
    assert summary["out_dir"] == str(tmp_path / "b") and summary["steps"] == first["steps"]
