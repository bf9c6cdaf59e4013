"""Peers' TopK SAEs on the rows our trainer sees; run in the peers' venv by bench/train_quality.py.

    .venv-peers/bin/python bench/quality_peers.py '{"kind": "saelens", "settings": "own", ...}'

SAELens: its own `SAETrainer` (Adam, grad-norm clip 1.0, its TopK SAE) with our batches as the
data provider. sparsify: its `SparseCoder` and the step of its `Trainer` for the fvu loss (b_dec
set to the first batch's mean, unit-norm decoder before each forward, the gradient along the
decoder rows removed, loss = fvu + auxk_alpha * auxk), since its Trainer only takes a model and
tokens. Settings:

    own   the library's defaults. SAELens: lr 3e-4, constant, aux_loss_coefficient 1.0, dead after
          1000 steps, its decoder-norm rescaling. sparsify: SignSGD in a ScheduleFree wrapper
          (momentum 0.95), lr 5e-3 / sqrt(H / 2^14), no AuxK.
    ours  our trainer's defaults put into the library: Adam lr 1e-3, warm-up 2%, constant, linear
          decay to 0 over the last 20% of the steps, AuxK weight 1/32, dead after 200k tokens.

The result (one JSON line on stdout) holds the same scores as our runs (quality_rows.evaluate).
"""
from __future__ import annotations

import json
import math
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_rows import TrainingRows, evaluate  # noqa: E402

OUR_LR, OUR_WARMUP, OUR_DECAY, OUR_AUX, OUR_DEAD_TOKENS = 1e-3, 0.02, 0.2, 1 / 32, 200_000


def train_saelens(spec: dict, rows: TrainingRows, total: int):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    B, ours = spec["batch"], spec["settings"] == "ours"
    sae_options = {"aux_loss_coefficient": OUR_AUX} if ours else {}
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=rows.d_in, d_sae=spec["width"], k=spec["k"], **sae_options))
    schedule = (dict(lr=OUR_LR, lr_scheduler_name="constant", lr_warm_up_steps=int(OUR_WARMUP * total),
                     lr_decay_steps=round(OUR_DECAY * total), lr_end=0.0,
                     dead_feature_window=max(1, OUR_DEAD_TOKENS // B)) if ours else {})
    schedule.setdefault("lr_end", 3e-4 / 10)  # what SAELens's runner config sets when none is given
    cfg = SAETrainerConfig(total_training_samples=total * B, train_batch_size_samples=B, device="cpu", **schedule)
    SAETrainer(cfg, sae, data_provider=rows.batches(spec["epochs"])).fit()
    sae.eval()

    def forward(x):
        acts = sae.encode(x)
        return sae.decode(acts), acts

    settings = {"lr": cfg.lr, "scheduler": cfg.lr_scheduler_name, "warm_up_steps": cfg.lr_warm_up_steps,
                "decay_steps": cfg.lr_decay_steps, "aux_loss_coefficient": sae.cfg.aux_loss_coefficient,
                "dead_feature_window_steps": cfg.dead_feature_window,
                "rescale_acts_by_decoder_norm": sae.cfg.rescale_acts_by_decoder_norm,
                "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input}
    return forward, settings, f"sae-lens {version('sae-lens')}"


def train_sparsify(spec: dict, rows: TrainingRows, total: int):
    from sparsify import SparseCoder, SparseCoderConfig

    from ghosttrack.train.schedule import lr_factor

    B, H, ours = spec["batch"], spec["width"], spec["settings"] == "ours"
    torch.manual_seed(0)
    sae = SparseCoder(rows.d_in, SparseCoderConfig(num_latents=H, k=spec["k"]), device="cpu", dtype=torch.float32)
    if ours:
        opt = torch.optim.Adam(sae.parameters(), lr=OUR_LR)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
            s, total, "constant-decay", warmup_fraction=OUR_WARMUP, decay_fraction=OUR_DECAY))
        auxk_alpha, dead_tokens = OUR_AUX, OUR_DEAD_TOKENS
        settings = {"optimizer": "adam", "lr": OUR_LR, "schedule": "constant-decay"}
    else:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = 5e-3 / math.sqrt(H / 2**14)
        opt, sched = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95), None
        opt.train()
        auxk_alpha, dead_tokens = 0.0, 10_000_000
        settings = {"optimizer": "signum (schedule-free)", "lr": lr}
    since_fired = torch.zeros(H, dtype=torch.long)
    for step, x in enumerate(rows.batches(spec["epochs"])):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead = since_fired > dead_tokens if auxk_alpha > 0 else None
        out = sae(x=x, y=x, dead_mask=dead)
        (out.fvu + auxk_alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        since_fired += x.shape[0]
        since_fired[out.latent_indices.flatten()] = 0
    if not ours:
        opt.eval()  # schedule-free: the averaged weights are the trained ones
    sae.set_decoder_norm_to_unit_norm()

    def forward(x):
        out = sae(x)
        return out.sae_out, (out.latent_acts, out.latent_indices)

    return forward, {**settings, "auxk_alpha": auxk_alpha, "dead_tokens": dead_tokens}, \
        f"eai-sparsify {version('eai-sparsify')}"


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rows = TrainingRows(spec["store"], spec["layer"], spec["batch"])
    total = rows.total_steps(spec["epochs"])
    train = {"saelens": train_saelens, "sparsify": train_sparsify}[spec["kind"]]
    start = time.perf_counter()
    forward, settings, library = train(spec, rows, total)
    wall = time.perf_counter() - start
    with torch.no_grad():
        scores = {"held_out": evaluate(forward, rows.held_out(), spec["width"]),
                  "other": evaluate(forward, rows.other_store(spec["other_store"]), spec["width"])}
    print(json.dumps({"wall_s": wall, "tokens": total * spec["batch"], "library": library, "settings": settings,
                      "input_scale": rows.input_scale, "scores": scores}))


if __name__ == "__main__":
    main()
