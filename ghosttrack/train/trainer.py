"""SAETrainer: trains one SAE on one layer of an activation store, resumably.

Per step: scale the batch (one input scale, estimated before step 0, folded into the
weights at save), forward + loss (the SAE's own `training_loss`, whatever its
architecture), backward, drop the gradient along each decoder row, clip, Adam, LR
schedule (warm-up, then constant-decay or cosine), renormalise decoder rows (and clamp JumpReLU thresholds
at 0), update firing counts.
The loop syncs with the host only every `log_every` steps: there it checks that the
loss stayed finite, logs, and every `checkpoint_every` steps writes trainer_state.pt.
Every other step is a steady-state step: fetching its batch and the step itself read nothing
back from the device (no .item(), no data-dependent shapes; tests/train/test_no_host_sync.py).
The first step of an epoch (the loader uploads the epoch's order; validation precedes it) and
its last step (validation follows) are not steady-state either.
Data parallel (accelerate launch / torchrun, W processes): rank r trains on its slice of each
global batch of W * batch_size rows (the loader reads only that slice), DDP averages the
gradients, and logs, validation and the input scale are reduced over the ranks, so that W
processes follow one process with batch W * batch_size. Ctrl-C is agreed at log steps.
Each epoch ends with a validation pass; the best SAE by validation loss sits in the
layer directory, the last one in `final/`.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ghosttrack.sae.files import HISTORY_FILE, STATE_FILE, save_sae, save_trainer_state, write_json
from ghosttrack.errors import GhostTrackError
from ghosttrack.metrics import FiringTracker, ReconstructionStats
from ghosttrack.sae.module import SparseAutoencoder
from ghosttrack.sae.config import SAEConfig
from ghosttrack.store.loader import ActivationLoader, LoaderConfig, split_chunks
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.stats import scan_layer
from ghosttrack.train.config import TrainerConfig, layer_seed, parse_positions
from ghosttrack.train.runtime import (GracefulInterrupt, check_fused, make_accelerator, make_adam,
                                        resolve_resident)
from ghosttrack.train.schedule import lr_factor
from ghosttrack.train.state import TrainingState, check_resumable, restore_rng, rng_state

FINAL_DIR = "final"


class _LossModule(nn.Module):
    """Calls `sae.training_loss` from forward(), so that a DDP wrapper sees (and syncs) it."""

    def __init__(self, sae: SparseAutoencoder):
        super().__init__()
        self.sae = sae

    def forward(self, x_BD, tokens_since_fired_H, sparsity_scale: float, fused: bool, max_dead: int | None):
        return self.sae.training_loss(x_BD, tokens_since_fired_H=tokens_since_fired_H,
                                      sparsity_scale=sparsity_scale, fused=fused, max_dead=max_dead)


class SAETrainer:
    """Trains `sae_cfg` on `layer` of `store`, writing everything into `out_dir` (see module docstring)."""

    def __init__(self, store: ActivationStore, layer: int, sae_cfg: SAEConfig, cfg: TrainerConfig,
                 out_dir: str | Path, *, metadata: dict[str, Any] | None = None, accelerator=None,
                 progress: bool = True):
        if sae_cfg.d_in != store.d_model:
            raise GhostTrackError(f"SAE d_in {sae_cfg.d_in} does not match the store's d_model {store.d_model}")
        if cfg.fused:
            check_fused(sae_cfg)
        self.store, self.layer, self.sae_cfg, self.cfg = store, layer, sae_cfg, cfg
        self.out_dir = Path(out_dir)
        self.acc = accelerator or make_accelerator(cfg)
        self.device = self.acc.device
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.main = self.acc.is_main_process
        self.progress = progress and self.acc.is_local_main_process
        self.metadata = dict(metadata or {})

        resident = resolve_resident(cfg.device_resident, self.device, store)
        self.loader_cfg = LoaderConfig(batch_size=cfg.batch_size, buffer_batches=cfg.buffer_batches,
                                       val_fraction=cfg.val_fraction, seed=cfg.seed, skip_flagged=cfg.skip_flagged,
                                       max_norm_ratio=cfg.max_norm_ratio, device_resident=resident)
        # The outlier rule's median comes from the training chunks: held-out rows never shape training.
        train_chunks, _ = split_chunks(store.n_chunks, cfg.val_fraction, cfg.seed)
        self.stats = scan_layer(store, layer, skip_flagged=cfg.skip_flagged, max_norm_ratio=cfg.max_norm_ratio,
                                skip_positions=parse_positions(cfg.skip_positions),
                                progress=self.progress, median_chunks=train_chunks)
        self.train_loader = self._loader("train")
        self.val_loader = self._loader("val")
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise GhostTrackError(
                f"layer {layer} has {self.train_loader.n_rows} training rows after skipping "
                f"{self.stats.n_flagged_skipped} flagged and {self.stats.n_outliers_skipped} outlier rows: "
                f"fewer than one batch of {cfg.batch_size} per process; lower --batch-size or extract more tokens")
        self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))

        self.init_seed = layer_seed(cfg.seed, layer)
        torch.manual_seed(self.init_seed)
        self.sae = SparseAutoencoder(sae_cfg, pre_encoder_bias=cfg.pre_encoder_bias).to(self.device)
        optimizer = make_adam(self.sae.parameters(), self.device, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        # The scheduler is stepped by hand: accelerate's wrapper would step it once per process.
        self.loss_module, self.optimizer = self.acc.prepare(_LossModule(self.sae), optimizer)
        self.tracker = FiringTracker(sae_cfg.d_sae, self.device)
        self.window = ReconstructionStats(sae_cfg.d_in, sae_cfg.d_sae, self.device)
        self.window_losses: list[torch.Tensor] = []
        self.window_terms: dict[str, torch.Tensor] = {}
        self.state = TrainingState()

    def _loader(self, split: str) -> ActivationLoader:
        return ActivationLoader(self.store, self.layer, self.loader_cfg, split=split, device=self.device,
                                stats=self.stats, progress=self.progress, rank=self.rank, world=self.world)

    def _sum_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the data-parallel processes (t itself in a single process)."""
        return t if self.world == 1 else self.acc.reduce(t, reduction="sum")

    # ------------------------------------------------------------------ schedules
    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        return lr_factor(step, self.total_steps, c.lr_schedule, warmup_fraction=c.warmup_fraction,
                         decay_fraction=c.decay_fraction, min_lr_ratio=c.min_lr_ratio)

    def _sparsity_scale(self) -> float:
        warm = int(self.cfg.sparsity_warmup_fraction * self.total_steps)
        return 1.0 if warm == 0 else min(1.0, (self.state.step + 1) / warm)

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def _estimate_input_stats(self) -> None:
        """input_scale so that E||x * scale||^2 = d_in, and the mean row (in scaled units)."""
        loader = self._loader("train")
        n, sum_sq, sum_x = 0, torch.zeros((), dtype=torch.float64), torch.zeros(self.store.d_model, dtype=torch.float64)
        with contextlib.closing(iter(loader)) as batches:
            for x in batches:
                x = x.double().cpu()
                n += x.shape[0] * self.world  # every rank's slice of the global batch is as long
                sum_sq += x.pow(2).sum()
                sum_x += x.sum(0)
                if n >= self.cfg.scale_rows:
                    break
        sum_sq, sum_x = (self._sum_ranks(t.to(self.device)).cpu() for t in (sum_sq, sum_x))
        mean_sq_norm = float(sum_sq) / n
        if not mean_sq_norm > 0:
            raise GhostTrackError(f"layer {self.layer}: the first {n} training rows are all zero; "
                                  f"the store looks damaged, re-extract it with --overwrite")
        self.state.input_scale = math.sqrt(self.store.d_model / mean_sq_norm)
        self.state.data_mean = (sum_x / n * self.state.input_scale).float()

    def _start(self, resume_state: dict | None) -> None:
        if resume_state is None:
            self._estimate_input_stats()
            self.sae.init_from_data_(self.state.data_mean.to(self.device))
            self.state.history = {"layer": self.layer, "sae_config": self.sae_cfg.to_dict(),
                                  "trainer_config": self.cfg.to_dict(), "skipped": self._skipped(),
                                  "processes": self.world,
                                  "input_scale": self.state.input_scale, "train": [], "val": []}
            return
        check_resumable(resume_state, self)
        self.state = TrainingState.from_dict(resume_state["training"])
        self.sae.load_state_dict(resume_state["model"])
        self.optimizer.load_state_dict(resume_state["optimizer"])
        self.scheduler.load_state_dict(resume_state["scheduler"])
        self.train_loader.load_state_dict(resume_state["loader"])
        self.tracker.load_state_dict(resume_state["tracker"])
        self.window.load_state_dict(resume_state["window"])
        self.window_losses = [t for t in resume_state["window_losses"].to(self.device)]
        self.window_terms = {k: v.to(self.device) for k, v in resume_state["window_terms"].items()}
        restore_rng(resume_state["rng"])

    def _skipped(self) -> dict[str, Any]:
        s = self.stats
        return {"rows": s.n_rows, "median_norm": s.median_norm, "max_norm_ratio": s.max_norm_ratio,
                "flagged_skipped": s.n_flagged_skipped, "outliers_skipped": s.n_outliers_skipped,
                "skip_positions": list(s.skip_positions), "positions_skipped": s.n_positions_skipped,
                "outlier_fraction": s.n_outliers_skipped / max(1, s.n_rows),
                "train_rows": self.train_loader.n_rows, "val_rows": self.val_loader.n_rows}

    # ------------------------------------------------------------------ the loop
    def run(self, resume_state: dict | None = None, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to the end (or continue `resume_state`); returns the run's summary.

        on_step(step) is called after every optimisation step (tests use it to simulate a kill).
        """
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._start(resume_state)
        if self.state.finished:  # a finished run, maybe copied elsewhere: the summary names where it is now
            return {**self.state.history["summary"], "out_dir": str(self.out_dir)}
        bar = tqdm(total=self.total_steps, initial=self.state.step, unit="step", desc=f"layer {self.layer}",
                   disable=not self.progress, dynamic_ncols=True)
        if self.progress:
            sk = self.state.history["skipped"]
            bar.write(f"layer {self.layer}: {sk['train_rows']:,} training / {sk['val_rows']:,} held-out rows; "
                      f"skipping {sk['flagged_skipped']:,} position-0 rows and {sk['outliers_skipped']:,} rows over "
                      f"{sk['max_norm_ratio']}x the median norm {sk['median_norm']:.3g}; {self.total_steps:,} steps")
        self._tick = (time.perf_counter(), self.state.step)
        if resume_state is None:
            self.state.max_dead = self._latents_that_can_die_soon()
        with bar, GracefulInterrupt() as interrupt:
            while self.state.step < self.total_steps:
                self._run_epoch(bar, interrupt, on_step)
        return self._finish()

    def _run_epoch(self, bar, interrupt, on_step) -> None:
        epoch = self.state.step // self.steps_per_epoch
        self.train_loader.set_epoch(epoch)
        stop = False
        with contextlib.closing(iter(self.train_loader)) as batches:
            for x in batches:
                self._train_step(x)
                self.state.step += 1
                bar.update(1)
                step = self.state.step
                epoch_end = step % self.steps_per_epoch == 0 or step == self.total_steps
                log_step = step % self.cfg.log_every == 0 or step == self.total_steps
                if log_step:
                    self._log(bar)
                # One process stops at the next step; several agree at a log step (a collective).
                stop = interrupt.requested if self.world == 1 else log_step and self._any_rank(interrupt.requested)
                # At an epoch end the checkpoint follows validation, so that a kill or Ctrl-C during
                # validation resumes before it and the validation entry and best SAE are never lost.
                if not epoch_end and (stop or step % self.cfg.checkpoint_every == 0):
                    self._checkpoint()
                if stop and not epoch_end:
                    raise KeyboardInterrupt(f"layer {self.layer} interrupted at step {step}")
                if on_step is not None:
                    on_step(step)
                if epoch_end:
                    break
        self._validate()
        self._checkpoint()
        if stop:
            raise KeyboardInterrupt(f"layer {self.layer} interrupted at step {self.state.step}")

    def _any_rank(self, flag: bool) -> bool:
        """Whether flag is set on any process (a host sync: log steps only)."""
        return bool(self._sum_ranks(torch.tensor(float(flag), device=self.device)) > 0)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bfloat16")

    def _train_step(self, x_BD: torch.Tensor) -> None:
        x_BD = x_BD * self.state.input_scale
        with self._autocast():
            out = self.loss_module(x_BD, self.tracker.tokens_since_fired_H, self._sparsity_scale(), self.cfg.fused,
                                   self.state.max_dead)
        self.acc.backward(out.loss)
        self.sae.remove_parallel_grad_()
        if self.cfg.grad_clip > 0:
            norm = self.acc.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip)
            self.window_terms["grad_norm"] = self.window_terms.get("grad_norm", 0.0) + norm.detach().float()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sae.constrain_()
        fired_H = self._sum_ranks(out.fired_H)
        self.tracker.update(fired_H, x_BD.shape[0] * self.world)
        self.window.update(x_BD, out.x_hat_BD, out.l0_B, out.fired_H, mse=out.mse)
        self.window_losses.append(out.loss.detach().float())
        for name, value in out.terms.items():
            self.window_terms[name] = self.window_terms.get(name, 0.0) + value.float()

    def _window_losses_checked(self) -> list[float]:
        """The losses since the last log, averaged over the ranks (host sync); GhostTrackError at the
        first non-finite one (on every rank alike, so that none is left waiting in a collective)."""
        if self.world > 1 and self.window_losses:  # idempotent: after one reduction all ranks agree
            self.window_losses = list((self._sum_ranks(torch.stack(self.window_losses)) / self.world).unbind())
        losses = torch.stack(self.window_losses).tolist() if self.window_losses else []
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            self._raise_nonfinite(self.state.step - len(losses) + bad[0] + 1)
        return losses

    def _latents_that_can_die_soon(self) -> int | None:
        """How many latents can count as dead (the SAE's dead_tokens, e.g. TopK's AuxK) before the next
        log step: those within that many steps' tokens of the window (a host sync: log steps only).
        The loss bounds its dead-latent work by it (AuxK over min(aux_k, this) latents, none at 0)
        and computes the same result, with no sync of its own. None: the SAE has no such window."""
        window = getattr(self.sae_cfg, "dead_tokens", None)
        if window is None:
            return None
        ahead = self.cfg.log_every * self.cfg.batch_size * self.world
        return int((self.tracker.tokens_since_fired_H + ahead >= window).sum())

    def _log(self, bar) -> None:
        """Host sync: check the loss, append a history entry, update the progress bar."""
        losses = self._window_losses_checked()
        self.state.max_dead = self._latents_that_can_die_soon()
        if self.world > 1:  # the history describes every rank's rows
            self.window.reduce_(self._sum_ranks)
            self.window_terms = {k: self._sum_ranks(v) / self.world for k, v in self.window_terms.items()}
        now, last_step = time.perf_counter(), self._tick[1]
        steps = self.state.step - last_step
        res = self.window.result(self.cfg.dense_threshold)
        entry = {"step": self.state.step, "tokens": self.state.step * self.cfg.batch_size * self.world,
                 "epoch": self.state.step / self.steps_per_epoch, "lr": self.scheduler.get_last_lr()[0],
                 "loss": sum(losses) / max(1, len(losses)), "mse": res.get("mse"), "fvu": res.get("fvu"),
                 "l0": res.get("l0"), "l2_ratio": res.get("l2_ratio"),
                 "dead_fraction": float(self.tracker.dead_fraction(self.cfg.dead_window_tokens)),
                 **{k: float(v) / max(1, len(losses)) for k, v in self.window_terms.items()},
                 "tokens_per_s": steps * self.cfg.batch_size * self.world / max(1e-9, now - self._tick[0])}
        self.state.history["train"].append(entry)
        self._tick = (now, self.state.step)
        self.window = ReconstructionStats(self.sae_cfg.d_in, self.sae_cfg.d_sae, self.device)
        self.window_losses, self.window_terms = [], {}
        bar.set_postfix(loss=f"{entry['loss']:.4g}", fvu=f"{entry['fvu']:.4f}", l0=f"{entry['l0']:.1f}",
                        dead=f"{entry['dead_fraction']:.2%}", tok_s=f"{entry['tokens_per_s']:.0f}", refresh=False)

    def _raise_nonfinite(self, step: int) -> None:
        last = self.state.last_checkpoint_step
        kept = (f"the last good checkpoint (step {last}) is kept in {self.out_dir}" if last is not None
                else "no checkpoint had been written yet")
        raise GhostTrackError(f"layer {self.layer}: the loss became NaN/inf at step {step}; training stopped and "
                              f"{kept}; rerun with a lower --lr (or --dtype float32)")

    @torch.no_grad()
    def _validate(self) -> None:
        """Loss and metrics on the held-out chunks; keeps the best SAE by validation loss."""
        if self.val_loader.n_rows == 0:
            return
        stats = ReconstructionStats(self.sae_cfg.d_in, self.sae_cfg.d_sae, self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sae.eval()
        for x in self.val_loader:
            x = x * self.state.input_scale
            with self._autocast():
                out = self.sae.training_loss(x, fused=self.cfg.fused)
            loss_sum += out.loss.double() * x.shape[0]
            stats.update(x, out.x_hat_BD, out.l0_B, out.fired_H)
        self.sae.train()
        stats.reduce_(self._sum_ranks)  # each rank validated its slice of the held-out rows
        loss_sum = self._sum_ranks(loss_sum)
        res = stats.result(self.cfg.dense_threshold)
        entry = {"step": self.state.step, "epoch": self.state.step / self.steps_per_epoch,
                 "loss": float(loss_sum) / res["rows"], **res,
                 "dead_fraction": float(self.tracker.dead_fraction(self.cfg.dead_window_tokens))}
        if not math.isfinite(entry["loss"]):
            self._raise_nonfinite(self.state.step)
        self.state.history["val"].append(entry)
        if self.state.best_val_loss is None or entry["loss"] < self.state.best_val_loss:
            self.state.best_val_loss, self.state.best_step = entry["loss"], self.state.step
            if self.main:
                self._save_sae(self.out_dir)

    # ------------------------------------------------------------------ files
    def _save_sae(self, directory: Path) -> None:
        folded = self.sae.folded(self.state.input_scale)
        meta = {**self.metadata, "ghosttrack": {**self.metadata.get("ghosttrack", {}),
                                                "input_scale_folded": self.state.input_scale,
                                                "step": self.state.step, "init_seed": self.init_seed,
                                                "trainer_config": self.cfg.to_dict(),
                                                "skipped": self.state.history["skipped"]}}
        save_sae(folded, directory, meta)

    def _checkpoint(self) -> None:
        """Write trainer_state.pt (atomically) and history.json: everything an exact resume needs."""
        self._window_losses_checked()  # never save a state that has gone NaN
        self.state.last_checkpoint_step = self.state.step
        if not self.main:
            return
        epoch = self.state.step // self.steps_per_epoch
        loader = {**self.train_loader.state_dict(), "epoch": epoch,
                  "batches_done": self.state.step - epoch * self.steps_per_epoch}
        save_trainer_state(self.out_dir / STATE_FILE, {
            "format": 1, "processes": self.world, "training": self.state.to_dict(), "sae_config": self.sae_cfg.to_dict(),
            "trainer_config": self.cfg.to_dict(), "store": self._store_identity(),
            "model": self.sae.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "loader": loader, "tracker": self.tracker.state_dict(),
            "window": self.window.state_dict(),
            "window_losses": torch.stack(self.window_losses).cpu() if self.window_losses else torch.zeros(0),
            "window_terms": {k: v.cpu() for k, v in self.window_terms.items()}, "rng": rng_state()})
        write_json(self.out_dir / HISTORY_FILE, self.state.history)

    def _store_identity(self) -> dict[str, Any]:
        return {"path": str(self.store.path), "layer": self.layer, "d_model": self.store.d_model,
                "n_tokens": self.store.n_tokens, "model": self.store.model}

    def _finish(self) -> dict[str, Any]:
        if self.main:
            self._save_sae(self.out_dir / FINAL_DIR)
            if self.state.best_step is None:  # no validation rows: the final SAE is the best one
                self._save_sae(self.out_dir)
        val = self.state.history["val"][-1] if self.state.history["val"] else {}
        train = self.state.history["train"][-1] if self.state.history["train"] else {}
        self.state.history["summary"] = {
            "layer": self.layer, "out_dir": str(self.out_dir), "steps": self.state.step,
            "tokens": self.state.step * self.cfg.batch_size * self.world, "best_step": self.state.best_step,
            "best_val_loss": self.state.best_val_loss, "val_fvu": val.get("fvu"), "val_l0": val.get("l0"),
            "val_mse": val.get("mse"), "dead_fraction": train.get("dead_fraction"),
            "val_never_fired_fraction": val.get("never_fired_fraction"), "dense_fraction": val.get("dense_fraction"),
            "skipped": self.state.history["skipped"],
            "tokens_per_s": _median([e["tokens_per_s"] for e in self.state.history["train"]]),
        }
        self.state.finished = True
        self._checkpoint()
        return self.state.history["summary"]


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None
