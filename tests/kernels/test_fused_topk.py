"""The sparse TopK decoder kernels (Triton interpreter) against the plain gather/sum decoder."""

import pytest
import torch

from ghosttrack.kernels import fused, topk

pytest.importorskip("triton")
if not fused.interpreting():
    pytest.skip("these tests run the kernels through TRITON_INTERPRET=1", allow_module_level=True)

from ghosttrack.kernels import fused_tiles  # noqa: E402  (imports triton)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(fused_tiles, "POISON", True)


def make_inputs(B, D, H, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    # Few latents and many rows: the same W_dec row is hit by many rows of one block,
    # which the scatter-add backward must sum, not overwrite.
    idx = torch.stack([torch.randperm(H, generator=g)[:k] for _ in range(B)])
    acts = torch.rand(B, k, generator=g).to(dtype) + 0.1
    W_dec = (torch.randn(H, D, generator=g) / H**0.5).to(dtype)
    return acts, idx, W_dec, (torch.randn(D, generator=g) * 0.1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B,D,H,k", [(37, 50, 130, 7), (16, 16, 16, 4), (3, 33, 20, 1)])
def test_sparse_decode_matches_gather_decoder(B, D, H, k, dtype):
    acts, idx, W_dec, b_dec = make_inputs(B, D, H, k, dtype, seed=B + k)
    upstream = torch.randn(B, D, generator=torch.Generator().manual_seed(9))
    results = []
    for fn in (fused.topk_decode, topk.topk_decode):
        ps = [t.clone().float().requires_grad_() if fn is topk.topk_decode else t.clone().requires_grad_()
              for t in (acts, W_dec, b_dec)]
        out = fn(ps[0], idx, ps[1], ps[2])
        (out.float() * upstream).sum().backward()
        results.append((out, [p.grad for p in ps]))
    (got, got_grads), (want, want_grads) = results
    assert got.dtype == dtype
    for name, a, b in zip(["x_hat", "top_acts", "W_dec", "b_dec"], [got, *got_grads], [want, *want_grads]):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype], atol=TOL[dtype] * scale,
                                   msg=lambda m: f"{name}: {m}")


def test_sparse_decode_follows_topk_forward():
    g = torch.Generator().manual_seed(0)
    x, W_enc = torch.randn(20, 24, generator=g), torch.randn(24, 60, generator=g)
    b_enc = torch.randn(60, generator=g)
    W_dec, b_dec = torch.randn(60, 24, generator=g), torch.randn(24, generator=g)
    out = topk.topk_forward(x, W_enc, b_enc, W_dec, b_dec, k=5)
    torch.testing.assert_close(fused.topk_decode(out.top_acts, out.top_indices, W_dec, b_dec), out.x_hat)


def test_sparse_decode_input_checks():
    acts, idx, W_dec, b_dec = make_inputs(4, 16, 16, 3, torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        fused.topk_decode(acts, idx + 16, W_dec, b_dec)
    with pytest.raises(ValueError, match="int64"):
        fused.topk_decode(acts, idx.int(), W_dec, b_dec)
    with pytest.raises(ValueError, match="same \\(B, k\\) shape"):
        fused.topk_decode(acts[:, :2], idx, W_dec, b_dec)
