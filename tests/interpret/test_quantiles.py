"""Quantile band edges from the log histogram against numpy's quantiles, and the band of each example."""
import numpy as np
import pytest
import torch

from ghosttrack.interpret.quantiles import band_of, quantile_edges, quantile_examples
from ghosttrack.interpret.scan import FeatureAccumulator, LogBins

BINS = LogBins()
BIN_RATIO = 10 ** (1 / BINS.per_decade)


def histogram_of(values: np.ndarray) -> np.ndarray:
    acc = FeatureAccumulator(1, 1, bins=BINS)
    acc.update(torch.from_numpy(values.astype(np.float32))[:, None], torch.arange(len(values)))
    return acc.result().histogram[0]


@pytest.mark.parametrize("n_bands", [2, 5, 7])
@pytest.mark.parametrize("dist", ["lognormal", "uniform", "tiny", "few"])
def test_edges_match_numpy_quantiles(dist, n_bands):
    rng = np.random.default_rng(n_bands)
    values = {"lognormal": rng.lognormal(0.0, 1.5, 20_000), "uniform": rng.uniform(0.5, 3.0, 5_000),
              "tiny": rng.uniform(1e-6, 5e-5, 3_000),  # all in the under-range bin (linear inside)
              "few": np.array([0.2, 0.9, 1.7, 4.0, 11.0, 12.0, 30.0])}[dist].astype(np.float32)
    top = float(values.max())
    edges = quantile_edges(histogram_of(values), BINS, top, n_bands)
    want = np.quantile(values, np.arange(1, n_bands) / n_bands)
    assert len(edges) == n_bands - 1 and (np.diff(edges) >= 0).all() and edges.max() <= top
    if dist == "tiny":
        # One bin spans 0..1e-4: the edges are linear interpolations inside it, within the data's span.
        assert (edges > 0).all() and (edges < 1e-4).all()
    elif dist == "few":
        # Seven values: each edge lies in the bin of the value where the count reaches q * n.
        at = np.sort(values)[np.ceil(np.arange(1, n_bands) / n_bands * len(values)).astype(int) - 1]
        assert np.all(edges <= at * BIN_RATIO) and np.all(edges >= at / BIN_RATIO)
    else:
        # Exact counts per bin: an edge is off by at most one bin's width (a factor of BIN_RATIO).
        np.testing.assert_array_less(edges, want * BIN_RATIO)
        np.testing.assert_array_less(want / BIN_RATIO, edges)
        # And each band holds about 1/n of the values.
        shares = np.bincount(band_of(values, edges), minlength=n_bands) / len(values)
        np.testing.assert_allclose(shares, 1 / n_bands, atol=0.05)


def test_examples_fall_in_their_band():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0.0, 1.0, 3000).astype(np.float32)
    rows = rng.permutation(100_000)[:3000]
    edges = quantile_edges(histogram_of(values), BINS, float(values.max()), 5)
    bands = quantile_examples(rows[:64], values[:64], edges, float(values.max()), 5, per_band=3)
    assert [b["band"] for b in bands] == list(range(5))
    assert bands[0]["lo"] == 0.0 and bands[-1]["hi"] == pytest.approx(values.max())
    by_row = dict(zip(rows.tolist(), values.tolist()))
    for b in bands:
        assert 1 <= len(b["rows"]) <= 3
        assert b["values"] == sorted(b["values"], reverse=True)
        for r, v in zip(b["rows"], b["values"]):
            assert by_row[r] == v and b["lo"] <= v < b["hi"] or (b["band"] == 4 and v == b["hi"])
        # The first examples of the band in sample order (a random draw), not the band's strongest.
        in_band = [i for i in range(64) if b["lo"] <= values[i] < b["hi"]][:3]
        assert sorted(b["rows"]) == sorted(rows[in_band].tolist())
    # Empty slots (-1) are ignored; an empty sample gives no bands.
    assert quantile_examples(np.full(4, -1), np.zeros(4), edges, 1.0, 5, 3) == []
