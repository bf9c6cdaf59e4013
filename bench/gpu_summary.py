"""The GPU suite's one-page summary: each target of issue 10 next to what the suite measured.

    python bench/gpu_summary.py --results bench/results --gpu nvidia_h200

Reads kernel_<gpu>.json, train_<gpu>.json and extract_<gpu>.json from --results and writes
gpu_suite_<gpu>.md there. Targets are goals, reported as met or not; a target whose step failed
is printed as NOT MEASURED (never left out), and the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FLOPS_PER_TOKEN_DH = 10  # relu training step: 2 forward GEMMs + 3 backward (x needs no gradient)


NOT_MEASURED = "NOT MEASURED"
KERNEL_TARGETS = ("fused step >= 1.3x eager", "fused step >= 1.1x torch.compile",
                  ">= 60% of the measured bf16 matmul peak")
TRAIN_TARGET = "trainer >= 0.9x the bare step"
EXTRACT_TARGET = "extraction >= 0.9x the bare forward"


def kernel_rows(kernel: dict, dtype: str, method: str) -> list[dict]:
    return [r for r in kernel["rows"] if r["dtype"] == dtype and r["method"] == method and "ms" in r]


def kernel_targets(kernel: dict | None) -> list[tuple[str, str, bool | None]]:
    fused_rows = kernel_rows(kernel, "bfloat16", "fused") if kernel else []
    if not fused_rows:  # the step failed, or ran with the fused path erroring at every shape
        return [(f"{t} (bf16)", NOT_MEASURED, False) for t in KERNEL_TARGETS]
    peak = kernel["bf16_matmul_peak_tflops"]
    out = []
    for fused in fused_rows:
        shape = f"bf16 B={fused['B']} H={fused['H']}"
        for target, method, bound in zip(KERNEL_TARGETS[:2], ("reference", "compile"), (1.3, 1.1)):
            other = next((r for r in kernel_rows(kernel, "bfloat16", method) if r["B"] == fused["B"]
                          and r["H"] == fused["H"]), None)
            if other is None:
                out.append((f"{target} ({shape})", NOT_MEASURED, False))
                continue
            ratio = other["ms"] / fused["ms"]
            out.append((f"{target} ({shape})", f"{ratio:.2f}x", ratio >= bound))
        share = fused["tflops"] / peak
        out.append((f"{KERNEL_TARGETS[2]} ({shape})",
                    f"{share:.0%} ({fused['tflops']:.0f} of {peak:.0f} TFLOP/s)", share >= 0.6))
    return out


def train_targets(train: dict | None, peak: float | None) -> list[tuple[str, str, bool | None]]:
    if not train or not train.get("archs"):
        return [(TRAIN_TARGET, NOT_MEASURED, False)]
    out = []
    for arch, a in train["archs"].items():
        ratio = a["trainer_tok_s"] / a["step_tok_s"]
        out.append((f"{TRAIN_TARGET} ({arch}, {train['dtype']})",
                    f"{ratio:.2f}x ({a['trainer_tok_s']:,.0f} vs {a['step_tok_s']:,.0f} tok/s; "
                    f"loader alone {a['loader_tok_s']:,.0f} tok/s)", ratio >= 0.9))
        if arch in ("relu", "jumprelu") and peak:
            tflops = a["trainer_tok_s"] * FLOPS_PER_TOKEN_DH * train["d"] * train["h"] / 1e12
            out.append((f"trainer share of the bf16 matmul peak ({arch})", f"{tflops / peak:.0%} ({tflops:.0f} TFLOP/s)",
                        None))
    return out


def extract_targets(extract: dict | None) -> list[tuple[str, str, bool | None]]:
    ratios = (extract or {}).get("ratio_to_bare_forward", {})
    name = next((n for n in ratios if n.startswith("extract layers 0-")), None)
    if name is None:
        return [(EXTRACT_TARGET, NOT_MEASURED, False)]
    return [(f"{EXTRACT_TARGET} ({extract['model']}, {name})", f"{ratios[name]:.2f}x", ratios[name] >= 0.9)]


def targets(kernel: dict | None, train: dict | None, extract: dict | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; met is None when the suite has nothing to judge it by. A target
    whose step failed (no result file, or no usable row) stays in the table as NOT MEASURED."""
    peak = kernel.get("bf16_matmul_peak_tflops") if kernel else None
    return kernel_targets(kernel) + train_targets(train, peak) + extract_targets(extract)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--gpu", required=True, help="the results' file suffix, e.g. nvidia_h200")
    args = p.parse_args(argv)
    files = {name: args.results / f"{name}_{args.gpu}.json" for name in ("kernel", "train", "extract")}
    missing = [str(f) for f in files.values() if not f.exists()]
    data = {name: json.loads(f.read_text()) if f.exists() else None for name, f in files.items()}
    rows = targets(data["kernel"], data["train"], data["extract"])
    mark = {True: "met", False: "NOT met", None: "-"}
    machine = next((d["machine"] for d in data.values() if d and "machine" in d), args.gpu)
    lines = [f"# GPU suite ({machine})", "",
             "One run of `bench/gpu_suite.sh`; details in kernel_, train_ and extract_"
             f"{args.gpu}.md beside this file.", "", "| target | measured | |", "| --- | --- | --- |"]
    lines += [f"| {t} | {m} | {'' if m == NOT_MEASURED else mark[ok]} |" for t, m, ok in rows]
    if missing:
        lines += ["", f"Missing results (their step failed or did not finish): {', '.join(missing)}."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"gpu_suite_{args.gpu}.md").write_text(text)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
