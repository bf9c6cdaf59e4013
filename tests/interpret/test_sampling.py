"""The per-feature uniform sample of the pass against the plain computation, and its uniformity."""
import numpy as np
import pytest
import torch

from ghosttrack.interpret.sampling import EMPTY_KEY, sample_key
from ghosttrack.interpret.scan import FeatureAccumulator


def plain_sample(acts: torch.Tensor, rows: torch.Tensor, m: int):
    """Per feature: every nonzero (row, value), the m with the smallest keys, in key order."""
    out = []
    for h in range(acts.shape[1]):
        nz = torch.nonzero(acts[:, h]).squeeze(1)
        keys = sample_key(rows[nz], torch.full_like(nz, h))
        order = torch.argsort(keys, stable=True)[:m]
        out.append((rows[nz][order].numpy(), acts[nz, h][order].numpy()))
    return out


@pytest.mark.parametrize("merge_early", [True, False])
@pytest.mark.parametrize("m,batch,density", [(1, 7, 0.3), (6, 13, 0.05), (32, 50, 0.5), (5, 1, 0.2)])
def test_sample_matches_plain(m, batch, density, merge_early):
    n_rows, d_sae = 211, 23  # odd shapes; some features fire fewer than m times
    g = torch.Generator().manual_seed(m + batch)
    acts = torch.rand(n_rows, d_sae, generator=g) * (torch.rand(n_rows, d_sae, generator=g) < density)
    acts[:, 4] = 0  # a dead feature
    rows = torch.randint(0, 1 << 40, (n_rows,), generator=g)  # arbitrary row ids, beyond 32 bits too
    acc = FeatureAccumulator(d_sae, 3, sample_size=m)
    for s in range(0, n_rows, batch):
        acc.update(acts[s:s + batch], rows[s:s + batch])
        if merge_early:  # else candidates wait for d_sae * m of them
            acc.sample.flush()
    got = acc.result()
    for h, (want_rows, want_vals) in enumerate(plain_sample(acts, rows, m)):
        n = len(want_rows)
        np.testing.assert_array_equal(got.sample_rows[h, :n], want_rows)
        np.testing.assert_allclose(got.sample_values[h, :n], want_vals, rtol=1e-6)
        assert (got.sample_rows[h, n:] == -1).all()
    assert (got.sample_rows[4] == -1).all()


def test_keys_are_31_bit_and_spread():
    rows = torch.arange(100_000, dtype=torch.long)
    keys = sample_key(rows, torch.full_like(rows, 7))
    assert int(keys.max()) < EMPTY_KEY and int(keys.min()) >= 0
    # Consecutive rows get unrelated keys: the deciles of key / 2**31 are uniform.
    counts = np.bincount((keys.numpy() * 10) >> 31, minlength=10)
    assert counts.min() > 9_500 and counts.max() < 10_500
    # Different features sample different rows.
    other = sample_key(rows, torch.full_like(rows, 8))
    assert (torch.argsort(keys)[:50] != torch.argsort(other)[:50]).any()


def test_sample_is_uniform_over_the_distribution():
    """Pooled over features, the sampled values' ranks are uniform: each fifth of the
    distribution gets a fifth of the sample (a chi-square test at a fixed seed)."""
    n_rows, d_sae, m = 4000, 200, 40
    g = torch.Generator().manual_seed(3)
    acts = torch.rand(n_rows, d_sae, generator=g) + 0.01  # every feature fires on every row
    acc = FeatureAccumulator(d_sae, 1, sample_size=m)
    for s in range(0, n_rows, 512):
        acc.update(acts[s:s + 512], torch.arange(s, min(s + 512, n_rows)))
    got = acc.result()
    ranks = (acts.argsort(0).argsort(0).numpy())  # rank of each row within its feature
    sampled = np.take_along_axis(ranks, got.sample_rows.T, axis=0)  # (m, H)
    fifths = np.bincount((sampled.reshape(-1) * 5) // n_rows, minlength=5)
    expected = m * d_sae / 5
    chi2 = ((fifths - expected) ** 2 / expected).sum()
    assert chi2 < 18.5, (fifths, chi2)  # 4 dof: p = 0.001
