"""The TopK SAE's sparse backward (ghosttrack/sae_topk.py) against autograd through the plain
kernels.topk.topk_forward, on random inputs and odd shapes."""
import pytest
import torch

from ghosttrack.kernels.topk import topk_decode, topk_forward
from ghosttrack.kernels.topk_sparse import select_topk, sparse_decode, sparse_topk_encode


def _params(B, D, H, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    W_enc = (torch.randn(D, H, generator=g, dtype=dtype) / D**0.5).requires_grad_()
    b_enc = (0.1 * torch.randn(H, generator=g, dtype=dtype)).requires_grad_()
    W_dec = torch.randn(H, D, generator=g, dtype=dtype).requires_grad_()
    b_dec = torch.randn(D, generator=g, dtype=dtype).requires_grad_()
    return x, W_enc, b_enc, W_dec, b_dec


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("B,D,H,k", [(37, 50, 130, 7), (16, 16, 16, 16), (65, 33, 97, 1), (5, 8, 300, 32)])
def test_sparse_topk_matches_reference_values_and_gradients(B, D, H, k):
    x, W_enc, b_enc, W_dec, b_dec = _params(B, D, H)
    x.requires_grad_()
    target = torch.randn(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = topk_forward(x, W_enc, b_enc, W_dec, b_dec, k)
    ref_loss = (ref.x_hat - target).pow(2).sum() + ref.top_acts.pow(2).sum()
    acts, idx, pre = sparse_topk_encode(x, W_enc, b_enc, k)
    x_hat = sparse_decode(acts, idx, W_dec) + b_dec
    loss = (x_hat - target).pow(2).sum() + acts.pow(2).sum()

    torch.testing.assert_close(x_hat, ref.x_hat)
    torch.testing.assert_close(torch.relu(pre), ref.pre_acts)
    # Same selected set per row (order may differ: ours is unsorted).
    torch.testing.assert_close(acts.sort(-1, descending=True).values, ref.top_acts)
    torch.testing.assert_close(loss, ref_loss)
    inputs = (x, W_enc, b_enc, W_dec, b_dec)
    names = ("x", "W_enc", "b_enc", "W_dec", "b_dec")
    for name, got, want in zip(names, _grads(loss, inputs), _grads(ref_loss, inputs)):
        torch.testing.assert_close(got, want, msg=lambda m, n=name: f"grad {n}: {m}")


def test_sparse_topk_float32_matches_reference():
    x, W_enc, b_enc, W_dec, b_dec = (t.detach().float().requires_grad_(t.requires_grad)
                                     for t in _params(70, 48, 200, seed=3))
    ref = topk_forward(x, W_enc, b_enc, W_dec, b_dec, 12)
    acts, idx, _ = sparse_topk_encode(x, W_enc, b_enc, 12)
    x_hat = sparse_decode(acts, idx, W_dec) + b_dec
    torch.testing.assert_close(x_hat, ref.x_hat, rtol=1e-5, atol=1e-5)
    inputs = (W_enc, b_enc, W_dec, b_dec)
    got = _grads(x_hat.pow(2).sum(), inputs)
    want = _grads(ref.x_hat.pow(2).sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_masked_selection_only_picks_allowed_latents_and_zeroes_the_rest():
    x, W_enc, b_enc, W_dec, b_dec = _params(20, 12, 40, seed=5)
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[3, 7, 11]] = True
    with torch.no_grad():
        pre = x @ W_enc + b_enc
    acts, idx = select_topk(x, W_enc, b_enc, pre, 5, mask)
    allowed = mask[idx]
    assert (acts[~allowed] == 0).all()
    # Among allowed latents, acts are relu(pre) of the chosen ones.
    torch.testing.assert_close(acts[allowed], torch.relu(pre.gather(1, idx))[allowed])
    assert allowed.sum(1).eq(3).all()
    # Dense decode of the masked selection equals the plain gather/sum decoder.
    no_bias = torch.zeros(12, dtype=x.dtype)
    torch.testing.assert_close(sparse_decode(acts, idx, W_dec), topk_decode(acts, idx, W_dec, no_bias))


@pytest.mark.parametrize("use_csr", [True, False])
def test_latent_rows_product_both_paths_match_dense(use_csr):
    from ghosttrack.kernels.topk_sparse import latent_rows_product

    g = torch.Generator().manual_seed(7)
    B, K, N, H = 1500, 5, 9, 31  # B > the gather block, duplicates within rows allowed
    idx = torch.randint(0, H, (B, K), generator=g)
    vals = torch.randn(B, K, generator=g)
    dense = torch.randn(B, N, generator=g)
    want = torch.zeros(B, H).index_put_((torch.arange(B).repeat_interleave(K), idx.reshape(-1)),
                                        vals.reshape(-1), accumulate=True).t() @ dense
    torch.testing.assert_close(latent_rows_product(idx, vals, dense, H, use_csr=use_csr), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_sampled", [True, False])
def test_rowwise_dots_both_paths_match_a_dense_product(use_sampled):
    from ghosttrack.kernels.topk_sparse import rowwise_dots

    g = torch.Generator().manual_seed(8)
    B, K, D, H = 1100, 6, 13, 40
    idx = torch.stack([torch.randperm(H, generator=g)[:K] for _ in range(B)])  # distinct within a row
    grad = torch.randn(B, D, generator=g)
    W = torch.randn(H, D, generator=g)
    want = (grad @ W.t()).gather(1, idx)
    torch.testing.assert_close(rowwise_dots(grad, W, idx, use_sampled=use_sampled), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rowwise_dots_in_16_bit_on_the_cpu_match_fp32(dtype):
    """The CPU default path (sampled product) does not take 16-bit inputs: they must still work."""
    from ghosttrack.kernels.topk_sparse import rowwise_dots

    g = torch.Generator().manual_seed(9)
    B, K, D, H = 37, 5, 19, 50
    idx = torch.stack([torch.randperm(H, generator=g)[:K] for _ in range(B)])
    grad, W = torch.randn(B, D, generator=g).to(dtype), torch.randn(H, D, generator=g).to(dtype)
    want = (grad.float() @ W.float().t()).gather(1, idx)
    got = rowwise_dots(grad, W, idx)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=5e-2)
