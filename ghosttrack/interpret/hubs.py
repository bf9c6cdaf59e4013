"""Rows (and positions) that are the top example of an unusual share of features.

If features peaked on rows at random, a row would be the top example of about
live / rows_scanned features, far below one. A row that is the top example of many features
is nearly always an attention sink or a separator the norm rule missed (e.g. position 1 right
after the sink); it dominates "sort by max activation" and hides what the features do. These
rows are reported, never dropped silently: the documented remedy is `--skip-positions` (saved
with the SAE, applied to training, interpretation and evaluation alike).
"""
from __future__ import annotations

import numpy as np

PEAK_MIN_SHARE = 0.01
"""A row is reported when it is the top example of at least this share of the live features ..."""
PEAK_MIN_FEATURES = 3
"""... and of at least this many features."""
POSITION_EXCESS = 5.0
"""A position is reported when it holds this many times its fair share of top examples ..."""
POSITION_MIN_SHARE = 0.05
"""... and at least this share of them."""


def peak_rows(top_rows_H: np.ndarray, *, max_listed: int = 10, features_listed: int = 50) -> list[dict]:
    """Rows that are the top example of an unusual share of live features, most shared first.

    top_rows_H: each feature's best row (-1 for dead features).
    """
    live = top_rows_H[top_rows_H >= 0]
    if len(live) == 0:
        return []
    rows, counts = np.unique(live, return_counts=True)
    threshold = max(PEAK_MIN_FEATURES, PEAK_MIN_SHARE * len(live))
    order = np.argsort(-counts, kind="stable")
    out = []
    for i in order[:max_listed]:
        if counts[i] < threshold:
            break
        feats = np.flatnonzero(top_rows_H == rows[i])
        out.append({"row": int(rows[i]), "features": int(counts[i]), "share": float(counts[i] / len(live)),
                    "feature_ids": feats[:features_listed].tolist()})
    return out


def peak_positions(top_rows_H: np.ndarray, positions: np.ndarray, kept_positions: np.ndarray) -> list[dict]:
    """Sequence positions holding far more than their fair share of the features' top examples.

    The fair share of a position is its share of the rows the pass read (`kept_positions`).
    """
    live = top_rows_H[top_rows_H >= 0]
    if len(live) == 0 or len(kept_positions) == 0:
        return []
    pos, counts = np.unique(positions[live], return_counts=True)
    all_pos, all_counts = np.unique(kept_positions, return_counts=True)
    fair = dict(zip(all_pos.tolist(), (all_counts / len(kept_positions)).tolist()))
    out = []
    for p, c in zip(pos.tolist(), counts.tolist()):
        share, expected = c / len(live), fair.get(p, 0.0)
        if share >= POSITION_MIN_SHARE and share >= POSITION_EXCESS * expected:
            out.append({"position": int(p), "features": int(c), "share": share, "expected_share": expected})
    return sorted(out, key=lambda d: -d["share"])


def peak_hint(rows: list[dict], positions: list[dict]) -> str | None:
    """One sentence for the terminal and the overview, or None when nothing stands out."""
    if not rows and not positions:
        return None
    parts = []
    if rows:
        r = rows[0]
        parts.append(f"{len(rows)} row(s) are each the top example of many features (row {r['row']}: "
                     f"{r['features']} features, {r['share']:.1%} of the live ones)")
    if positions:
        p = positions[0]
        parts.append(f"position {p['position']} holds {p['share']:.1%} of the features' top examples "
                     f"(its fair share: {p['expected_share']:.1%})")
    skip = ",".join(str(p["position"]) for p in positions) or "N"
    return "; ".join(parts) + (f". If these are attention sinks, leave them out of training, interpretation and "
                               f"evaluation with --skip-positions {skip} (saved with the SAE).")
