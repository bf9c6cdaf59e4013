"""The TopK SAE's sparse path on its Triton kernels (what CUDA runs), through the interpreter:
values and every gradient against the dense oracle `kernels.topk.topk_forward`, the
deterministic segment sums against a dense product, and the SAE module's training step."""

import inspect

import pytest
import torch

from ghosttrack.kernels import fused, topk_sparse
from ghosttrack.kernels.topk import topk_forward

pytest.importorskip("triton")
if not fused.interpreting():
    pytest.skip("these tests run the kernels through TRITON_INTERPRET=1", allow_module_level=True)

from ghosttrack.kernels import fused_sparse, fused_tiles  # noqa: E402  (imports triton)


@pytest.fixture(autouse=True)
def triton_on_cpu(monkeypatch):
    monkeypatch.setattr(topk_sparse, "TRITON_ON_CPU", True)
    monkeypatch.setattr(fused_tiles, "POISON", True)


def params(B, D, H, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = {"x": torch.randn(B, D, generator=g), "W_enc": torch.randn(D, H, generator=g) / D**0.5,
         "b_enc": torch.randn(H, generator=g) * 0.1, "W_dec": torch.randn(H, D, generator=g) / H**0.5,
         "b_dec": torch.randn(D, generator=g) * 0.1}
    return {k: v.to(dtype).requires_grad_() for k, v in t.items()}


def close(got, exp, tol, what):
    scale = max(1.0, exp.abs().max().item())
    torch.testing.assert_close(got.float(), exp.float(), rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def sparse_step(p, k, target):
    """Loss and gradients of the module's sparse TopK path (encode, decode, + b_dec)."""
    acts, idx, _ = topk_sparse.sparse_topk_encode(p["x"], p["W_enc"], p["b_enc"], k)
    x_hat = topk_sparse.sparse_decode(acts, idx, p["W_dec"]) + p["b_dec"]
    ((x_hat.float() - target).pow(2).sum() + acts.float().pow(2).sum()).backward()
    return x_hat, acts


@pytest.mark.parametrize("B,D,H,k", [(37, 50, 130, 7), (65, 33, 97, 1), (5, 40, 300, 32), (16, 16, 16, 16)])
def test_triton_path_matches_the_dense_oracle(B, D, H, k):
    assert topk_sparse.triton_kernels(torch.zeros(1)) is fused_sparse
    p = params(B, D, H, torch.float32, seed=B + H)
    ref = {n: t.detach().clone().requires_grad_() for n, t in p.items()}
    target = torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    x_hat, acts = sparse_step(p, k, target)
    want = topk_forward(ref["x"], ref["W_enc"], ref["b_enc"], ref["W_dec"], ref["b_dec"], k)
    ((want.x_hat - target).pow(2).sum() + want.top_acts.pow(2).sum()).backward()
    close(x_hat, want.x_hat, 1e-5, "x_hat")
    close(acts.sort(-1, descending=True).values, want.top_acts, 1e-5, "top_acts")
    for name in p:
        close(p[name].grad, ref[name].grad, 1e-5, f"grad {name}")


def test_triton_path_in_bf16_matches_fp32_on_the_same_selection(monkeypatch):
    """bf16 rounding moves near-ties of the selection, so the yardstick is the fp32 torch path
    selecting from the same (upcast) bf16 pre-activations."""
    target = torch.randn(45, 40, generator=torch.Generator().manual_seed(2))
    p = params(45, 40, 150, torch.bfloat16, seed=9)
    acts, idx, pre = topk_sparse.sparse_topk_encode(p["x"], p["W_enc"], p["b_enc"], 9)
    x_hat = topk_sparse.sparse_decode(acts, idx, p["W_dec"]) + p["b_dec"]
    ((x_hat.float() - target).pow(2).sum() + acts.float().pow(2).sum()).backward()
    monkeypatch.setattr(topk_sparse, "TRITON_ON_CPU", False)
    ref = {n: t.detach().float().requires_grad_() for n, t in p.items()}
    acts32, idx32 = topk_sparse.select_topk(ref["x"], ref["W_enc"], ref["b_enc"], pre.float(), 9)
    x_hat32 = topk_sparse.sparse_decode(acts32, idx32, ref["W_dec"]) + ref["b_dec"]
    ((x_hat32 - target).pow(2).sum() + acts32.pow(2).sum()).backward()
    assert torch.equal(idx.sort(-1).values, idx32.sort(-1).values)
    close(x_hat, x_hat32, 1e-2, "x_hat")
    for name in p:
        close(p[name].grad, ref[name].grad, 2e-2, f"grad {name}")


def test_segment_rows_match_a_dense_product_with_empty_latents():
    g = torch.Generator().manual_seed(3)
    B, K, N, H = 70, 5, 45, 400  # most latents never picked: their rows must be written as zeros
    idx = torch.stack([torch.randperm(H, generator=g)[:K] for _ in range(B)])
    vals = torch.randn(B, K, generator=g)
    dense = torch.randn(B, N, generator=g)
    sel = torch.zeros(B, H).scatter(1, idx, vals)
    rows, sums = fused_sparse.segment_rows(idx, vals, dense, H, want_sums=True)
    torch.testing.assert_close(rows, sel.t() @ dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums, sel.sum(0), rtol=1e-5, atol=1e-5)
    again = fused_sparse.segment_rows(idx, vals, dense, H, want_sums=True)
    assert torch.equal(rows, again[0]) and torch.equal(sums, again[1]), "same bits on every run"


def test_sparse_kernels_use_no_float_atomics():
    """Determinism on CUDA rests on this: every output element is written by one program."""
    assert "atomic_" not in inspect.getsource(fused_sparse)


def test_masked_selection_on_the_triton_path():
    p = params(20, 12, 40, torch.float32, seed=5)
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[3, 7, 11]] = True
    with torch.no_grad():
        pre = p["x"] @ p["W_enc"] + p["b_enc"]
    acts, idx = topk_sparse.select_topk(p["x"], p["W_enc"], p["b_enc"], pre, 5, mask)
    out = topk_sparse.sparse_decode(acts, idx, p["W_dec"])
    out.sum().backward()
    assert (acts[~mask[idx]] == 0).all() and mask[idx].sum(1).eq(3).all()
    want = torch.zeros(20, 40).scatter(1, idx, acts.detach()) @ p["W_dec"].detach()
    torch.testing.assert_close(out.detach(), want, rtol=1e-5, atol=1e-5)


def test_sae_training_step_same_on_triton_and_torch_paths(monkeypatch):
    from ghosttrack.sae import SparseAutoencoder, TopKSAEConfig

    torch.manual_seed(0)
    sae = SparseAutoencoder(TopKSAEConfig(d_in=24, d_sae=96, k=6, aux_k=8))
    x = torch.randn(33, 24)
    dead = torch.full((96,), 10**9, dtype=torch.long)  # every latent dead: AuxK runs too
    results = []
    for on in (True, False):
        monkeypatch.setattr(topk_sparse, "TRITON_ON_CPU", on)
        sae.zero_grad()
        step = sae.training_loss(x, tokens_since_fired_H=dead)
        step.loss.backward()
        results.append((step.loss.detach(), {n: q.grad.clone() for n, q in sae.named_parameters()}))
    (loss_t, grads_t), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_t, loss_c, rtol=1e-5, atol=1e-6)
    for name in grads_c:
        torch.testing.assert_close(grads_t[name], grads_c[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
