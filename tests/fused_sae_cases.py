"""Shared by the fused-kernel tests: random SAE parameters, a tolerant comparison, and one
forward + backward of the fused path and the reference side by side."""

import torch

from ghosttrack.kernels import fused, reference

NAMES = ["x", "W_enc", "b_enc", "W_dec", "b_dec", "threshold"]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_params(B, D, H, dtype, use_threshold, seed):
    """Random, never-zero parameters; thresholds sit inside the bulk of `pre`."""
    g = torch.Generator().manual_seed(seed)
    p = {
        "x": torch.randn(B, D, generator=g),
        "W_enc": torch.randn(D, H, generator=g) / D**0.5,
        "b_enc": torch.randn(H, generator=g) * 0.2,
        "W_dec": torch.randn(H, D, generator=g) / H**0.5,
        "b_dec": torch.randn(D, generator=g) * 0.2,
    }
    p = {k: v.to(dtype) for k, v in p.items()}
    if use_threshold:
        p["threshold"] = torch.rand(H, generator=g) * 0.4 + 0.05
    return p


def close(got, want, tol, what):
    """Compare at a tolerance relative to the reference's magnitude."""
    want = want.detach().float()
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got.detach().float(), want, rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what}: {m}")


def run_both(p, dtype, upstream_seed=7, **kw):
    """Forward + backward of both paths on copies of p (the reference in fp32), with extra
    upstream gradients through x_hat and acts so that those paths are exercised too."""
    fp = {k: v.clone().requires_grad_() for k, v in p.items()}
    rp = {k: v.clone().float().requires_grad_() for k, v in p.items()}
    g = torch.Generator().manual_seed(upstream_seed)
    B, D = p["x"].shape
    w_xhat = torch.randn(B, D, generator=g) * 0.01
    w_acts = torch.randn(B, p["W_enc"].shape[1], generator=g) * 0.01
    outs = []
    for params, fn in ((fp, fused.sae_forward), (rp, reference.sae_forward)):
        out = fn(**params, **kw)
        (out.loss + (out.x_hat.float() * w_xhat).sum() + (out.acts.float() * w_acts).sum()).backward()
        outs.append(out)
    return outs[0], outs[1], fp, rp
