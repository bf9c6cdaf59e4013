"""The fused Triton SAE (run by the Triton interpreter on the CPU) against the reference.

Every output the kernels write is poisoned with NaN first (fused_tiles.POISON), so an
element a kernel forgets to write fails the comparison instead of passing by luck.
"""

import pytest
import torch

from ghosttrack.kernels import fused, reference

pytest.importorskip("triton")
if not fused.interpreting():
    pytest.skip("these tests run the kernels through TRITON_INTERPRET=1", allow_module_level=True)

from ghosttrack.kernels import fused_gemm, fused_tiles  # noqa: E402  (imports triton)

from fused_sae_cases import TOL, close, make_params, run_both  # noqa: E402


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(fused_tiles, "POISON", True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_threshold", [False, True], ids=["relu", "jumprelu"])
@pytest.mark.parametrize("B,D,H", [(37, 50, 130), (16, 16, 16), (65, 33, 97)])
def test_outputs_and_gradients_match_reference(B, D, H, use_threshold, dtype):
    p = make_params(B, D, H, dtype, use_threshold, seed=B * H)
    got, want, fp, rp = run_both(p, dtype, l1_coeff=0.3, l0_coeff=0.05, bandwidth=0.1)
    tol = TOL[dtype]
    assert got.x_hat.dtype == dtype and got.acts.dtype == dtype and got.loss.dtype == torch.float32
    for field in reference.SAEOutput._fields:
        close(getattr(got, field), getattr(want, field), tol, field)
    for name in p:
        assert fp[name].grad is not None and fp[name].grad.dtype == fp[name].dtype, name
        close(fp[name].grad, rp[name].grad, tol, f"grad {name}")
    if use_threshold:
        assert rp["threshold"].grad.abs().sum() > 0, "the test must exercise the STE window"


def test_frozen_inputs_cost_no_gradient_and_the_rest_still_match():
    """The usual training call: x is data (no grad), the threshold is frozen."""
    p = make_params(20, 24, 40, torch.float32, True, seed=1)
    fp = {k: v.clone().requires_grad_(k not in ("x", "threshold")) for k, v in p.items()}
    rp = {k: v.clone().requires_grad_(k not in ("x", "threshold")) for k, v in p.items()}
    fused.sae_forward(**fp, l1_coeff=1.0, l0_coeff=0.5, bandwidth=0.1).loss.backward()
    reference.sae_forward(**rp, l1_coeff=1.0, l0_coeff=0.5, bandwidth=0.1).loss.backward()
    assert fp["x"].grad is None and fp["threshold"].grad is None
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        close(fp[name].grad, rp[name].grad, TOL[torch.float32], name)


def test_coefficients_as_device_tensors_match_floats():
    """--target-l0 passes its steered coefficients as 0-d tensors: same loss and gradients as floats."""
    p = make_params(20, 24, 40, torch.float32, True, seed=2)
    as_float = {k: v.clone().requires_grad_(k != "x") for k, v in p.items()}
    as_tensor = {k: v.clone().requires_grad_(k != "x") for k, v in p.items()}
    want = fused.sae_forward(**as_float, l1_coeff=0.3, l0_coeff=0.7, bandwidth=0.1)
    got = fused.sae_forward(**as_tensor, l1_coeff=torch.tensor(0.3), l0_coeff=torch.tensor(0.7), bandwidth=0.1)
    want.loss.backward()
    got.loss.backward()
    close(got.loss, want.loss, TOL[torch.float32], "loss")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        close(as_tensor[name].grad, as_float[name].grad, TOL[torch.float32], name)


def test_noncontiguous_inputs_and_broadcast_upstream_gradient():
    """Transposed weights, a strided x, and the stride-0 gradient that `.sum()` hands back."""
    p = make_params(19, 21, 35, torch.float32, False, seed=2)
    p["x"] = torch.randn(19, 42)[:, ::2]
    p["W_enc"] = p["W_enc"].t().contiguous().t()
    p["W_dec"] = p["W_dec"].t().contiguous().t()
    assert not p["x"].is_contiguous() and not p["W_enc"].is_contiguous()
    fp = {k: v.clone().requires_grad_() for k, v in p.items()}
    rp = {k: v.clone().requires_grad_() for k, v in p.items()}
    for params, fn in ((fp, fused.sae_forward), (rp, reference.sae_forward)):
        out = fn(**params, l1_coeff=0.2)
        (out.mse + out.x_hat.sum() * 0.1).backward()
    for name in p:
        close(fp[name].grad, rp[name].grad, TOL[torch.float32], name)


def test_single_row_batch():
    p = make_params(1, 20, 40, torch.float32, True, seed=3)
    got, want, fp, rp = run_both(p, torch.float32, l1_coeff=0.1, l0_coeff=0.1, bandwidth=0.2)
    close(got.loss, want.loss, 1e-5, "loss")
    for name in p:
        close(fp[name].grad, rp[name].grad, 1e-5, name)


def test_relu_l0_is_not_differentiable_but_jumprelu_l0_is():
    p = {k: v.requires_grad_() for k, v in make_params(8, 16, 16, torch.float32, False, 4).items()}
    assert not fused.sae_forward(**p, l1_coeff=0.1).l0.requires_grad
    p = {k: v.requires_grad_() for k, v in make_params(64, 16, 16, torch.float32, True, 4).items()}
    fused.sae_forward(**p, l1_coeff=0.0, l0_coeff=1.0, bandwidth=0.5).l0.backward()
    assert p["threshold"].grad.abs().sum() > 0


def test_poison_mode_fills_fresh_outputs():
    assert torch.isnan(fused_tiles.new_output((3, 4), torch.bfloat16, "cpu")).all()
    assert (fused_tiles.new_output((5,), torch.int8, "cpu") == -1).all()


def test_input_checks():
    p = make_params(4, 16, 16, torch.float32, False, 5)
    with pytest.raises(ValueError, match="one dtype"):
        fused.sae_forward(**{**p, "W_dec": p["W_dec"].half()}, l1_coeff=0.1)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        fused.sae_forward(**{k: v.double() for k, v in p.items()}, l1_coeff=0.1)
    with pytest.raises(ValueError, match="b_enc"):
        fused.sae_forward(**{**p, "b_enc": p["b_enc"][:3]}, l1_coeff=0.1)


def test_bf16_cast_rounds_to_nearest_even_like_torch():
    """The interpreter truncates fp32 -> bf16; fused_gemm.cast must round like the GPU (and torch)."""
    import triton
    import triton.language as tl

    @triton.jit
    def cast_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(src_ptr + offs, mask=offs < n, other=0.0)
        tl.store(dst_ptr + offs, fused_gemm.cast(x, dst_ptr.dtype.element_ty, True), mask=offs < n)

    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2 - 2**-9, 0.0, -0.0])
    src = torch.cat([ties, torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 50])
    dst = torch.full(src.shape, float("nan"), dtype=torch.bfloat16)
    cast_kernel[(1,)](src, dst, src.numel(), BLOCK=1024)
    assert torch.equal(dst.view(torch.int16), src.to(torch.bfloat16).view(torch.int16))
