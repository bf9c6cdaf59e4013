"""The rows `ghosttrack train` sees, handed to any SAE trainer, and one evaluation for every SAE.

Imports only torch and ghosttrack's store and metrics, so that it also runs in the peers' venv
(SAELens, sparsify). `TrainingRows` reproduces the trainer's data path exactly: the same scan
(position-0 rows and rows over 3x the median norm skipped), the same split by chunk, the same
shuffled order for each epoch, and the same input scale (E||x * scale||^2 = d_in, estimated on the
first 65,536 training rows), so that a peer trained on `TrainingRows.batches()` saw the batches our
trainer saw, in the same order. `bench/train_quality.py` checks the input scale against the one
our trainer saved.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ghosttrack.metrics import ReconstructionStats
from ghosttrack.store.loader import ActivationLoader, LoaderConfig
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.stats import scan_layer

MAX_NORM_RATIO = 3.0
SCALE_ROWS = 65_536  # TrainerConfig.scale_rows

# forward(x_BD scaled) -> (x_hat_BD, acts_BH or (acts_BK, idx_BK)), under no_grad.
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, object]]


class TrainingRows:
    """Batches of one layer of a store, as `SAETrainer` with default loader settings gets them."""

    def __init__(self, store_path: str | Path, layer: int, batch_size: int, *, seed: int = 0,
                 val_fraction: float = 0.05):
        self.store = ActivationStore.open(store_path)
        self.layer, self.d_in = layer, self.store.d_model
        self.cfg = LoaderConfig(batch_size=batch_size, val_fraction=val_fraction, seed=seed,
                                max_norm_ratio=MAX_NORM_RATIO, device_resident="yes")
        self.stats = scan_layer(self.store, layer, max_norm_ratio=MAX_NORM_RATIO, progress=False)
        self.train = self._loader("train")
        self.steps_per_epoch = len(self.train)
        self.input_scale = self._input_scale()

    def _loader(self, split: str) -> ActivationLoader:
        return ActivationLoader(self.store, self.layer, self.cfg, split=split, stats=self.stats, progress=False)

    @torch.no_grad()
    def _input_scale(self) -> float:
        """As SAETrainer._estimate_input_stats: sqrt(d_in / mean ||x||^2) over the first SCALE_ROWS rows."""
        n, sum_sq = 0, torch.zeros((), dtype=torch.float64)
        with contextlib.closing(iter(self._loader("train"))) as batches:
            for x in batches:
                n += x.shape[0]
                sum_sq += x.double().pow(2).sum()
                if n >= SCALE_ROWS:
                    break
        return math.sqrt(self.d_in / (float(sum_sq) / n))

    def total_steps(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * self.steps_per_epoch))

    def batches(self, epochs: float) -> Iterator[torch.Tensor]:
        """The training batches of `epochs` epochs, times the input scale."""
        total, step, epoch = self.total_steps(epochs), 0, 0
        while step < total:
            self.train.set_epoch(epoch)
            with contextlib.closing(iter(self.train)) as epoch_batches:
                for x in epoch_batches:
                    yield x * self.input_scale
                    step += 1
                    if step == total:
                        return
            epoch += 1

    def held_out(self) -> Iterator[torch.Tensor]:
        """The validation chunks' kept rows (held-out text of the training corpus), times the input scale."""
        for x in self._loader("val"):
            yield x * self.input_scale

    def other_store(self, store_path: str | Path, wait_s: float = 3600) -> Iterator[torch.Tensor]:
        """Every kept row of `layer` of another store (its own position-0 and norm rule), times our
        scale. Waits (up to wait_s) while that store is still being extracted."""
        deadline = time.monotonic() + wait_s
        while not (Path(store_path, "zarr.json").exists() and ActivationStore.open(store_path).complete):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{store_path} is missing or incomplete after {wait_s:.0f} s")
            time.sleep(30)
        cfg = LoaderConfig(batch_size=self.cfg.batch_size, val_fraction=0.0, max_norm_ratio=MAX_NORM_RATIO,
                           device_resident="no")
        for x in ActivationLoader(ActivationStore.open(store_path), self.layer, cfg, split="train", progress=False):
            yield x * self.input_scale


@torch.no_grad()
def evaluate(forward: Forward, batches: Iterator[torch.Tensor], d_sae: int) -> dict:
    """FVU, MSE, L0, never-fired fraction (ghosttrack.metrics definitions) of `forward` on `batches`."""
    stats = None
    for x in batches:
        x_hat, acts = forward(x)
        if stats is None:
            stats = ReconstructionStats(x.shape[1], d_sae)
        if isinstance(acts, tuple):  # sparse: (values_BK, indices_BK)
            values, idx = acts
            active = values > 0
            fired = torch.zeros(d_sae, dtype=torch.int64).index_add_(0, idx.reshape(-1),
                                                                      active.reshape(-1).to(torch.int64))
            l0 = active.sum(1)
        else:
            active = acts > 0
            fired, l0 = active.sum(0), active.sum(1)
        stats.update(x, x_hat.float(), l0, fired)
    if stats is None:
        raise ValueError("no rows to evaluate on")
    res = stats.result()
    return {k: res[k] for k in ("rows", "fvu", "mse", "l0", "never_fired_fraction", "dense_fraction")}
