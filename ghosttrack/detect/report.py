"""results.json and a Markdown table of a detection run."""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(method: dict) -> str:
    lo, hi = method["auroc_ci"]
    return f"[{_num(lo)}, {_num(hi)}]"


def _chosen(method: dict) -> str:
    counts = Counter(c["candidate"] for c in method.get("chosen", []))
    if len(counts) <= 1 and len(method.get("chosen", [])) <= 1:
        return next(iter(counts), "")
    return "; ".join(f"{name} ({n}x)" for name, n in counts.most_common())


def markdown_table(results: dict) -> str:
    """One row per method: in-distribution AUROC and CI, and transfer beside it when present."""
    data, split = results["data"], results["split"]
    transfer = {m["name"]: m for m in results.get("transfer", {}).get("methods", [])}
    lines = [
        f"# Detection: {data['source']} on {results['model']}",
        "",
        f"{split['n_examples']:,} examples in {split['n_groups']:,} groups ({split['n_positive']:,} labelled correct); "
        f"{split['n_folds']}-fold cross-validation grouped by {split['group_by']} (a group is never in both train "
        f"and test), candidates chosen by an inner {split['inner_folds']}-fold grouped CV on the training rows only; "
        f"AUROC pooled over the out-of-fold scores, {split['ci_level']:.0%} interval from {split['bootstrap']:,} "
        f"bootstrap resamples of groups.",
        "",
    ]
    header = "| method | AUROC | CI | per-fold mean ± sd |"
    rule = "| --- | ---: | ---: | ---: |"
    if transfer:
        test = results["transfer"]["test"]
        header += f" transfer -> {test} | CI |"
        rule += " ---: | ---: |"
    lines += [header + " chosen |", rule + " --- |"]
    for method in results["methods"]:
        row = (f"| {method['name']} | {_num(method['auroc'])} | {_ci(method)} | "
               f"{_num(method['fold_auroc_mean'])} ± {_num(method['fold_auroc_sd'])} |")
        if transfer:
            other = transfer.get(method["name"])
            row += f" {_num(other['auroc'])} | {_ci(other)} |" if other else " n/a | |"
        lines.append(row + f" {_chosen(method)} |")
    for method in results.get("skipped", []):
        lines.append(f"| {method['name']} | not run: {method['reason']} |" + " |" * (5 if transfer else 3))
    if results.get("comparisons"):
        seeds = results["comparisons"][0].get("fold_seeds", [])
        lines += ["", f"Paired comparisons: the same out-of-fold rows, AUROC difference averaged over {len(seeds)} "
                  f"fold seeds, {split['ci_level']:.0%} interval from bootstrap resamples of groups.", "",
                  "| comparison | AUROC a | AUROC b | a - b | CI |", "| --- | ---: | ---: | ---: | ---: |"]
        for c in results["comparisons"]:
            lo, hi = c["ci"]
            lines.append(f"| {c['name']} | {_num(c.get('auroc_a'))} | {_num(c.get('auroc_b'))} | "
                         f"{_num(c['delta_auroc'])} | [{_num(lo)}, {_num(hi)}] |")
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    for note in results.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict) -> Path:
    """OUT/results.json and OUT/results.md (each written to a temporary file, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in ((RESULTS_FILE, json.dumps(results, indent=2) + "\n"), (TABLE_FILE, markdown_table(results))):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out / RESULTS_FILE
