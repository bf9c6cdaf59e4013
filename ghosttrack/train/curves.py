"""A layer's history.json drawn as one static page (inline SVG, no script, no network): loss, FVU,
L0 and dead fraction against training tokens, the training log as a line and each validation as
a dot; the sparsity coefficient too when --target-l0 steered it. Written beside the checkpoint as
curves.html."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

CURVES_FILE = "curves.html"
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 440, 220, 62, 28, 26, 34
PANELS = (("loss", "loss", False), ("fvu", "FVU", False), ("l0", "L0 (active latents per row)", False),
          ("dead_fraction", "dead fraction", False), ("sparsity_coeff", "sparsity coefficient", True))


def _ticks(low: float, high: float, n: int = 4) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / n for i in range(n + 1)]


def _panel(key: str, title: str, log_y: bool, train: list[dict], val: list[dict],
           target: float | None = None) -> str | None:
    line = [(e["tokens"], e[key]) for e in train if _finite(e.get(key))]
    dots = [(e["tokens"], e[key]) for e in val if _finite(e.get(key)) and e.get("tokens") is not None]
    points = line + dots + ([(0, target)] if target is not None else [])
    if log_y:
        points = [(x, y) for x, y in points if y > 0]
        line, dots = [(x, y) for x, y in line if y > 0], [(x, y) for x, y in dots if y > 0]
    if not points:
        return None
    f = math.log10 if log_y else (lambda v: v)
    xs, ys = [p[0] for p in points], [f(p[1]) for p in points]
    x0, x1 = 0.0, max(xs) or 1.0
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:  # a flat curve (a dead fraction of 0 throughout): a range around it, >= 0 at 0
        y0, y1 = (0.0, 1.0) if y0 == 0 else (y0 - 0.5 * abs(y0), y1 + 0.5 * abs(y1))

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def sy(y: float) -> float:
        return H - PAD_B - (f(y) - y0) / (y1 - y0) * (H - PAD_T - PAD_B)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">',
             f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}'
             f'{" (log scale)" if log_y else ""}</text>',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" '
             f'fill="none" stroke="#999"/>']
    for t in _ticks(y0, y1):
        value = 10 ** t if log_y else t
        y = H - PAD_B - (t - y0) / (y1 - y0) * (H - PAD_T - PAD_B)
        parts.append(f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{value:.3g}</text>')
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{sx(t):.1f}" y="{H - PAD_B + 14}" text-anchor="middle" font-size="10">{t:,.0f}</text>')
    parts.append(f'<text x="{W / 2}" y="{H - 4}" text-anchor="middle" font-size="10">training tokens</text>')
    if target is not None:
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(target):.1f}" y2="{sy(target):.1f}" '
                     f'stroke="#2a2" stroke-dasharray="5,4"><title>--target-l0 {target:g}</title></line>')
    if line:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>')
    for x, y in dots:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#d2691e"><title>validation: '
                     f'{y:.4g}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def curves_html(history: dict[str, Any]) -> str:
    """The page for one layer's history (see the module docstring)."""
    train = history.get("train") or []
    per_step = (train[0]["tokens"] / train[0]["step"]) if train and train[0].get("step") else 0
    val = [{**v, "tokens": v.get("tokens", v["step"] * per_step)} for v in history.get("val") or []]
    target = (history.get("trainer_config") or {}).get("target_l0")
    panels = [p for key, title, log_y in PANELS
              if (p := _panel(key, title, log_y, train, val, target if key == "l0" else None))]
    layer = history.get("layer", "?")
    rows = "".join(f"<tr><td>{html.escape(r['check'])}</td><td>{html.escape(r['target'])}</td>"
                   f"<td>{html.escape(r['shown'])}</td><td>{ {True: 'ok', False: 'MISS', None: ''}[r['pass']] }</td></tr>"
                   for r in history.get("checklist") or [])
    table = (f"<h2>The seed's checklist</h2><table><tr><th>check</th><th>target</th><th>reached</th><th></th></tr>"
             f"{rows}</table>" if rows else "")
    return (f"<!doctype html><meta charset='utf-8'><title>layer {layer}: training curves</title>"
            f"<style>body{{font-family:sans-serif}}svg{{margin:4px}}td,th{{padding:2px 8px;text-align:left}}</style>"
            f"<h1>Layer {layer}: training curves</h1><p>Line: the training log (mean over each log window); "
            f"dots: validation on the held-out rows{'; dashes: the target L0' if target else ''}.</p><div>{''.join(panels)}</div>{table}")


def write_curves(directory: str | Path, history: dict[str, Any]) -> Path:
    path = Path(directory) / CURVES_FILE
    path.write_text(curves_html(history))
    return path
