"""Issue 20: every layer's SAE starts from its own random dictionary. With one seed for all layers,
latent i of layer 0 and latent i of layer 2 start as the same direction, and after training they
still agree far above chance: a cross-layer match then finds the shared start, not shared meaning."""
import json

import numpy as np
import pytest
import torch

from ghosttrack.sae.module import load_sae
from ghosttrack.train.config import layer_seed
from ghosttrack.train.layers import train_layers

from trainer_data import one_thread, write_store  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")
D, H = 32, 128


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = torch.nn.functional.normalize(b.double(), dim=1)
    return (a * b).sum(1).numpy()


def test_layers_of_one_run_get_independent_initialisations(tmp_path):
    write_store(tmp_path / "store", layers=(0, 2), d_model=D, n_tokens=4096)
    options = {"arch": "topk", "d_hidden": H, "k": 4, "epochs": 0.5, "batch_size": 256, "lr": 1e-3,
               "device": "cpu", "seed": 7, "log_every": 5}
    results = train_layers(tmp_path / "store", [0, 2], tmp_path / "run", options, progress=False)
    assert all(not isinstance(r, Exception) for r in results.values()), results
    seeds = [json.loads((tmp_path / "run" / f"layer_{k}" / "cfg.json").read_text())["ghosttrack"]["init_seed"]
             for k in (0, 2)]
    assert seeds == [layer_seed(7, 0), layer_seed(7, 2)] and seeds[0] != seeds[1]
    dec = [load_sae(tmp_path / "run" / f"layer_{k}").W_dec.detach() for k in (0, 2)]
    same = _cosines(dec[0], dec[1])
    shifted = _cosines(dec[0], dec[1].roll(1, dims=0))  # unrelated pairs: what chance looks like
    # Chance: |cos| of random unit vectors in D=32 averages ~0.14 (sd of the mean over 128 pairs ~0.01).
    assert abs(np.abs(same).mean() - np.abs(shifted).mean()) < 0.05, (np.abs(same).mean(), np.abs(shifted).mean())
    assert abs(same.mean()) < 0.06
