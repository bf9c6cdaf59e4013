"""What the interpretation writes besides the browser: histograms of the records, features.json(l), terminal view."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, TextIO

import numpy as np


def trimmed_histogram(counts: np.ndarray, edges: np.ndarray, top: float) -> dict[str, list]:
    """The nonempty span of a feature's log-bin histogram; outer edges made finite (0 and the max)."""
    nz = np.flatnonzero(counts)
    if len(nz) == 0:
        return {"bin_edges": [], "counts": []}
    lo, hi = int(nz[0]), int(nz[-1])
    full = np.concatenate([[0.0], edges, [max(top, float(edges[-1]))]])
    bin_edges = full[lo:hi + 2].astype(float)
    bin_edges[-1] = min(bin_edges[-1], max(top, bin_edges[-2]))  # the last bin ends at the max seen
    return {"bin_edges": [float(x) for x in bin_edges], "counts": counts[lo:hi + 1].astype(int).tolist()}


def density_histogram(density: np.ndarray, n_rows: int, per_decade: int = 4) -> dict[str, list]:
    """Counts of live features per log10(density) bin, from 1/n_rows up to 1."""
    lowest = np.floor(np.log10(1.0 / max(n_rows, 1)))
    edges = np.linspace(lowest, 0.0, int(-lowest * per_decade) + 1) if lowest < 0 else np.array([-1.0, 0.0])
    counts, _ = np.histogram(np.log10(density[density > 0]), bins=edges)
    return {"log10_edges": [float(e) for e in edges], "counts": counts.astype(int).tolist()}


def print_feature_summary(interpretation: dict[str, Any], file: TextIO | None = None, max_examples: int = 5) -> None:
    """One feature, readable in a terminal: stats, common tokens, top examples with the token in [[ ]]."""
    out = file or sys.stdout
    it = interpretation
    state = "active" if it["active"] else "DEAD"
    print(f"Feature {it['feature_id']} ({state})", file=out)
    density = f", density {it['density']:.3%}" if "density" in it else ""
    print(f"  activations: {it['num_activations']:,}{density}, max {it['top_activation']:.4g}, "
          f"mean {it['mean_activation']:.4g}", file=out)
    if it["common_tokens"]:
        tokens = ", ".join(f"{tok!r} x{count}" for tok, count in it["common_tokens"][:8])
        print(f"  common tokens: {tokens}", file=out)
    for ex in it["top_examples"][:max_examples]:
        if "tokens" in ex:
            i = ex["token_index"]
            text = "".join(ex["tokens"][:i]) + "[[" + ex["tokens"][i] + "]]" + "".join(ex["tokens"][i + 1:])
        else:
            text = ex["text"]
        print(f"  {ex['activation']:8.4g}  pos {ex['position']:>4}  {text!r}", file=out)


def write_records(blocks: Iterable[list[dict[str, Any]]], directory: Path, *, jsonl: bool) -> Path:
    """Stream record blocks to features.json (one list) or features.jsonl (one feature per line)."""
    path = directory / ("features.jsonl" if jsonl else "features.json")
    other = directory / ("features.json" if jsonl else "features.jsonl")
    other.unlink(missing_ok=True)  # a rerun in the other format must not leave a stale file behind
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        fh.write("" if jsonl else "[")
        first = True
        for block in blocks:
            for rec in block:
                fh.write(json.dumps(rec) + "\n" if jsonl else ("" if first else ",\n") + json.dumps(rec))
                first = False
        fh.write("" if jsonl else "]\n")
    tmp.replace(path)
    return path
