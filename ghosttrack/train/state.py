"""The trainer's own progress record, RNG snapshots, and the checks --resume makes."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.train.config import RESUME_FREE

if TYPE_CHECKING:
    from ghosttrack.train.trainer import SAETrainer


@dataclass
class TrainingState:
    """Where a run stands; saved in trainer_state.pt next to the model and optimizer."""

    step: int = 0
    """Optimisation steps done."""
    input_scale: float = 1.0
    """Activations are multiplied by this before the SAE sees them (E||x * s||^2 = d_in)."""
    data_mean: torch.Tensor | None = None
    """(D,) mean training row in scaled units (b_dec's initial value)."""
    best_val_loss: float | None = None
    best_step: int | None = None
    last_checkpoint_step: int | None = None
    finished: bool = False
    max_dead: int | None = None
    """How many latents can count as dead before the next log step (decided at log steps; None: any)."""
    history: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data_mean"] = None if self.data_mean is None else self.data_mean.cpu()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingState":
        return cls(**data)


def rng_state() -> dict[str, Any]:
    """Every RNG a step could draw from (the loop itself draws none; this keeps it exact if one does)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_resumable(saved: dict[str, Any], trainer: "SAETrainer") -> None:
    """GhostTrackError naming every difference between the saved run and the one asked for."""
    where = trainer.out_dir
    have_world = saved.get("processes", 1)
    if have_world != trainer.world and not saved["training"].get("finished"):
        raise GhostTrackError(f"cannot resume {where}: it was trained by {have_world} data-parallel processes and "
                              f"this run has {trainer.world} (the batch order depends on it); resume with "
                              f"{have_world} (accelerate launch --num_processes {have_world}), or pass --overwrite")
    have_store, want_store = saved["store"], trainer._store_identity()
    if have_store["d_model"] != want_store["d_model"]:
        raise GhostTrackError(f"cannot resume {where}: it was trained on d_model {have_store['d_model']}, "
                              f"store {trainer.store.path} has d_model {want_store['d_model']}; "
                              f"pass another --out (or --overwrite to start over)")
    diffs = [f"store {k}: {have_store.get(k)!r} -> {want_store[k]!r}" for k in ("layer", "n_tokens", "model")
             if have_store.get(k) != want_store[k]]
    have_sae, want_sae = saved["sae_config"], trainer.sae_cfg.to_dict()
    diffs += [f"{k}: {have_sae.get(k)!r} -> {want_sae.get(k)!r}" for k in sorted(set(have_sae) | set(want_sae))
              if have_sae.get(k) != want_sae.get(k)]
    have_cfg, want_cfg = saved["trainer_config"], trainer.cfg.to_dict()
    diffs += [f"{k}: {have_cfg.get(k)!r} -> {want_cfg.get(k)!r}" for k in sorted(set(have_cfg) | set(want_cfg))
              if k not in RESUME_FREE and have_cfg.get(k) != want_cfg.get(k)]
    if diffs:
        raise GhostTrackError(f"cannot resume {where}: it was started with other settings ({'; '.join(diffs)}); "
                              f"resume with the same options, or pass --overwrite to start over")
