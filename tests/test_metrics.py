"""Metric definitions (ghosttrack/metrics.py) against direct computations on random data."""
import numpy as np
import pytest
import torch

from ghosttrack.metrics import FiringTracker, ReconstructionStats, fvu, l0_bin_edges, l2_ratio, mse


def _data(B=301, D=19, H=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g) * 3 + torch.randn(D, generator=g)  # non-zero mean: centring matters
    x_hat = x + 0.4 * torch.randn(B, D, generator=g)
    acts = torch.relu(torch.randn(B, H, generator=g) - 1.0)
    return x, x_hat, acts


def test_one_shot_definitions():
    x, x_hat, _ = _data()
    xd, xhd = x.double().numpy(), x_hat.double().numpy()
    assert mse(x, x_hat) == pytest.approx(((xd - xhd) ** 2).sum(1).mean())
    want_fvu = ((xd - xhd) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert fvu(x, x_hat) == pytest.approx(want_fvu)
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(1.0)  # predicting the mean explains nothing
    assert l2_ratio(x, x_hat) == pytest.approx((np.linalg.norm(xhd, axis=1) / np.linalg.norm(xd, axis=1)).mean())


def test_streaming_stats_equal_the_pooled_one_shot_values():
    x, x_hat, acts = _data()
    stats = ReconstructionStats(19, 53)
    for a, b in [(0, 7), (7, 150), (150, 301)]:  # uneven batches
        active = acts[a:b] > 0
        stats.update(x[a:b], x_hat[a:b], active.sum(1), active.sum(0))
    res = stats.result(dense_threshold=0.2)
    active = acts > 0
    assert res["rows"] == 301
    assert res["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-6)  # pooled + centred over all rows, not per batch
    assert res["mse"] == pytest.approx(mse(x, x_hat), rel=1e-6)
    assert res["l2_ratio"] == pytest.approx(l2_ratio(x, x_hat), rel=1e-6)
    assert res["l0"] == pytest.approx(active.sum(1).double().mean().item())
    frac = active.double().mean(0)
    assert res["dense_fraction"] == pytest.approx((frac > 0.2).double().mean().item())
    assert res["never_fired_fraction"] == pytest.approx((active.sum(0) == 0).double().mean().item())
    edges, counts = res["l0_histogram"]["edges"], res["l0_histogram"]["counts"]
    l0 = active.sum(1).numpy()
    assert counts == [int(((l0 >= lo) & (l0 < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    assert sum(counts) == 301
    # state round trip
    other = ReconstructionStats(19, 53)
    other.load_state_dict(stats.state_dict())
    assert other.result(dense_threshold=0.2) == res


def test_l0_bins_cover_every_possible_count():
    for H in (1, 2, 5, 64, 4096, 4097):
        edges = l0_bin_edges(H)
        assert edges[0] == 0 and edges[1] == 1 and edges[-1] > H


def test_dead_fraction_counts_latents_silent_for_the_window():
    tracker = FiringTracker(4)
    fired = lambda *hs: torch.tensor([1 if h in hs else 0 for h in range(4)])  # noqa: E731
    tracker.update(fired(0, 1), 100)
    # Fewer tokens seen than the window: dead = never fired so far.
    assert float(tracker.dead_fraction(1000)) == pytest.approx(0.5)
    tracker.update(fired(0), 100)
    tracker.update(fired(0, 2), 100)
    assert tracker.tokens_since_fired_H.tolist() == [0, 200, 0, 300]
    assert float(tracker.dead_fraction(200)) == pytest.approx(0.5)   # latents 1 and 3
    assert float(tracker.dead_fraction(250)) == pytest.approx(0.25)  # latent 3 only
    copy = FiringTracker(4)
    copy.load_state_dict(tracker.state_dict())
    assert copy.tokens_seen == 300 and torch.equal(copy.tokens_since_fired_H, tracker.tokens_since_fired_H)


def test_update_with_a_precomputed_mse_gives_the_same_result():
    x, x_hat, acts = _data()
    active = acts > 0
    a, b = ReconstructionStats(19, 53), ReconstructionStats(19, 53)
    a.update(x, x_hat, active.sum(1), active.sum(0))
    b.update(x, x_hat, active.sum(1), active.sum(0), mse=(x - x_hat).pow(2).sum(-1).mean())
    ra, rb = a.result(), b.result()
    assert rb["fvu"] == pytest.approx(ra["fvu"], rel=1e-6) and rb["mse"] == pytest.approx(ra["mse"], rel=1e-6)


def test_reduce_across_processes_gives_the_pooled_result():
    """Two processes' streaming stats, summed field by field (as an all_reduce does), equal one pass over all rows."""
    x, x_hat, acts = _data()
    active = acts > 0
    pooled, first, second = (ReconstructionStats(19, 53) for _ in range(3))
    pooled.update(x, x_hat, active.sum(1), active.sum(0))
    first.update(x[:120], x_hat[:120], active[:120].sum(1), active[:120].sum(0))
    second.update(x[120:], x_hat[120:], active[120:].sum(1), active[120:].sum(0))
    other = iter(second.state_dict().values())
    first.reduce_(lambda t: t + next(other))
    got, want = first.result(), pooled.result()
    assert got["rows"] == want["rows"] and got["l0_histogram"] == want["l0_histogram"]
    for key in ("fvu", "mse", "l0", "l2_ratio", "never_fired_fraction", "dense_fraction"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
