"""TopK reference: the selection, and the gather/sum decoder against a dense decode."""

import pytest
import torch

from ghosttrack.kernels.topk import topk_decode, topk_forward


def make_params(B, D, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, D, generator=g, dtype=torch.float64),
        "W_enc": torch.randn(D, H, generator=g, dtype=torch.float64) / D**0.5,
        "b_enc": torch.randn(H, generator=g, dtype=torch.float64) * 0.1,
        "W_dec": torch.randn(H, D, generator=g, dtype=torch.float64) / H**0.5,
        "b_dec": torch.randn(D, generator=g, dtype=torch.float64) * 0.1,
    }


def dense_decode(top_acts, top_indices, W_dec, b_dec):
    acts_BH = torch.zeros(top_acts.shape[0], W_dec.shape[0], dtype=top_acts.dtype)
    return acts_BH.scatter(1, top_indices, top_acts) @ W_dec + b_dec


@pytest.mark.parametrize("B,D,H,k", [(37, 50, 130, 7), (3, 4, 5, 5), (16, 16, 16, 1)])
def test_topk_decode_matches_dense_decode_and_its_gradients(B, D, H, k):
    g = torch.Generator().manual_seed(B)
    acts = torch.rand(B, k, generator=g, dtype=torch.float64).requires_grad_()
    idx = torch.stack([torch.randperm(H, generator=g)[:k] for _ in range(B)])
    W_dec = torch.randn(H, D, generator=g, dtype=torch.float64).requires_grad_()
    b_dec = torch.randn(D, generator=g, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(B, D, generator=g, dtype=torch.float64)

    got = topk_decode(acts, idx, W_dec, b_dec)
    grads = torch.autograd.grad((got * upstream).sum(), (acts, W_dec, b_dec))
    want = dense_decode(acts, idx, W_dec, b_dec)
    want_grads = torch.autograd.grad((want * upstream).sum(), (acts, W_dec, b_dec))
    torch.testing.assert_close(got, want)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b)


def test_topk_forward_selects_the_k_largest():
    p = make_params(20, 12, 40)
    out = topk_forward(**p, k=6)
    relu = torch.relu(p["x"] @ p["W_enc"] + p["b_enc"])
    torch.testing.assert_close(out.pre_acts, relu)
    assert out.top_indices.dtype == torch.int64 and out.top_acts.shape == (20, 6)
    torch.testing.assert_close(out.top_acts, relu.gather(1, out.top_indices))
    # Every kept value beats every dropped value of its row.
    dropped = relu.scatter(1, out.top_indices, float("-inf"))
    assert (out.top_acts.min(1).values >= dropped.max(1).values).all()
    assert (out.top_acts[:, :-1] >= out.top_acts[:, 1:]).all(), "descending order"
    x_hat = dense_decode(out.top_acts, out.top_indices, p["W_dec"], p["b_dec"])
    torch.testing.assert_close(out.x_hat, x_hat)
    torch.testing.assert_close(out.mse, (p["x"] - x_hat).pow(2).sum(1).mean())


def test_topk_forward_gradients_reach_encoder_and_decoder():
    p = {k: v.requires_grad_() for k, v in make_params(10, 6, 15).items()}
    topk_forward(**p, k=3).mse.backward()
    for name, v in p.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, name


def test_topk_bad_k():
    p = make_params(4, 3, 5)
    with pytest.raises(ValueError, match="k must be"):
        topk_forward(**p, k=6)
    with pytest.raises(ValueError, match="k must be"):
        topk_forward(**p, k=0)
