"""Offsets are int64 throughout the fused kernels: a matrix spanning 2^31 elements (W_enc of
2304 x 1M latents) must not wrap `k * stride` around in int32.

Checked twice: the shared offset helper on strides whose products pass 2^31, and the whole
fused forward + backward on tiny views whose strides pass 2^31 / 3 elements, cut from a
sparse 8 GiB file (only the touched pages exist; the kernels run in a subprocess, since a
wrapped address can crash the interpreter instead of failing a comparison).
"""

import os
import subprocess
import sys

import pytest
import torch

from ghosttrack.kernels import fused, reference

pytest.importorskip("triton")
if not fused.interpreting():
    pytest.skip("these tests run the kernels through TRITON_INTERPRET=1", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from ghosttrack.kernels import fused_gemm  # noqa: E402

BIG = 2**30 + 16
"""An element stride that fits int32 (so it is passed as int32) while 2 * BIG does not."""


@triton.jit
def offsets_probe(out_ptr, stride_r, stride_c, R: tl.constexpr, C: tl.constexpr):
    offs = fused_gemm.offsets_2d(tl.arange(0, R), tl.arange(0, C), stride_r, stride_c)
    tl.store(out_ptr + tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :], offs)


def test_offset_helper_is_int64_past_int32_range():
    out = torch.zeros(4, 2, dtype=torch.int64)
    offsets_probe[(1,)](out, BIG, 3 * BIG, R=4, C=2)
    rows, cols = torch.arange(4)[:, None], torch.arange(2)[None, :]
    assert torch.equal(out, rows * BIG + cols * 3 * BIG)
    assert out.max() > 2**32


def huge_stride_views(path: str, B: int, D: int, H: int):
    """x (B, D), W_enc (D, H), W_dec (H, D) whose d-stride is BIG elements, in one sparse file."""
    n = (D - 1) * BIG + B + 2 * H
    with open(path, "wb") as f:
        f.truncate(n * 4)
    base = torch.from_file(path, shared=False, size=n, dtype=torch.float32)
    x = base.as_strided((B, D), (1, BIG), 0)
    W_enc = base.as_strided((D, H), (BIG, 1), B)
    W_dec = base.as_strided((H, D), (1, BIG), B + H)
    return x, W_enc, W_dec


def run_huge_strides(path: str) -> None:
    """Fused vs reference on the huge-stride views (values and every gradient); raises on a mismatch."""
    from fused_sae_cases import close, make_params

    B, D, H = 5, 3, 40
    p = make_params(B, D, H, torch.float32, True, seed=3)
    views = dict(zip(("x", "W_enc", "W_dec"), huge_stride_views(path, B, D, H)))
    for name, view in views.items():
        view.copy_(p[name])
        assert max(view.stride()) * (D - 1) >= 2**31
    fp = {**{k: v.clone() for k, v in p.items()}, **views}
    fp = {k: v.requires_grad_() for k, v in fp.items()}
    rp = {k: v.clone().requires_grad_() for k, v in p.items()}
    outs = []
    for params, fn in ((fp, fused.sae_forward), (rp, reference.sae_forward)):
        out = fn(**params, l1_coeff=0.3, l0_coeff=0.05, bandwidth=0.2)
        (out.loss + out.x_hat.sum() * 0.1).backward()
        outs.append(out)
    for field in reference.SAEOutput._fields:
        close(getattr(outs[0], field), getattr(outs[1], field), 1e-5, field)
    for name in p:
        close(fp[name].grad, rp[name].grad, 1e-5, f"grad {name}")


def test_whole_fused_step_on_views_with_strides_past_int32(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "GHOSTTRACK_POISON": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, __file__, str(tmp_path / "sparse.bin")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    assert "huge strides: fused == reference" in run.stdout


if __name__ == "__main__":
    run_huge_strides(sys.argv[1])
    print("huge strides: fused == reference")
