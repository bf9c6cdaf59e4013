"""The trainer follows its recipe step by step, so that a one-line slip in it fails here:
the decoder gradient loses its component along each row, gradients are clipped, the optimiser's
learning rate follows warm-up + schedule, the sparsity coefficient ramps up, AuxK sends gradient to
dead latents only, the input scale and the outlier rule's median come from training chunks only,
and the saved SAE (input scale folded in) reconstructs raw rows as well as validation measured."""
import dataclasses

import numpy as np
import pytest
import torch

from ghosttrack.metrics import fvu
from ghosttrack.sae.config import TopKSAEConfig
from ghosttrack.sae import load_sae
from ghosttrack.sae.module import SparseAutoencoder
from ghosttrack.store.loader import split_chunks
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.stats import row_norms
from ghosttrack.store.writer import StoreWriter
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.schedule import lr_factor
from ghosttrack.train.trainer import FINAL_DIR, SAETrainer

from trainer_data import CONTEXT, one_thread, sparse_rows  # noqa: F401 - fixture

D, H, N, CHUNK = 16, 64, 8192, 512
pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, *, scale: float, val_scale: float = 1.0, val_fraction: float = 0.25, seed: int = 0) -> None:
    """Sparse rows times `scale`; the rows of the chunks the loader holds out for validation also
    times `val_scale` (so that statistics taken from them differ from the training rows')."""
    x = sparse_rows(N, D, 2 * D, 2, seed=3) * scale
    _, val = split_chunks(N // CHUNK, val_fraction, seed)
    for c in val:
        x[c * CHUNK:(c + 1) * CHUNK] *= val_scale
    positions = (np.arange(N) % CONTEXT).astype(np.int32)
    attrs = {"model": "synthetic", "revision": None, "hook": "resid_post", "context_length": CONTEXT,
             "tokenizer": "none", "corpus": {"kind": "synthetic"}}
    with StoreWriter.open(path, layers=[0], d_model=D, target_tokens=N, chunk_tokens=CHUNK, attrs=attrs) as w:
        w.append({0: x}, np.zeros(N, np.int32), positions, np.arange(N) // CONTEXT)
        w.close(complete=True)


def _cfg(**kw):
    base = dict(batch_size=256, epochs=2, lr=1e-2, log_every=1, checkpoint_every=1000, device="cpu",
                val_fraction=0.25, warmup_fraction=0.25, sparsity_warmup_fraction=0.5, grad_clip=0.05,
                lr_schedule="cosine", min_lr_ratio=0.1)
    return TrainerConfig(**{**base, **kw})


SAE = TopKSAEConfig(d_in=D, d_sae=H, k=3, aux_k=8, dead_tokens=300)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One short TopK run on rows scaled by 100, with every optimiser step and loss call recorded."""
    root = tmp_path_factory.mktemp("recipe")
    _write(root / "store", scale=100.0)
    store = ActivationStore.open(root / "store")
    trainer = SAETrainer(store, 0, SAE, _cfg(), root / "run", progress=False)
    steps, scales = [], []
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)

    def before_step(opt, args, kwargs):
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        W, g = trainer.sae.W_dec, trainer.sae.W_dec.grad
        along = (torch.linalg.vecdot(g, W.detach()) / (W.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-30)).abs().max()
        steps.append({"lr": opt.param_groups[0]["lr"], "along_rows": float(along),
                      "grad_norm": float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))})

    optimizer.register_step_pre_hook(before_step)
    trainer.loss_module.register_forward_pre_hook(lambda module, args: scales.append(float(args[2])))
    trainer.run()
    return {"trainer": trainer, "store": store, "steps": steps, "scales": scales, "run": root / "run"}


def test_decoder_gradient_has_no_component_along_the_decoder_rows(recorded):
    assert len(recorded["steps"]) == recorded["trainer"].total_steps
    assert max(s["along_rows"] for s in recorded["steps"]) < 1e-4


def test_the_gradient_norm_is_clipped(recorded):
    clip = recorded["trainer"].cfg.grad_clip
    assert max(s["grad_norm"] for s in recorded["steps"]) <= clip * (1 + 1e-4)
    # Clipping was doing something: the unclipped norms (logged) exceeded the limit.
    assert max(e["grad_norm"] for e in recorded["trainer"].state.history["train"]) > 2 * clip


def test_the_optimiser_learning_rate_follows_warmup_and_schedule(recorded):
    trainer = recorded["trainer"]
    cfg, total = trainer.cfg, trainer.total_steps
    expected = [cfg.lr * lr_factor(s, total, cfg.lr_schedule, warmup_fraction=cfg.warmup_fraction,
                                   decay_fraction=cfg.decay_fraction, min_lr_ratio=cfg.min_lr_ratio)
                for s in range(total)]
    used = [s["lr"] for s in recorded["steps"]]
    assert used == pytest.approx(expected, rel=1e-9)
    warm = int(cfg.warmup_fraction * total)
    assert used[0] == pytest.approx(cfg.lr / warm) and max(used) == pytest.approx(cfg.lr)
    assert used[-1] < 0.2 * cfg.lr


def test_the_sparsity_coefficient_ramps_up(recorded):
    trainer = recorded["trainer"]
    warm = int(trainer.cfg.sparsity_warmup_fraction * trainer.total_steps)
    assert warm > 3
    expected = [min(1.0, (s + 1) / warm) for s in range(trainer.total_steps)]
    assert recorded["scales"] == pytest.approx(expected)


def test_the_saved_sae_reconstructs_raw_rows_as_validation_measured(recorded):
    """FVU does not depend on units: the folded SAE on raw rows (x100) must match validation's FVU
    (computed on scaled rows) to 1%; forgetting to fold the scale into b_dec or W_enc breaks it."""
    trainer, store = recorded["trainer"], recorded["store"]
    _, val = split_chunks(store.n_chunks, trainer.cfg.val_fraction, trainer.cfg.seed)
    x = torch.from_numpy(np.concatenate([np.asarray(store.read_chunk(0, c))[trainer.stats.keep(c)]
                                         for c in val]).astype(np.float32))
    sae = load_sae(recorded["run"] / FINAL_DIR)
    with torch.no_grad():
        raw = fvu(x, sae(x))
    measured = trainer.state.history["val"][-1]["fvu"]
    assert raw == pytest.approx(measured, rel=0.01)
    assert measured < 0.5  # and the SAE did learn something


def test_auxk_sends_gradient_to_dead_latents_only():
    torch.manual_seed(0)
    with_aux = SparseAutoencoder(dataclasses.replace(SAE, aux_coeff=1.0))
    without = SparseAutoencoder(dataclasses.replace(SAE, aux_coeff=0.0))
    without.load_state_dict(with_aux.state_dict())
    x = torch.randn(64, D)
    dead = torch.zeros(H, dtype=torch.bool)
    dead[torch.randperm(H)[:20]] = True
    since_fired = torch.where(dead, SAE.dead_tokens + 1, 0).long()
    for sae in (with_aux, without):
        sae.training_loss(x, tokens_since_fired_H=since_fired, sparsity_scale=1.0, fused=False).loss.backward()
    # What AuxK adds to the gradient, per latent (encoder column, decoder row).
    aux_W_enc = (with_aux.W_enc.grad - without.W_enc.grad).abs().sum(0)
    aux_W_dec = (with_aux.W_dec.grad - without.W_dec.grad).abs().sum(1)
    assert (aux_W_enc[dead] > 0).sum() >= SAE.aux_k and (aux_W_dec[dead] > 0).sum() >= SAE.aux_k
    assert (aux_W_enc[~dead] == 0).all() and (aux_W_dec[~dead] == 0).all()


def test_input_scale_and_outlier_median_come_from_training_chunks_only(tmp_path):
    _write(tmp_path / "store", scale=1.0, val_scale=2.5)
    store = ActivationStore.open(tmp_path / "store")
    cfg = _cfg(epochs=0.2, max_norm_ratio=None)
    trainer = SAETrainer(store, 0, SAE, cfg, tmp_path / "run", progress=False)
    trainer.run()
    train, _ = split_chunks(store.n_chunks, cfg.val_fraction, cfg.seed)
    rows = np.concatenate([np.asarray(store.read_chunk(0, c), np.float64)[trainer.stats.keep(c)] for c in train])
    expected_scale = np.sqrt(D / np.mean(np.sum(rows ** 2, axis=1)))
    assert trainer.state.input_scale == pytest.approx(expected_scale, rel=0.02)

    with_rule = SAETrainer(store, 0, SAE, _cfg(epochs=0.2, max_norm_ratio=3.0), tmp_path / "run2", progress=False)
    positions = [np.asarray(store.positions(*store.chunk_bounds(c))) for c in train]
    norms = np.concatenate([row_norms(store.read_chunk(0, c))[p != 0] for c, p in zip(train, positions)])
    assert with_rule.stats.median_norm == pytest.approx(float(np.median(norms)), rel=1e-6)
