"""Hypothesis tracking: matching against the bare blocked matmul, the tracker against the bare encoders.

Side by side in one run, interleaved, median of --repeats:

Matching (two SAEs of --latents latents, random unit decoder rows, JumpReLU thresholds):
  bare blocked matmul -- the same (src_block x dst_block) tiles of A @ B^T, nothing else: the
                         arithmetic floor of any decoder comparison that never holds H x H;
  match_decoders      -- folded scores of every tile, the running top-N merge, per-edge columns.

Co-activation (--coact-latents latents per layer, --coact-rows held-out rows, --coact-l0 active per row):
  dense blocked matmul -- A[:, block]^T @ B on the dense activations, block by block: the co-occurrence
                          sums as a dense computation would get them (no correlation, no top-N);
  coactivation_edges   -- the sparse sums, correlations, co-firing counts and the running top-N.

Tracking (--layers SAEs of --d-sae latents on --tokens tokens; layer k+1's SAE is layer k's with
latents shuffled and noise added, and its inputs are layer k's plus noise, so latents persist):
  bare encode         -- sae.encode of every layer (dense), the work any per-token method does;
  encode + track      -- the same encodes, sparse codes, and HypothesisTracker.track over all layers;
  track only          -- HypothesisTracker.track on codes already made;
  plain-Python ref.   -- reference.track_reference on the first --ref-tokens tokens (tokens/s).

    python bench/bench_tracks.py            # 24,576 latents x d 576; tracker 4 x 4,608 latents, 4,096 tokens
    python bench/bench_tracks.py --quick    # small, seconds
Results: bench/results/tracks_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: proves the script works in seconds")
    p.add_argument("--latents", type=int, default=24_576, help="latents of each matched SAE")
    p.add_argument("--d-model", type=int, default=576)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--src-block", type=int, default=2048)
    p.add_argument("--dst-block", type=int, default=8192)
    p.add_argument("--coact-latents", type=int, default=8192)
    p.add_argument("--coact-rows", type=int, default=4096)
    p.add_argument("--coact-l0", type=int, default=32)
    p.add_argument("--layers", type=int, default=4, help="tracked layers")
    p.add_argument("--d-sae", type=int, default=4608, help="latents of each tracked SAE")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--ref-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="results file stem (default tracks_<device>[_quick])")
    return p.parse_args(argv)


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()} ({os.cpu_count()}-core {platform.machine()} host)"
    return f"CPU: {os.cpu_count()}-core {platform.machine()} (no GPU)"


def timed(device: str, fn) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def random_jumprelu(d: int, h: int, seed: int):
    from ghosttrack.sae import JumpReluSAEConfig, SparseAutoencoder

    torch.manual_seed(seed)
    sae = SparseAutoencoder(JumpReluSAEConfig(d, h))
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(h) + 0.5)
    return sae.requires_grad_(False)


def bench_matching(args) -> dict:
    from ghosttrack.tracks.match import BlockSizes, folded_decoder, match_decoders

    dev = torch.device(args.device)
    dec_a = folded_decoder(random_jumprelu(args.d_model, args.latents, 0)).to(dev)
    dec_b = folded_decoder(random_jumprelu(args.d_model, args.latents, 1)).to(dev)
    blocks = BlockSizes(args.src_block, args.dst_block)
    H = args.latents

    @torch.inference_mode()
    def bare():
        for s0 in range(0, H, blocks.src_block):
            a = dec_a[s0:s0 + blocks.src_block]
            for d0 in range(0, H, blocks.dst_block):
                a @ dec_b[d0:d0 + blocks.dst_block].t()

    def match():
        match_decoders(dec_a, dec_b, args.top, blocks=blocks, progress=False)

    times = {"bare blocked matmul": [], "match_decoders": []}
    for _ in range(args.repeats):
        times["bare blocked matmul"].append(timed(args.device, bare))
        times["match_decoders"].append(timed(args.device, match))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = 2.0 * H * H * args.d_model
    return {"latents": H, "d_model": args.d_model, "top": args.top, "src_block": blocks.src_block,
            "dst_block": blocks.dst_block, "seconds": times, "median_seconds": med,
            "gflop_per_s": {k: flops / v / 1e9 for k, v in med.items()},
            "ratio_match_vs_bare": med["bare blocked matmul"] / med["match_decoders"]}


def unit_noise(d: int, h: int, gen: torch.Generator) -> torch.Tensor:
    """(d, h) Gaussian columns of unit norm."""
    z = torch.randn(d, h, generator=gen)
    return z / z.norm(dim=0, keepdim=True)


def bench_coactivation(args) -> dict:
    from ghosttrack.tracks.coact import coactivation_edges
    from ghosttrack.tracks.codes import SparseCodes

    n, h, l0 = args.coact_rows, args.coact_latents, args.coact_l0
    gen = torch.Generator().manual_seed(0)

    def codes(shared: torch.Tensor | None):
        # l0 random latents per row with activations in (0, 1]; half of them copied from `shared` when given.
        idx = torch.rand(n, h, generator=gen).topk(l0, dim=1).indices
        if shared is not None:
            idx[:, : l0 // 2] = shared[:, : l0 // 2]
        dense = torch.zeros(n, h)
        dense.scatter_(1, idx, torch.rand(n, l0, generator=gen) + 1e-3)
        return idx, dense.to(args.device)

    idx_a, A = codes(None)
    _, B = codes(idx_a)
    sa, sb = SparseCodes.from_dense(A), SparseCodes.from_dense(B)
    block = max(1, (256 << 20) // (h * 8 * 3))

    @torch.inference_mode()
    def dense():
        for s0 in range(0, h, block):
            A[:, s0:s0 + block].t() @ B

    times = {"dense blocked matmul": [], "coactivation_edges": []}
    for _ in range(args.repeats):
        times["dense blocked matmul"].append(timed(args.device, dense))
        times["coactivation_edges"].append(timed(args.device, lambda: coactivation_edges(sa, sb, args.top,
                                                                                          progress=False)))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"latents": h, "rows": n, "l0": l0, "top": args.top, "src_block": block, "seconds": times,
            "median_seconds": med, "ratio_coact_vs_dense": med["dense blocked matmul"] / med["coactivation_edges"]}


def tracking_inputs(args):
    """SAEs, inputs and edges of --layers related layers (see the module doc)."""
    from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder
    from ghosttrack.tracks.match import folded_decoder, match_decoders

    d, h, n = args.d_model, args.d_sae, args.tokens
    gen = torch.Generator().manual_seed(0)
    saes, xs = [], []
    base = SparseAutoencoder(ReluSAEConfig(d, h))
    with torch.no_grad():
        base.b_enc.fill_(-2.33)  # unit encoder columns on N(0, 1) inputs: each latent fires on ~1% of rows
        base.W_enc.copy_(base.W_enc / base.W_enc.norm(dim=0, keepdim=True))
    x = torch.randn(n, d, generator=gen)
    for k in range(args.layers):
        sae = SparseAutoencoder(ReluSAEConfig(d, h), init=False)
        sae.load_state_dict(base.state_dict())
        if k:
            # Each latent moves by a small rotation (noise of norm 0.2 on unit columns and rows) and the
            # residual by 0.3 x N(0, 1) per layer: most latents persist, some die, some are born.
            perm = torch.randperm(h, generator=gen)
            with torch.no_grad():
                w_enc = saes[-1].W_enc[:, perm] + 0.2 * unit_noise(d, h, gen)
                sae.W_enc.copy_(w_enc / w_enc.norm(dim=0, keepdim=True))
                sae.W_dec.copy_(saes[-1].W_dec[perm] + 0.2 * unit_noise(d, h, gen).t())
                sae.normalize_decoder_()
            x = x + 0.3 * torch.randn(n, d, generator=gen)
        saes.append(sae.requires_grad_(False).to(args.device))
        xs.append(x.clone().to(args.device))
    edges = {}
    for k in range(args.layers - 1):
        edges[(k, k + 1)] = match_decoders(folded_decoder(saes[k]), folded_decoder(saes[k + 1]), args.top,
                                           progress=False)
    return saes, xs, edges


def bench_tracking(args) -> dict:
    from ghosttrack.tracks.codes import SparseCodes
    from ghosttrack.tracks.reference import track_reference
    from ghosttrack.tracks.tracker import HypothesisTracker

    saes, xs, edges = tracking_inputs(args)
    layers = list(range(args.layers))
    tracker = HypothesisTracker(layers, edges, {k: args.d_sae for k in layers}, min_score=0.3, device=args.device)

    @torch.inference_mode()
    def bare():
        for sae, x in zip(saes, xs):
            sae.encode(x)

    @torch.inference_mode()
    def codes():
        return {k: SparseCodes.from_dense(sae.encode(x)) for k, (sae, x) in enumerate(zip(saes, xs))}

    made = codes()
    results = []
    times = {"bare encode": [], "encode + track": [], "track only": []}
    for _ in range(args.repeats):
        times["bare encode"].append(timed(args.device, bare))
        times["encode + track"].append(timed(args.device, lambda: tracker.track(codes())))
        times["track only"].append(timed(args.device, lambda: results.append(tracker.track(made))))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens_s = {k: args.tokens / v for k, v in med.items()}
    # The plain-Python reference on the first ref_tokens tokens (same rules, same edges).
    n_ref = min(args.ref_tokens, args.tokens)
    active = [[dict(zip(*(lambda r: (r[1].tolist(), r[0].tolist()))(
        (a[t][a[t] > 0], torch.nonzero(a[t] > 0).squeeze(1))))) for t in range(n_ref)]
        for a in (sae.encode(x[:n_ref]).cpu() for sae, x in zip(saes, xs))]
    triples = {key: list(zip(e["src"].tolist(), e["dst"].tolist(), e["score"].tolist())) for key, e in edges.items()}
    t_ref = timed("cpu", lambda: track_reference(layers, active, triples, min_score=0.3))
    r = results[-1]
    return {"layers": args.layers, "d_sae": args.d_sae, "tokens": args.tokens, "top": args.top, "min_score": 0.3,
            "mean_l0": float(np.mean([len(e) for e in r.entry_token]) / args.tokens),
            "tracks_per_token": r.n_tracks / args.tokens,
            "full_length_tracks_per_token": float(((r.track_end - r.track_birth + 1) == args.layers).sum()
                                                  / args.tokens),
            "seconds": times, "median_seconds": med, "tokens_per_s": tokens_s,
            "reference_tokens": n_ref, "reference_tokens_per_s": n_ref / t_ref,
            "ratio_encode_track_vs_bare": tokens_s["encode + track"] / tokens_s["bare encode"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.latents, args.d_model, args.d_sae, args.tokens, args.src_block, args.dst_block = 2048, 64, 512, 512, 512, 1024
        args.coact_latents, args.coact_rows = 1024, 512
    load = os.getloadavg()[0]
    result = {"machine": machine(), "torch_threads": torch.get_num_threads(), "load_average_at_start": round(load, 2),
              "repeats": args.repeats, "matching": bench_matching(args), "coactivation": bench_coactivation(args),
              "tracking": bench_tracking(args)}
    slug = "cpu" if args.device == "cpu" else "gpu"
    stem = args.out or f"tracks_{slug}{'_quick' if args.quick else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    return result


def markdown(r: dict) -> str:
    m, c, t = r["matching"], r["coactivation"], r["tracking"]
    cpu = "; CPU figures" if r["machine"].startswith("CPU") else ""
    lines = [
        f"# Hypothesis tracking ({r['machine']}{cpu})",
        "",
        f"Median of {r['repeats']}, interleaved; torch threads {r['torch_threads']}; 1-min load average at start "
        f"{r['load_average_at_start']} (the machine is shared: absolute figures are noisy, ratios less so).",
        "",
        f"## Matching two {m['latents']:,}-latent SAEs (d_model {m['d_model']}, random weights)",
        "",
        f"Tiles of {m['src_block']:,} x {m['dst_block']:,}; top-{m['top']} per latent; never an H x H array.",
        "",
        "| what | median s | GFLOP/s (2 H^2 D) | vs bare |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k in ("bare blocked matmul", "match_decoders"):
        lines.append(f"| {k} | {m['median_seconds'][k]:.2f} | {m['gflop_per_s'][k]:.1f} | "
                     f"{m['median_seconds']['bare blocked matmul'] / m['median_seconds'][k]:.2f}x |")
    lines += [
        "",
        f"Matching runs at **{m['ratio_match_vs_bare']:.2f}x** the speed of the bare blocked matmul.",
        "",
        f"## Co-activation of two {c['latents']:,}-latent layers over {c['rows']:,} rows (L0 {c['l0']})",
        "",
        f"Half of each row's latents in layer B are the row's latents of layer A; the dense baseline takes source "
        f"blocks of {c['src_block']:,}; the sparse path forms only co-firing pairs (about rows x L0^2).",
        "",
        "| what | median s | vs dense |",
        "| --- | ---: | ---: |",
        f"| dense blocked matmul (sums only) | {c['median_seconds']['dense blocked matmul']:.2f} | 1.00x |",
        f"| coactivation_edges (sparse sums, correlation, top-{c['top']}) | "
        f"{c['median_seconds']['coactivation_edges']:.2f} | {c['ratio_coact_vs_dense']:.2f}x |",
        "",
        f"## Tracker: {t['layers']} layers x {t['d_sae']:,} latents, {t['tokens']:,} tokens",
        "",
        f"Mean L0 {t['mean_l0']:.1f} per layer; top-{t['top']} edges, min score {t['min_score']}; "
        f"{t['tracks_per_token']:.1f} tracks per token, {t['full_length_tracks_per_token']:.1f} alive at every layer.",
        "",
        "| what | tokens/s | median s | vs bare encode |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k in ("bare encode", "encode + track", "track only"):
        lines.append(f"| {k} | {t['tokens_per_s'][k]:,.0f} | {t['median_seconds'][k]:.3f} | "
                     f"{t['tokens_per_s'][k] / t['tokens_per_s']['bare encode']:.2f}x |")
    lines += [
        f"| plain-Python reference (first {t['reference_tokens']} tokens, once) | {t['reference_tokens_per_s']:,.0f} "
        f"| - | {t['reference_tokens_per_s'] / t['tokens_per_s']['bare encode']:.3f}x |",
        "",
        f"Encoding and tracking every layer runs at **{t['ratio_encode_track_vs_bare']:.2f}x** the bare encoders' "
        f"tokens/s; the vectorised tracker alone is "
        f"{t['tokens_per_s']['track only'] / t['reference_tokens_per_s']:.0f}x the plain-Python reference.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
