"""The streaming accumulator against the plain computation over all rows at once."""
import math

import numpy as np
import pytest
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.interpret.scan import FeatureAccumulator, LogBins


def sparse_acts(n_rows: int, d_sae: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(n_rows, d_sae, generator=g) * 10.0 ** torch.empty(1, d_sae).uniform_(-2, 2, generator=g)
    return acts * (torch.rand(n_rows, d_sae, generator=g) < density)


def plain_stats(acts: torch.Tensor, rows: torch.Tensor, k: int, bins: LogBins):
    """Per feature, by brute force: top-k (value, row) by sorting every column, counts, sums, histogram."""
    edges = bins.edges()
    out = []
    for h in range(acts.shape[1]):
        col = acts[:, h].double().numpy()
        nz = np.flatnonzero(col)
        order = nz[np.argsort(-col[nz], kind="stable")][:k]
        hist = np.zeros(bins.n_bins, dtype=np.int64)
        for v in col[nz]:
            hist[np.searchsorted(edges, v, side="right")] += 1
        out.append((col[order], rows.numpy()[order], len(nz), col[nz].sum(), hist))
    return out


@pytest.mark.parametrize("numpy_nonzero", [True, False])
@pytest.mark.parametrize("merge_every_batch", [True, False])
@pytest.mark.parametrize("k,batch,density", [(1, 7, 0.3), (5, 13, 0.05), (9, 50, 0.5), (4, 1, 0.2)])
def test_accumulator_matches_plain(k, batch, density, numpy_nonzero, merge_every_batch):
    n_rows, d_sae = 203, 37  # odd shapes: the last batch is partial, some features fire fewer than k times
    acts = sparse_acts(n_rows, d_sae, density, seed=k + batch)
    acts[:, 3] = 0  # a dead feature
    rows = torch.randperm(10_000)[:n_rows]  # arbitrary, non-contiguous row ids
    bins = LogBins(min_log10=-2, max_log10=1, per_decade=3)
    acc = FeatureAccumulator(d_sae, k, bins=bins, numpy_nonzero=numpy_nonzero)
    if merge_every_batch:
        acc.merge_at = 1  # else candidates wait for d_sae * k of them
    for s in range(0, n_rows, batch):
        acc.update(acts[s:s + batch], rows[s:s + batch])
    got = acc.result()
    assert got.n_rows == n_rows
    for h, (vals, rws, count, total, hist) in enumerate(plain_stats(acts, rows, k, bins)):
        m = len(vals)
        np.testing.assert_allclose(got.top_values[h, :m], vals, rtol=1e-6)
        np.testing.assert_array_equal(got.top_rows[h, :m], rws)
        assert np.isnan(got.top_values[h, m:]).all() and (got.top_rows[h, m:] == -1).all()
        assert got.counts[h] == count
        assert math.isclose(got.sums[h], total, rel_tol=1e-6, abs_tol=1e-9)
        np.testing.assert_array_equal(got.histogram[h], hist)
    assert got.counts[3] == 0 and got.max_values[3] == 0 and got.mean_values[3] == 0
    np.testing.assert_allclose(got.density, (acts > 0).sum(0).numpy() / n_rows)


@pytest.mark.parametrize("merge_at", [1, 10, 10_000])
def test_ties_go_to_the_earliest_rows(merge_at):
    acts = torch.ones(40, 3)  # every row ties
    acc = FeatureAccumulator(3, 6)
    acc.merge_at = merge_at
    for s in range(0, 40, 8):
        acc.update(acts[s:s + 8], torch.arange(100 + s, 108 + s))
    res = acc.result()
    assert (res.top_values == 1).all()
    assert (res.top_rows == np.arange(100, 106)).all()


def test_empty_batches_and_bad_k():
    acc = FeatureAccumulator(4, 2)
    acc.update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    acc.update(torch.zeros(5, 4), torch.arange(5))
    res = acc.result()
    assert res.n_rows == 5 and (res.counts == 0).all() and (res.top_rows == -1).all()
    with pytest.raises(GhostTrackError, match="top-k"):
        FeatureAccumulator(4, 0)


def test_log_bins_edges():
    bins = LogBins(min_log10=-1, max_log10=1, per_decade=2)
    assert bins.n_bins == 6
    np.testing.assert_allclose(bins.edges(), [0.1, 10 ** -0.5, 1, 10 ** 0.5, 10])
    with pytest.raises(GhostTrackError):
        LogBins(min_log10=1, max_log10=0)
