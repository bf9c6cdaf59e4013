"""Examples from the middle of a feature's distribution: quantile bands filled from the pass's sample.

Band i of n holds the activations between the i/n and (i+1)/n quantiles of everything the
feature produced. The edges come from the full log-binned histogram of the pass (exact counts,
interpolated geometrically inside a bin, so an edge is right to within one bin's width: 12% at
20 bins per decade); the examples come from the uniform sample (sampling.py), each placed in
the band its value falls in, taken in sample-key order, i.e. at random within the band.
"""
from __future__ import annotations

import numpy as np

from ghosttrack.interpret.scan import LogBins


def quantile_edges(hist_B: np.ndarray, bins: LogBins, top: float, n_bands: int) -> np.ndarray:
    """The n_bands - 1 inner band edges (activation values) of one feature's histogram.

    Bin j spans [lo_j, hi_j): the under-range bin starts at 0 (linear inside), the over-range
    bin ends at `top`, the feature's max; the others are log-spaced (geometric inside).
    """
    total = int(hist_B.sum())
    if total == 0 or n_bands < 2:
        return np.zeros(0)
    inner = bins.edges()
    lo = np.concatenate([[0.0], inner])
    hi = np.concatenate([inner, [max(top, inner[-1])]])
    cum = np.cumsum(hist_B)
    edges = []
    for q in np.arange(1, n_bands) / n_bands:
        target = q * total
        j = int(np.searchsorted(cum, target, side="left"))  # first bin whose cumulative count reaches it
        before = cum[j - 1] if j > 0 else 0
        frac = (target - before) / max(hist_B[j], 1)
        a, b = lo[j], min(hi[j], max(top, lo[j]))
        edges.append(a + frac * (b - a) if a <= 0 else a * (b / a) ** frac)
    return np.minimum(np.array(edges), top)


def band_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Band index of each value: 0 below edges[0], i for edges[i-1] <= v < edges[i], len(edges) above."""
    return np.searchsorted(edges, values, side="right")


def quantile_examples(sample_rows: np.ndarray, sample_values: np.ndarray, edges: np.ndarray, top: float,
                      n_bands: int, per_band: int, shown: np.ndarray | None = None) -> list[dict]:
    """One feature's bands: [{band, lo, hi, rows, values}], examples strongest first within a band.

    `sample_rows` / `sample_values` are the feature's sample in key order (-1 rows are empty slots).
    Rows in `shown` (the top examples) come last within a band, so the top band shows new contexts.
    """
    filled = sample_rows >= 0
    rows, values = sample_rows[filled], sample_values[filled]
    if len(rows) == 0:
        return []
    band = band_of(values, edges)
    bounds = np.concatenate([[0.0], edges, [top]])
    out = []
    for i in range(n_bands):
        in_band = np.flatnonzero(band == i)  # key order: a random draw from the band
        if shown is not None:
            in_band = in_band[np.argsort(np.isin(rows[in_band], shown), kind="stable")]
        pick = in_band[:per_band]
        pick = pick[np.argsort(-values[pick], kind="stable")]
        out.append({"band": i, "lo": float(bounds[i]), "hi": float(bounds[i + 1]),
                    "rows": rows[pick].tolist(), "values": values[pick].tolist()})
    return out
