"""Report of bench/detect_smollm2_i20.sh: SAE quality, every method's AUROC, the paired comparisons,
and two pictures (SVG, written by hand: no plotting dependency): ROC curves of the main methods and
the paired AUROC differences with their intervals.

    python bench/detect_i20_report.py RUN [--out bench/results/detect_smollm2_i20_cpu]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    y = labels[order]
    tpr = np.concatenate([[0], np.cumsum(y) / max(1, y.sum())])
    fpr = np.concatenate([[0], np.cumsum(1 - y) / max(1, (1 - y).sum())])
    return fpr, tpr


def roc_svg(oof: pd.DataFrame, aurocs: dict, title: str, size: int = 360) -> str:
    pad, inner = 40, size - 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 200}" height="{size}" font-family="sans-serif" '
             f'font-size="11"><text x="{pad}" y="14">{title}</text>',
             f'<rect x="{pad}" y="20" width="{inner}" height="{inner}" fill="none" stroke="#000"/>',
             f'<line x1="{pad}" y1="{20 + inner}" x2="{pad + inner}" y2="20" stroke="#bbb" stroke-dasharray="4"/>',
             f'<text x="{pad + inner / 2 - 30}" y="{size - 8}">false positive rate</text>',
             f'<text x="4" y="{20 + inner / 2}" transform="rotate(-90 10 {20 + inner / 2})">true positive rate</text>']
    for i, (name, rows) in enumerate(oof.groupby("method", sort=False)):
        fpr, tpr = roc_points(rows["label"].to_numpy(), rows["score"].to_numpy())
        points = " ".join(f"{pad + x * inner:.1f},{20 + (1 - y) * inner:.1f}" for x, y in zip(fpr, tpr))
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<text x="{pad + inner + 10}" y="{34 + 16 * i}" fill="{colour}">{name} {aurocs.get(name, 0):.3f}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def deltas_svg(rows: list[tuple[str, float, float, float]], title: str, width: int = 640) -> str:
    """One line per (label, delta, lo, hi): the interval as a bar, the estimate as a dot, 0 marked."""
    span = max([0.05] + [abs(v) for _, d, lo, hi in rows for v in (d, lo, hi) if v == v])
    left, plot = 300, width - 320
    x = lambda v: left + (v + span) / (2 * span) * plot  # noqa: E731
    height = 40 + 20 * len(rows)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" font-family="sans-serif" '
             f'font-size="11"><text x="4" y="14">{title}</text>',
             f'<line x1="{x(0):.1f}" y1="20" x2="{x(0):.1f}" y2="{height}" stroke="#888" stroke-dasharray="4"/>',
             f'<text x="{x(-span):.1f}" y="{height + 14}">{-span:+.2f}</text>',
             f'<text x="{x(0) - 4:.1f}" y="{height + 14}">0</text>',
             f'<text x="{x(span) - 30:.1f}" y="{height + 14}">{span:+.2f} AUROC</text>']
    for i, (label, d, lo, hi) in enumerate(rows):
        y = 34 + 20 * i
        parts.append(f'<text x="4" y="{y + 4}">{label}</text>')
        parts.append(f'<line x1="{x(lo):.1f}" y1="{y}" x2="{x(hi):.1f}" y2="{y}" stroke="#1f77b4" stroke-width="3"/>')
        parts.append(f'<circle cx="{x(d):.1f}" cy="{y}" r="4" fill="#d62728"/>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def sae_quality(run: Path) -> list[dict]:
    out = []
    for layer_dir in sorted((run / "sae").glob("layer_*"), key=lambda p: int(p.name.split("_")[1])):
        history = json.loads((layer_dir / "history.json").read_text())
        val = history["val"][-1] if history.get("val") else {}
        out.append({"layer": int(layer_dir.name.split("_")[1]), "val_fvu": val.get("fvu"), "val_l0": val.get("l0"),
                    "train_rows": history.get("skipped", {}).get("train_rows"),
                    "d_sae": history.get("sae_config", {}).get("d_sae")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/results/detect_smollm2_i20_cpu"))
    args = parser.parse_args()
    summary = {"run": str(args.run), "sae": sae_quality(args.run), "detect": {}}
    lines = [f"# Issue 20 run: {args.run}", "", "## SAEs (held-out validation, last evaluation)", "",
             "| layer | d_sae | training rows | FVU | L0 |", "| ---: | ---: | ---: | ---: | ---: |"]
    for s in summary["sae"]:
        lines.append(f"| {s['layer']} | {s['d_sae']} | {s['train_rows']} | {s['val_fvu']:.3f} | {s['val_l0']:.1f} |"
                     if s["val_fvu"] is not None else f"| {s['layer']} | | | n/a | n/a |")
    for results_file in sorted((args.run / "detect").glob("*/results.json")):
        name = results_file.parent.name
        results = json.loads(results_file.read_text())
        oof = pd.read_parquet(results_file.parent / "oof_scores.parquet")
        summary["detect"][name] = {k: results[k] for k in ("data", "methods", "comparisons", "command")}
        aurocs = {m["name"]: m["auroc"] for m in results["methods"]}
        picture = args.out.with_name(f"{args.out.name}_{name}_roc.svg")
        picture.write_text(roc_svg(oof[oof["table"] == "methods"], aurocs, f"{name}: out-of-fold ROC (fold seed 0)"))
        rows = [(c["name"], c["delta_auroc"], *c["ci"]) for c in results["comparisons"]]
        deltas = args.out.with_name(f"{args.out.name}_{name}_deltas.svg")
        deltas.write_text(deltas_svg(rows, f"{name}: paired AUROC differences, 95% group-bootstrap interval"))
        data = results["data"]
        lines += ["", f"## {name}: {data['rows']} rows ({data['duplicates_dropped']} duplicates dropped), "
                  f"{data['n_groups']} questions, {data['n_positive']} labelled correct", "",
                  "| method | AUROC | 95% CI |", "| --- | ---: | ---: |"]
        lines += [f"| {m['name']} | {m['auroc']:.3f} | [{m['auroc_ci'][0]:.3f}, {m['auroc_ci'][1]:.3f}] |"
                  for m in results["methods"]]
        lines += ["", "| comparison (a vs b) | AUROC a | AUROC b | a - b | 95% CI |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {c['name']} | {c['auroc_a']:.3f} | {c['auroc_b']:.3f} | {c['delta_auroc']:+.3f} | "
                  f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] |" for c in results["comparisons"]]
        lines += ["", f"![ROC]({picture.name}) ![paired differences]({deltas.name})", "",
                  f"Command: `{results.get('command')}`"]
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
