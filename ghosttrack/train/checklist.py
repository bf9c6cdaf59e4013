"""The seed's validation checklist, answered per layer from a finished run's history.

The seed's per-layer targets (its "Target Metrics" and "Validation Checklist") next to what the
layer reached on its held-out rows:

    reconstruction MSE   (1/(B D)) sum_b sum_d (x_bd - x_hat_bd)^2 in raw activation units, the
                         seed's loss (a per-element mean; our `mse` sums over D in scaled units, so
                         it is divided by d_in * input_scale^2)                      target < 0.01
    FVU                  ghosttrack/metrics.py (no seed target; the scale-free view of the same error)
    L0                   mean active latents per row                                 target 50-100
    dead fraction        latents silent over the trainer's dead window (training tokens) < 10%
    active features     latents that fired on at least one held-out row              >= 80%
    converged           the last two validation losses within 1% of each other (relative)

`layer_checklist` gives the rows (history.json and the summary carry them); `write_checklist`
writes a multi-layer run's table as checklist.json, checklist.md and checklist.html (linking each
layer's training curves).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

SEED_MSE_MAX = 0.01
SEED_L0_RANGE = (50.0, 100.0)
SEED_DEAD_MAX = 0.10
SEED_ACTIVE_MIN = 0.80
CONVERGED_REL_CHANGE = 0.01
CHECKLIST_FILES = ("checklist.json", "checklist.md", "checklist.html")


def _row(check: str, target: str, reached: float | None, ok: bool | None, fmt: str) -> dict[str, Any]:
    shown = "-" if reached is None else format(reached, fmt)
    return {"check": check, "target": target, "reached": reached, "shown": shown, "pass": ok}


def layer_checklist(history: dict[str, Any], d_in: int) -> list[dict[str, Any]]:
    """The seed's checks for one finished layer (module docstring); `pass` is None where the run has
    no held-out rows to judge by."""
    val = history.get("val") or []
    last = val[-1] if val else {}
    train = history.get("train") or []
    scale = float(history.get("input_scale") or 1.0)
    mse = last.get("mse")
    seed_mse = None if mse is None else mse / (d_in * scale * scale)
    l0, fvu = last.get("l0"), last.get("fvu")
    dead = train[-1].get("dead_fraction") if train else None
    never = last.get("never_fired_fraction")
    active = None if never is None else 1.0 - never
    change = None
    if len(val) >= 2 and val[-2].get("loss"):
        change = abs(val[-1]["loss"] - val[-2]["loss"]) / abs(val[-2]["loss"])
    low, high = SEED_L0_RANGE
    return [
        _row("reconstruction MSE (per element, raw units)", f"< {SEED_MSE_MAX:g}", seed_mse,
             None if seed_mse is None else seed_mse < SEED_MSE_MAX, ".4g"),
        _row("FVU (held-out)", "as low as the L0 allows", fvu, None, ".4f"),
        _row("L0 (active latents per row)", f"{low:g}-{high:g}", l0, None if l0 is None else low <= l0 <= high, ".1f"),
        _row("dead fraction", f"< {SEED_DEAD_MAX:.0%}", dead, None if dead is None else dead < SEED_DEAD_MAX, ".2%"),
        _row("features active on held-out rows", f">= {SEED_ACTIVE_MIN:.0%}", active,
             None if active is None else active >= SEED_ACTIVE_MIN, ".1%"),
        _row("validation loss converged (last change)", f"< {CONVERGED_REL_CHANGE:.0%}", change,
             None if change is None else change < CONVERGED_REL_CHANGE, ".2%"),
    ]


def format_checklist(rows: list[dict[str, Any]], indent: str = "  ") -> str:
    """The rows as aligned terminal lines: check, target, reached, ok / MISS / (no verdict)."""
    width = max(len(r["check"]) for r in rows)
    mark = {True: "ok", False: "MISS", None: ""}
    return "\n".join(f"{indent}{r['check']:<{width}}  target {r['target']:<24} reached {r['shown']:<10} "
                     f"{mark[r['pass']]}".rstrip() for r in rows)


def write_checklist(out: str | Path, summaries: dict[int, dict[str, Any]]) -> Path:
    """checklist.json / .md / .html in `out` for the layers' summaries (each with its `checklist`)."""
    out = Path(out)
    layers = sorted(summaries)
    data = {str(layer): {"out_dir": summaries[layer]["out_dir"], "checklist": summaries[layer]["checklist"]}
            for layer in layers}
    (out / CHECKLIST_FILES[0]).write_text(json.dumps(data, indent=2) + "\n")
    checks = [r["check"] for r in summaries[layers[0]]["checklist"]] if layers else []
    targets = [r["target"] for r in summaries[layers[0]]["checklist"]] if layers else []

    def cell(r: dict[str, Any]) -> str:
        return r["shown"] + {True: " ok", False: " MISS", None: ""}[r["pass"]]

    md = ["# The seed's checklist per layer", "",
          "| layer | " + " | ".join(f"{c} ({t})" for c, t in zip(checks, targets)) + " |",
          "| ---: | " + " | ".join("---:" for _ in checks) + " |"]
    md += [f"| {layer} | " + " | ".join(cell(r) for r in summaries[layer]["checklist"]) + " |" for layer in layers]
    (out / CHECKLIST_FILES[1]).write_text("\n".join(md) + "\n")

    esc = html.escape
    head = "".join(f"<th>{esc(c)}<br><small>{esc(t)}</small></th>" for c, t in zip(checks, targets))
    body = []
    for layer in layers:
        curves = Path(summaries[layer]["out_dir"]) / "curves.html"
        link = (f'<a href="{esc(_relative(curves, out))}">layer {layer}</a>' if curves.exists()
                else f"layer {layer}")
        cells = "".join(f'<td class="{ {True: "ok", False: "miss", None: ""}[r["pass"]] }">{esc(cell(r))}</td>'
                        for r in summaries[layer]["checklist"])
        body.append(f"<tr><td>{link}</td>{cells}</tr>")
    page = (f"<!doctype html><meta charset='utf-8'><title>checklist</title><style>body{{font-family:sans-serif}}"
            f"td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}}.ok{{color:#161}}"
            f".miss{{color:#b00;font-weight:bold}}</style><h1>The seed's checklist per layer</h1>"
            f"<p>Each layer links to its training curves.</p><table><tr><th>layer</th>{head}</tr>"
            f"{''.join(body)}</table>")
    (out / CHECKLIST_FILES[2]).write_text(page)
    return out / CHECKLIST_FILES[1]


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return path.resolve().as_uri()

