"""The reference SAE path against independent float64 formulas, and the JumpReLU STE."""

import numpy as np
import pytest
import torch

from ghosttrack.kernels.reference import JumpReLU, Step, sae_forward


def make_params(B, D, H, dtype=torch.float32, seed=0, threshold=False):
    g = torch.Generator().manual_seed(seed)
    p = {
        "x": torch.randn(B, D, generator=g),
        "W_enc": torch.randn(D, H, generator=g) / D**0.5,
        "b_enc": torch.randn(H, generator=g) * 0.1,
        "W_dec": torch.randn(H, D, generator=g) / H**0.5,
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    if threshold:
        p["threshold"] = torch.rand(H, generator=g) * 0.3 + 0.05
    return {k: v.to(dtype).requires_grad_() for k, v in p.items()}


def numpy_oracle(p, l1_coeff, l0_coeff):
    """Loss terms in float64 numpy, written independently of the torch code."""
    n = {k: v.detach().double().numpy() for k, v in p.items()}
    pre = n["x"] @ n["W_enc"] + n["b_enc"]
    thr = n.get("threshold", np.zeros(pre.shape[1]))
    acts = np.where(pre > thr, pre, 0.0)
    x_hat = acts @ n["W_dec"] + n["b_dec"]
    mse = ((n["x"] - x_hat) ** 2).sum(1).mean()
    l1 = (acts * np.linalg.norm(n["W_dec"], axis=1)).sum(1).mean()
    l0 = (acts != 0).sum(1).mean()
    return x_hat, acts, mse + l1_coeff * l1 + l0_coeff * l0, mse, l1, l0


@pytest.mark.parametrize("use_threshold", [False, True])
@pytest.mark.parametrize("B,D,H", [(37, 50, 130), (5, 3, 7)])
def test_values_match_numpy(B, D, H, use_threshold):
    p = make_params(B, D, H, dtype=torch.float64, threshold=use_threshold)
    out = sae_forward(**p, l1_coeff=0.3, l0_coeff=0.01)
    want = numpy_oracle(p, 0.3, 0.01)
    for got, ref in zip(out, want):
        np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10, atol=1e-10)
    assert out.acts.shape == (B, H) and out.x_hat.shape == (B, D)


def test_relu_gradients_gradcheck():
    p = make_params(6, 5, 9, dtype=torch.float64)
    names = ["x", "W_enc", "b_enc", "W_dec", "b_dec"]

    def loss(*args):
        return sae_forward(*args, l1_coeff=0.7).loss

    assert torch.autograd.gradcheck(loss, tuple(p[n] for n in names))


def test_jumprelu_threshold_gradient_matches_ste_formula():
    B, H, eps = 400, 6, 0.2
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True)
    thr = torch.full((H,), 0.4, dtype=torch.float64, requires_grad=True)
    upstream = torch.rand(B, H, generator=g, dtype=torch.float64) + 0.5
    (JumpReLU.apply(pre, thr, eps) * upstream).sum().backward()
    in_window = ((pre.detach() - thr.detach()).abs() < eps / 2).double()
    want_thr = -(thr.detach() / eps) * (upstream * in_window).sum(0)
    torch.testing.assert_close(thr.grad, want_thr)
    torch.testing.assert_close(pre.grad, upstream * (pre.detach() > thr.detach()).double())
    assert (thr.grad < 0).all(), "a positive upstream gradient must push every threshold down"

    pre.grad = thr.grad = None
    (Step.apply(pre, thr, eps) * upstream).sum().backward()
    torch.testing.assert_close(thr.grad, -(1 / eps) * (upstream * in_window).sum(0))
    assert pre.grad is None or not pre.grad.any()


def test_threshold_learns_from_l0_penalty():
    """Gradient descent on the threshold alone must raise it and lower L0."""
    p = make_params(256, 16, 32, threshold=True, seed=3)
    thr = p["threshold"]
    first = thr.detach().clone()
    opt = torch.optim.SGD([thr], lr=0.01)
    l0_before = sae_forward(**p, l1_coeff=0.0, l0_coeff=1.0, bandwidth=0.05).l0.item()
    for _ in range(30):
        opt.zero_grad()
        out = sae_forward(**p, l1_coeff=0.0, l0_coeff=1.0, bandwidth=0.05)
        out.loss.backward()
        assert thr.grad is not None and thr.grad.abs().sum() > 0
        opt.step()
    assert (thr.detach() > first).sum() > 16
    assert out.l0.item() < l0_before


def test_relu_l0_has_no_gradient_and_threshold_l0_has_one():
    p = make_params(8, 4, 10)
    out = sae_forward(**p, l1_coeff=0.0)
    assert not out.l0.requires_grad
    p = make_params(64, 4, 10, threshold=True)
    out = sae_forward(**p, l1_coeff=0.0, l0_coeff=1.0, bandwidth=0.5)
    out.l0.backward()
    assert p["threshold"].grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dtypes(dtype):
    p = make_params(9, 8, 12, dtype=dtype, threshold=True)
    out = sae_forward(**p, l1_coeff=0.1, l0_coeff=0.1)
    assert out.x_hat.dtype == dtype and out.acts.dtype == dtype
    assert all(t.dtype == torch.float32 for t in (out.loss, out.mse, out.l1, out.l0))
    out.loss.backward()
    assert all(v.grad.dtype == dtype for v in p.values())
    want = numpy_oracle(p, 0.1, 0.1)
    np.testing.assert_allclose(out.mse.item(), want[3], rtol=5e-2)


def test_shape_errors_name_the_argument():
    p = make_params(4, 5, 6)
    p["W_dec"] = torch.randn(5, 6)
    with pytest.raises(ValueError, match="W_dec"):
        sae_forward(**p, l1_coeff=0.1)
    p = make_params(4, 5, 6)
    with pytest.raises(ValueError, match="threshold"):
        sae_forward(**p, l1_coeff=0.1, threshold=torch.zeros(5))
