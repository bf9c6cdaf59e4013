"""Rows (and positions) that are the top example of an unusual share of features.

If features peaked on rows at random, the number of live features whose top example is a given
row would be Poisson with mean live / rows_scanned (0.23 on the demo's layer). A row far above
that is nearly always an attention sink or a separator the norm rule missed (e.g. position 1
right after the sink); it dominates "sort by max activation" and hides what the features do.
Two views are checked, both against chance: all live features, and the TOP_BY_MAX features
with the highest max activation (what the sorted table shows first: there one row at position 1
held 12 of the top 50 on SmolLM2 layer 15, while being the top example of only 0.35% of all
features). These rows are reported, never dropped silently: the documented remedy is
`--skip-positions` (saved with the SAE, applied to training, interpretation and evaluation).

A position is *listed* when it holds more top examples than chance gives; it is *suggested* for
`--skip-positions` only when it holds more than SINK_RATIO x its fair share, by a one-sided
binomial test (H0: share <= SINK_RATIO x fair share) at SINK_ALPHA after a Bonferroni correction
over the positions tested. A sink holds tens of times its share (position 1 on SmolLM2 layer 15:
24% of the strongest features' top examples against 0.8%); a position at 1.8x its share (1.4%
against 0.79%) is real but is no sink, and skipping it would only throw rows away.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binom, poisson

TOP_BY_MAX = 50
"""The features with the highest max activation, checked on their own."""
MIN_FEATURES = 3
"""A row or position is reported only when it is the top example of at least this many features ..."""
CHANCE = 0.01
"""... and when fewer than this many rows (positions) of the layer would reach its count by chance."""
SINK_RATIO = 4.0
"""A position is suggested for --skip-positions only above this multiple of its fair share ..."""
SINK_ALPHA = 0.01
"""... at this significance (one-sided binomial test, Bonferroni over the positions tested)."""


def _unlikely(count: np.ndarray, n_features: int, n_cells: int) -> np.ndarray:
    """Counts that fewer than CHANCE of n_cells cells reach when n_features top examples fall at random."""
    tail = poisson.sf(count - 1, n_features / max(n_cells, 1))  # P(X >= count)
    return (count >= MIN_FEATURES) & (tail * n_cells < CHANCE)


def _top_by_max(max_values_H: np.ndarray, live: np.ndarray) -> np.ndarray:
    ids = np.flatnonzero(live)
    return ids[np.argsort(-max_values_H[ids], kind="stable")[:TOP_BY_MAX]]


def peak_rows(top_rows_H: np.ndarray, max_values_H: np.ndarray, n_rows: int, *, max_listed: int = 10,
              features_listed: int = 50) -> list[dict]:
    """Rows that are the top example of unusually many features, most shared first.

    top_rows_H: each feature's best row (-1 for dead features); n_rows: rows the pass read.
    Each entry: row, features (count), share (of live features), top_by_max (how many of the
    TOP_BY_MAX strongest features peak there), feature_ids (strongest first).
    """
    live = top_rows_H >= 0
    if not live.any():
        return []
    rows, counts = np.unique(top_rows_H[live], return_counts=True)
    strongest = _top_by_max(max_values_H, live)
    s_rows, s_counts = np.unique(top_rows_H[strongest], return_counts=True)
    in_strongest = dict(zip(s_rows.tolist(), s_counts.tolist()))
    # The strongest features: their top rows are compared with chance among the same rows.
    flagged = set(rows[_unlikely(counts, int(live.sum()), n_rows)].tolist())
    flagged |= set(s_rows[_unlikely(s_counts, len(strongest), n_rows)].tolist())
    by_count = dict(zip(rows.tolist(), counts.tolist()))
    out = []
    for row in sorted(flagged, key=lambda r: (-in_strongest.get(r, 0), -by_count[r], r))[:max_listed]:
        feats = np.flatnonzero(top_rows_H == row)
        feats = feats[np.argsort(-max_values_H[feats], kind="stable")]
        out.append({"row": int(row), "features": by_count[row], "share": by_count[row] / int(live.sum()),
                    "top_by_max": in_strongest.get(row, 0), "feature_ids": feats[:features_listed].tolist()})
    return out


def peak_positions(top_rows_H: np.ndarray, max_values_H: np.ndarray, positions: np.ndarray,
                   kept_positions: np.ndarray) -> list[dict]:
    """Sequence positions holding far more of the features' top examples than their share of the rows.

    The fair share of a position is its share of the rows the pass read (`kept_positions`); checked
    for all live features ("all") and for the TOP_BY_MAX strongest ("top_by_max"). Each entry also
    holds `sink_p`, the Bonferroni-corrected p-value of "more than SINK_RATIO x the fair share",
    and `suggest`: whether that is below SINK_ALPHA (see the module docstring).
    """
    live = top_rows_H >= 0
    if not live.any() or len(kept_positions) == 0:
        return []
    all_pos, all_counts = np.unique(kept_positions, return_counts=True)
    fair = dict(zip(all_pos.tolist(), (all_counts / len(kept_positions)).tolist()))
    out: dict[int, dict] = {}
    for scope, feats in (("top_by_max", _top_by_max(max_values_H, live)), ("all", np.flatnonzero(live))):
        pos, counts = np.unique(positions[top_rows_H[feats]], return_counts=True)
        expected = np.array([fair.get(p, 0.0) for p in pos.tolist()])
        tail = binom.sf(counts - 1, len(feats), expected)  # P(at least this many by chance)
        sink_tail = binom.sf(counts - 1, len(feats), np.minimum(1.0, SINK_RATIO * expected))
        for p, c, e, t, st in zip(pos.tolist(), counts.tolist(), expected.tolist(), tail.tolist(), sink_tail.tolist()):
            suggest = bool(c >= MIN_FEATURES and st * len(all_pos) < SINK_ALPHA)
            # One entry per position: the first scope that lists it, unless only the other suggests it.
            if c >= MIN_FEATURES and t * len(all_pos) < CHANCE and (p not in out or suggest and not out[p]["suggest"]):
                out[p] = {"position": int(p), "scope": scope, "features": int(c), "of": len(feats),
                          "share": c / len(feats), "expected_share": e,
                          "sink_p": min(1.0, st * len(all_pos)), "suggest": suggest}
    return sorted(out.values(), key=lambda d: -d["share"] / max(d["expected_share"], 1e-12))


def peak_hint(rows: list[dict], positions: list[dict]) -> str | None:
    """One sentence for the terminal and the overview, or None when nothing stands out."""
    if not rows and not positions:
        return None
    parts = []
    if rows:
        r = rows[0]
        strongest = f", {r['top_by_max']} of the {TOP_BY_MAX} with the highest max activation" if r["top_by_max"] else ""
        parts.append(f"{len(rows)} row(s) are the top example of far more features than chance gives "
                     f"(row {r['row']}: {r['features']} features{strongest})")
    sinks = [p for p in positions if p.get("suggest")]
    for p in sinks or positions[:1]:
        which = f"the {p['of']} strongest features'" if p["scope"] == "top_by_max" else "the live features'"
        parts.append(f"position {p['position']} holds {p['share']:.1%} of {which} top examples "
                     f"(chance: {p['expected_share']:.2%}, its share of the rows)")
    test = (f"more than {SINK_RATIO:g}x its share by a one-sided binomial test, p < {SINK_ALPHA:g} after Bonferroni "
            "over the positions")
    if not sinks:
        return "; ".join(parts) + f". No position holds {test}, so none is suggested for --skip-positions."
    skip = ",".join(str(p) for p in sorted(int(p["position"]) for p in sinks))
    return ("; ".join(parts) + f". Position(s) {skip} hold {test}. If these are attention sinks or separators, "
            f"leave them out of training, interpretation and evaluation alike with --skip-positions {skip} "
            "(saved with the SAE).")
