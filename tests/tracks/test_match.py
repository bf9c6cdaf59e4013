"""Data-free matching: folding, the blocked running top-N, and a planted permutation."""
import numpy as np
import pytest
import torch

from ghosttrack.tracks.match import BlockSizes, RunningTopN, fold_sae_, folded_decoder, match_decoders
from tracks_helpers import permuted_sae, random_sae


def dense_topn(scores: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(scores, idx, 1), idx


@pytest.mark.parametrize("rows,cols,top,block", [(13, 29, 4, 7), (5, 3, 8, 2), (31, 64, 1, 64), (1, 17, 5, 16)])
def test_running_topn_equals_dense_topn(rows, cols, top, block):
    rng = np.random.default_rng(rows * 100 + cols)
    scores = rng.normal(size=(rows, cols)).astype(np.float32)
    best = RunningTopN(rows, top, "cpu")
    for c0 in range(0, cols, block):
        best.update(torch.from_numpy(scores[:, c0:c0 + block]), c0)
    want_vals, want_idx = dense_topn(scores, min(top, cols))
    got_vals, got_idx = best.values.numpy(), best.index.numpy()
    # Fewer columns than slots: the extra slots stay empty.
    assert np.all(got_idx[:, min(top, cols):] == -1) and np.all(np.isinf(got_vals[:, min(top, cols):]))
    np.testing.assert_array_equal(got_idx[:, :min(top, cols)], want_idx)
    np.testing.assert_allclose(got_vals[:, :min(top, cols)], want_vals)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_blocked_matching_equals_dense(arch):
    a, b = random_sae(12, 37, arch=arch, seed=1), random_sae(12, 23, arch=arch, seed=2)
    dec_a, dec_b = folded_decoder(a), folded_decoder(b)
    edges = match_decoders(dec_a, dec_b, 5, blocks=BlockSizes(src_block=6, dst_block=9), progress=False)
    A, B = dec_a.double().numpy(), dec_b.double().numpy()
    mse = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    dense = 1 - mse / (A ** 2).sum(1, keepdims=True)  # the module's definition, written the slow way
    vals, idx = dense_topn(dense, 5)
    assert edges["src"].tolist() == np.repeat(np.arange(37), 5).tolist()
    assert edges["rank"].tolist() == np.tile(np.arange(5), 37).tolist()
    np.testing.assert_array_equal(edges["dst"].reshape(37, 5), idx)
    np.testing.assert_allclose(edges["score"].reshape(37, 5), vals, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(edges["decoder_mse"].reshape(37, 5), np.take_along_axis(mse, idx, 1) / 12, rtol=1e-4,
                               atol=1e-6)


def test_folding_keeps_the_reconstruction_and_unit_thresholds():
    sae = random_sae(16, 40, arch="jumprelu", seed=3, bias=0.1)
    x = torch.randn(50, 16)
    before_acts, before = sae.encode(x), sae(x)
    folded_rows = folded_decoder(sae)
    fold_sae_(sae)
    torch.testing.assert_close(sae(x), before, rtol=1e-5, atol=1e-5)
    assert torch.all(sae.threshold == 1)
    theta = folded_rows.norm(dim=1)  # rows were unit norm: the folded row norm is the threshold
    torch.testing.assert_close(sae.encode(x) * theta, before_acts, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sae.W_dec, folded_rows)


def test_planted_permutation_is_recovered_after_folding():
    """Layer j's SAE is layer i's with latents shuffled, decoder rows rescaled by c and thresholds by 1/c,
    and a little noise: folding makes the rows equal again, so every latent's best match is its image."""
    a = random_sae(32, 96, arch="jumprelu", seed=4)
    rng = np.random.default_rng(4)
    perm = rng.permutation(96)
    c = torch.from_numpy(rng.uniform(0.3, 3.0, 96)).float()
    b = permuted_sae(a, perm, row_scale=c)
    with torch.no_grad():
        b.W_dec.add_(0.01 * torch.randn_like(b.W_dec))
    edges = match_decoders(folded_decoder(a), folded_decoder(b), 3, blocks=BlockSizes(17, 40), progress=False)
    best = edges["rank"] == 0
    np.testing.assert_array_equal(edges["dst"][best], perm[edges["src"][best]])
    assert edges["score"][best].min() > 0.95
    # The raw rows differ in scale by c: their relative error is large, so raw matching scores far lower.
    raw = match_decoders(a.W_dec.detach(), b.W_dec.detach(), 1, progress=False)
    assert np.median(raw["score"]) < 0.5
