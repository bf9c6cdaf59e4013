"""On a CUDA GPU (bench/gpu_suite.sh runs these with TRITON_INTERPRET=0): every 16-bit tile
config (and the first TF32 one) compiled and run against the reference on odd shapes, the
sparse TopK path against the torch path, and both backward passes bit-for-bit repeatable."""

import pytest
import torch

from ghosttrack.kernels import fused, reference, topk_sparse

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available() or fused.interpreting():
    pytest.skip("needs a CUDA GPU with TRITON_INTERPRET unset", allow_module_level=True)
pytest.importorskip("triton")

from ghosttrack.kernels import fused_tiles  # noqa: E402  (imports triton)

from fused_sae_cases import TOL, close, make_params  # noqa: E402

B, D, H = 300, 200, 700  # partial tiles for every tile shape, partial K steps, an empty split


def step(p, **kw):
    """Forward + backward of fused and reference (fp32) on CUDA copies of p."""
    fp = {k: v.cuda().requires_grad_() for k, v in p.items()}
    rp = {k: v.cuda().float().requires_grad_() for k, v in p.items()}
    outs = []
    for params, fn in ((fp, fused.sae_forward), (rp, reference.sae_forward)):
        out = fn(**params, **kw)
        (out.loss + out.x_hat.float().sum() * 1e-3).backward()
        outs.append(out)
    return outs, fp, rp


@pytest.mark.parametrize("family,dtype", [("16bit", torch.bfloat16), ("tf32", torch.float32)])
def test_every_config_on_the_gpu(family, dtype, monkeypatch):
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    lists = {role: fused_tiles.family_configs(role, family) for role in fused_tiles.ROLES}
    limit = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    size = torch.tensor([], dtype=dtype).element_size()
    # Every config in bf16; TF32 only its first config of each role (the same tiles, the TF32 dot
    # layouts checked once): the suite's time on the GPU is short.
    for i in range(max(len(cfgs) for cfgs in lists.values()) if family == "16bit" else 1):
        forced = {role: cfgs[i % len(cfgs)] for role, cfgs in lists.items()}
        if any(fused_tiles.shared_bytes_estimate(c, size) > limit for c in forced.values()):
            continue  # the autotuner prunes it on this card too
        monkeypatch.setattr(fused_tiles, "FORCED", forced)
        p = make_params(B, D, H, dtype, i % 2 == 0, seed=i)
        (got, want), fp, rp = step(p, l1_coeff=0.3, l0_coeff=0.05, bandwidth=0.1)
        tol = max(TOL[dtype], 2e-3)  # TF32 dots
        desc = {role: c.kwargs for role, c in forced.items()}
        for field in reference.SAEOutput._fields:
            close(getattr(got, field), getattr(want, field), tol, f"{desc} {field}")
        for name in p:
            close(fp[name].grad, rp[name].grad, tol, f"{desc} grad {name}")


def test_fused_backward_is_bitwise_repeatable():
    p = make_params(B, D, H, torch.bfloat16, True, seed=1)
    (_, _), fp1, _ = step(p, l1_coeff=0.3, l0_coeff=0.05, bandwidth=0.1)
    (_, _), fp2, _ = step(p, l1_coeff=0.3, l0_coeff=0.05, bandwidth=0.1)
    for name in p:
        assert torch.equal(fp1[name].grad, fp2[name].grad), name


def test_sparse_topk_on_cuda_matches_the_cpu_path_and_repeats_bitwise():
    g = torch.Generator().manual_seed(0)
    x, W_enc = torch.randn(513, 96, generator=g), torch.randn(96, 1000, generator=g) / 10
    b_enc, W_dec = torch.randn(1000, generator=g) * 0.1, torch.randn(1000, 96, generator=g) / 30
    grads = []
    for device in ("cuda", "cuda", "cpu"):
        ps = [t.to(device).requires_grad_() for t in (x, W_enc, b_enc, W_dec)]
        if device == "cuda":
            assert topk_sparse.triton_kernels(ps[0]) is not None
        acts, idx, _ = topk_sparse.sparse_topk_encode(ps[0], ps[1], ps[2], 17)
        topk_sparse.sparse_decode(acts, idx, ps[3]).pow(2).sum().backward()
        grads.append([q.grad.cpu() for q in ps])
    for a, b, c in zip(*grads):
        assert torch.equal(a, b), "the CUDA backward must repeat bit for bit"
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
