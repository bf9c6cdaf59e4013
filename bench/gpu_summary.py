"""The GPU suite's one-page summary: each target of issue 10 next to what the suite measured.

    python bench/gpu_summary.py --results bench/results --gpu nvidia_h200

Reads kernel_<gpu>.json, train_<gpu>.json and extract_<gpu>.json from --results and writes
gpu_suite_<gpu>.md there. Targets are goals, reported as met or not; the exit status is 1
only when a result file is missing (a step of the suite did not finish).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FLOPS_PER_TOKEN_DH = 10  # relu training step: 2 forward GEMMs + 3 backward (x needs no gradient)


def kernel_rows(kernel: dict, dtype: str, method: str) -> list[dict]:
    return [r for r in kernel["rows"] if r["dtype"] == dtype and r["method"] == method and "ms" in r]


def targets(kernel: dict, train: dict, extract: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; met is None when the suite has nothing to judge it by."""
    peak = kernel["bf16_matmul_peak_tflops"]
    out = []
    for fused in kernel_rows(kernel, "bfloat16", "fused"):
        shape = f"bf16 B={fused['B']} H={fused['H']}"
        eager = next((r for r in kernel_rows(kernel, "bfloat16", "reference") if r["B"] == fused["B"]
                      and r["H"] == fused["H"]), None)
        comp = next((r for r in kernel_rows(kernel, "bfloat16", "compile") if r["B"] == fused["B"]
                     and r["H"] == fused["H"]), None)
        if eager:
            ratio = eager["ms"] / fused["ms"]
            out.append((f"fused step >= 1.3x eager ({shape})", f"{ratio:.2f}x", ratio >= 1.3))
        if comp:
            ratio = comp["ms"] / fused["ms"]
            out.append((f"fused step >= 1.1x torch.compile ({shape})", f"{ratio:.2f}x", ratio >= 1.1))
        share = fused["tflops"] / peak
        out.append((f">= 60% of the measured bf16 matmul peak ({shape})",
                    f"{share:.0%} ({fused['tflops']:.0f} of {peak:.0f} TFLOP/s)", share >= 0.6))
    for arch, a in train["archs"].items():
        ratio = a["trainer_tok_s"] / a["step_tok_s"]
        out.append((f"trainer >= 0.9x the bare step ({arch}, {train['dtype']})",
                    f"{ratio:.2f}x ({a['trainer_tok_s']:,.0f} vs {a['step_tok_s']:,.0f} tok/s; "
                    f"loader alone {a['loader_tok_s']:,.0f} tok/s)", ratio >= 0.9))
        if arch in ("relu", "jumprelu"):
            tflops = a["trainer_tok_s"] * FLOPS_PER_TOKEN_DH * train["d"] * train["h"] / 1e12
            out.append((f"trainer share of the bf16 matmul peak ({arch})", f"{tflops / peak:.0%} ({tflops:.0f} TFLOP/s)",
                        None))
    ratios = extract["ratio_to_bare_forward"]
    name = next(n for n in ratios if n.startswith("extract layers 0-"))
    out.append((f"extraction >= 0.9x the bare forward ({extract['model']}, {name})", f"{ratios[name]:.2f}x",
                ratios[name] >= 0.9))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--gpu", required=True, help="the results' file suffix, e.g. nvidia_h200")
    args = p.parse_args(argv)
    files = {name: args.results / f"{name}_{args.gpu}.json" for name in ("kernel", "train", "extract")}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        print(f"error: missing results {', '.join(missing)}: a step of the suite did not finish", file=sys.stderr)
        return 1
    data = {name: json.loads(f.read_text()) for name, f in files.items()}
    rows = targets(data["kernel"], data["train"], data["extract"])
    mark = {True: "met", False: "NOT met", None: "-"}
    lines = [f"# GPU suite ({data['kernel']['machine']})", "",
             "One run of `bench/gpu_suite.sh`; details in kernel_, train_ and extract_"
             f"{args.gpu}.md beside this file.", "", "| target | measured | |", "| --- | --- | --- |"]
    lines += [f"| {t} | {m} | {mark[ok]} |" for t, m, ok in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.results / f"gpu_suite_{args.gpu}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
