"""SAE quality on real activations at equal budgets: our defaults, a plain loop and the peers.

Every SAE here trains on exactly the rows `ghosttrack train` sees (bench/quality_rows.py: same
skipped rows, split, order and input scale) and is scored the same way (ghosttrack/metrics.py):
FVU, L0 and never-fired latents on the store's held-out chunks (the training corpus) and on every
row of a second store of another kind of text. Budgets are in epochs of the training store.

Stores (SmolLM2-135M, 128-token sequences; commands in bench/quality_report.py and the results):
--store (default: 40k tokens of the gensim news sample) to train on and score on its validation
chunks, --other-store (default: 20k tokens of the Wikipedia dump sample) scored on all its rows. Then:

    python bench/train_quality.py --suite defaults            # schedules x epochs, pre-encoder bias, clip, AuxK
    python bench/train_quality.py --suite peers --peers       # plain loop, SAELens, sparsify (in .venv-peers)
    python bench/train_quality.py --suite archs               # relu, jumprelu, topk at two layers
    python bench/train_quality.py --render-only               # tables from runs/quality/results/*.json

Each run writes runs/quality/results/<run>.json as it finishes (a finished run is not redone
unless --rerun), so that suites can run in parallel processes; the tables in
bench/results/train_quality_<tag>.md are made from every result there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_rows import TrainingRows, evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WIDTH, BATCH = 4608, 256  # 8 x d_model of SmolLM2-135M; rows per step for every SAE


def ours(arch: str, layer: int, epochs: float, **options) -> dict:
    return {"kind": "ours", "arch": arch, "layer": layer, "epochs": epochs, "options": options}


def peer(kind: str, settings: str, layer: int = 18, epochs: float = 2, k: int = 32) -> dict:
    return {"kind": kind, "arch": "topk", "layer": layer, "epochs": epochs, "settings": settings, "k": k}


# Every option that a comparison varies is spelt out, so that a run means the same after the defaults change.
BASE = {"k": 32, "lr_schedule": "constant-decay", "pre_encoder_bias": True, "grad_clip": 1.0}
SUITES: dict[str, dict[str, dict]] = {
    "defaults": {
        **{f"topk-{s}-{e}ep": ours("topk", 18, e, **{**BASE, "lr_schedule": s})
           for e in (2, 1, 5) for s in ("constant-decay", "cosine")},
        "topk-no-pre-bias-2ep": ours("topk", 18, 2, **{**BASE, "pre_encoder_bias": False}),
        "topk-no-clip-2ep": ours("topk", 18, 2, **{**BASE, "grad_clip": 0.0}),
        # The pre-encoder bias pair again with another seed (another split, init and order).
        "topk-constant-decay-2ep-seed1": ours("topk", 18, 2, **{**BASE, "seed": 1}),
        "topk-no-pre-bias-2ep-seed1": ours("topk", 18, 2, **{**BASE, "pre_encoder_bias": False, "seed": 1}),
        "topk-cosine-2ep-seed1": ours("topk", 18, 2, **{**BASE, "lr_schedule": "cosine", "seed": 1}),
        "topk-no-pre-bias-1ep": ours("topk", 18, 1, **{**BASE, "pre_encoder_bias": False}),
        # A third seed for the two comparisons that decided the defaults.
        **{f"topk-{name}-2ep-seed2": ours("topk", 18, 2, **{**BASE, **opts, "seed": 2})
           for name, opts in {"constant-decay": {}, "cosine": {"lr_schedule": "cosine"},
                              "no-pre-bias": {"pre_encoder_bias": False}}.items()},
        # AuxK counts a latent dead after 200k tokens by default: more than these budgets, so it never acts.
        "topk-auxk-dead20k-2ep": ours("topk", 18, 2, **{**BASE, "dead_tokens": 20_000}),
        # Every latent fired within 20k training tokens, so AuxK never acted there; 2k tokens makes it act.
        "topk-no-pre-bias-auxk-dead2k-2ep": ours("topk", 18, 2, **{**BASE, "pre_encoder_bias": False,
                                                                   "dead_tokens": 2_000}),
    },
    "peers": {
        "plain-topk-2ep": {"kind": "plain", "arch": "topk", "layer": 18, "epochs": 2, "k": 32, "lr": 1e-3},
        "saelens-own-2ep": peer("saelens", "own"), "saelens-ours-2ep": peer("saelens", "ours"),
        "sparsify-own-2ep": peer("sparsify", "own"), "sparsify-ours-2ep": peer("sparsify", "ours"),
        # The chosen defaults against the best peer at a longer budget.
        "topk-defaults-5ep": ours("topk", 18, 5, **{**BASE, "pre_encoder_bias": False}),
        "sparsify-own-5ep": peer("sparsify", "own", epochs=5),
        "plain-topk-5ep": {"kind": "plain", "arch": "topk", "layer": 18, "epochs": 5, "k": 32, "lr": 1e-3},
        "saelens-own-5ep": peer("saelens", "own", epochs=5),
    },
    "archs": {f"{arch}-L{layer}-2ep": ours(arch, layer, 2, **{k: v for k, v in BASE.items() if k != "k"})
              for layer in (18, 6) for arch in ("relu", "jumprelu", "topk")},
    # The defaults (L0 coefficient 1, threshold from 0.01) gave L0 ~210 here, and a coefficient of 3 changed
    # little: under Adam a threshold moves about lr per step whatever the coefficient, so in a few hundred
    # steps it cannot climb far from its start. A higher start aims at the seed's 50-100 band.
    "jumprelu": {"jumprelu-L18-l0-3.0-2ep": ours("jumprelu", 18, 2, l0=3.0, **{k: v for k, v in BASE.items() if k != "k"}),
                 **{f"jumprelu-L{layer}-init0.5-2ep": ours("jumprelu", layer, 2, init_threshold=0.5,
                                                           **{k: v for k, v in BASE.items() if k != "k"})
                    for layer in (18, 6)}},
}


# ------------------------------------------------------------------ one run
def run_ours(spec: dict, rows: TrainingRows, args, out: Path) -> dict:
    from ghosttrack.sae import load_sae
    from ghosttrack.train.layers import configs_from_options, open_training_store, train_sae_for_layer

    options = {"arch": spec["arch"], "d_hidden": WIDTH, "batch_size": BATCH, "epochs": spec["epochs"],
               "device": "cpu", "seed": 0, "log_every": 20, "checkpoint_every": 10_000, **spec["options"]}
    store = open_training_store(args.store)
    sae_cfg, cfg = configs_from_options(_as_cli_options(options), store.d_model)
    for key, value in spec["options"].items():  # a run must mean what its spec says
        got = getattr(cfg, key, getattr(sae_cfg, key, None))
        if key not in ("l0", "l1") and got != value:
            raise SystemExit(f"{spec}: {key} came out as {got!r}, not {value!r}")
    start = time.perf_counter()
    summary = train_sae_for_layer(store, spec["layer"], sae_cfg, cfg, out, overwrite=True, options=options,
                                  progress=False)
    wall = time.perf_counter() - start
    history = json.loads((out / f"layer_{spec['layer']}" / "history.json").read_text())
    if abs(history["input_scale"] / rows.input_scale - 1) > 1e-9:
        raise SystemExit(f"the bench's rows differ from the trainer's: input scale {rows.input_scale} "
                         f"vs {history['input_scale']}")
    sae = load_sae(out / f"layer_{spec['layer']}" / "final")
    scale = rows.input_scale

    def forward(x):  # the saved SAE takes raw activations; the bench hands scaled ones
        acts = sae.encode(x / scale)
        return sae.decode(acts) * scale, acts

    return {"wall_s": wall, "tokens": summary["tokens"], "train_dead_fraction": summary["dead_fraction"],
            "sae_config": sae_cfg.to_dict(), "trainer_config": cfg.to_dict(), "scores": score(forward, rows, args),
            **({"threshold": threshold_moves(sae, history)} if spec["arch"] == "jumprelu" else {})}


def _as_cli_options(options: dict) -> dict:
    """Field names -> the option names `configs_from_options` reads (a bool field shown as the flag
    that turns it off, like --no-pre-encoder-bias, takes the opposite value)."""
    import dataclasses

    from ghosttrack.config_fields import param_name
    from ghosttrack.train.config import TrainerConfig

    out = dict(options)
    for field in dataclasses.fields(TrainerConfig):
        if field.name in options and param_name(field) != field.name:
            value = out.pop(field.name)
            out[param_name(field)] = (not value) if field.metadata.get("invert") else value
    return out


def threshold_moves(sae, history: dict) -> dict:
    """How the JumpReLU thresholds moved from their start (scaled units, like init_threshold)."""
    thr = sae.threshold.detach().double() * history["input_scale"]
    start = history["sae_config"]["init_threshold"]
    moved = (thr - start).abs() > 1e-3 * start
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    return {"init": start, "moved_fraction": float(moved.double().mean()),
            "quantiles": dict(zip(["min", "p10", "median", "p90", "max"], torch.quantile(thr, q).tolist())),
            "at_zero_fraction": float((thr == 0).double().mean())}


def run_plain(spec: dict, rows: TrainingRows, args) -> dict:
    from plain_sae import plain_topk_forward, train_plain_topk

    start = time.perf_counter()
    params = train_plain_topk(rows.batches(spec["epochs"]), rows.d_in, WIDTH, spec["k"], lr=spec["lr"])
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": rows.total_steps(spec["epochs"]) * BATCH,
            "scores": score(lambda x: plain_topk_forward(params, x, spec["k"]), rows, args)}


def run_peer(spec: dict, args) -> dict:
    """A peer trains in its own venv (bench/quality_peers.py), on the same rows, scored the same way."""
    python = Path(args.peers_python)
    if not python.exists():
        raise SystemExit(f"{python} does not exist: make the peers' venv (README: Benchmarks) or pass --peers-python")
    cmd = [str(python), str(ROOT / "bench" / "quality_peers.py"), json.dumps(
        {**spec, "store": args.store, "other_store": args.other_store, "width": WIDTH, "batch": BATCH,
         "threads": args.threads})]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
                "stderr_tail": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def score(forward, rows: TrainingRows, args) -> dict:
    return {"held_out": evaluate(forward, rows.held_out(), WIDTH),
            "other": evaluate(forward, rows.other_store(args.other_store), WIDTH)}


# ------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="runs/quality/news_store", help="training store")
    p.add_argument("--other-store", default="runs/quality/wiki_store", help="store of another kind of text")
    p.add_argument("--suite", action="append", default=[], help=f"one of {', '.join(SUITES)} (repeatable)")
    p.add_argument("--runs", default=None, help="comma list of run names (instead of whole suites)")
    p.add_argument("--peers", action="store_true", help="also run the peers' runs of the chosen suites")
    p.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's choice)")
    p.add_argument("--rerun", action="store_true", help="redo runs whose result exists")
    p.add_argument("--epochs", type=float, default=None, help="override every run's epochs (smoke tests)")
    p.add_argument("--tag", default="cpu", help="results file suffix")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    results_dir = Path(args.out) / "results"
    if not args.render_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        every = {name: (suite, spec) for suite, runs in SUITES.items() for name, spec in runs.items()}
        names = args.runs.split(",") if args.runs else [n for s in args.suite for n in SUITES[s]]
        chosen = {name: {**every[name][1], "suite": every[name][0]} for name in names}
        for spec in chosen.values():
            spec["epochs"] = args.epochs or spec["epochs"]
        for name, spec in chosen.items():
            if spec["kind"] in ("saelens", "sparsify") and not (args.peers or args.runs):
                continue
            path = results_dir / f"{name}.json"
            if path.exists() and not args.rerun:
                continue
            print(f"{time.strftime('%H:%M:%S')} {name} ...", file=sys.stderr, flush=True)
            if spec["kind"] in ("saelens", "sparsify"):
                result = run_peer(spec, args)
            else:
                rows = TrainingRows(args.store, spec["layer"], BATCH, seed=spec.get("options", {}).get("seed", 0))
                result = (run_plain(spec, rows, args) if spec["kind"] == "plain"
                          else run_ours(spec, rows, args, Path(args.out) / "sae" / name))
            record = {"name": name, "suite": spec["suite"], "spec": spec, "command": " ".join(sys.argv), "threads": torch.get_num_threads(),
                      "store": args.store, "other_store": args.other_store, **result}
            results_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
            os.replace(tmp, path)
            print(f"{time.strftime('%H:%M:%S')} {name}: {line(record)}", file=sys.stderr, flush=True)
    from quality_report import render

    render(results_dir, RESULTS, args.tag, machine=f"CPU: {os.cpu_count()}-core {platform.machine()} (no GPU)")


def line(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    h, o = r["scores"]["held_out"], r["scores"]["other"]
    return f"held-out FVU {h['fvu']:.4f}  other FVU {o['fvu']:.4f}  L0 {h['l0']:.1f}  {r['wall_s']:.0f} s"


if __name__ == "__main__":
    main()
