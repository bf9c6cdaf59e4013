"""The pre-encoder bias (the encoder sees x - b_dec): each architecture's loss and every gradient
against the formula written out by hand, the fused path against the reference, the data init,
and the fold into the plain form that saving uses."""
import pytest
import torch

from ghosttrack.kernels import fused, reference
from ghosttrack.sae.config import JumpReluSAEConfig, ReluSAEConfig, TopKSAEConfig
from ghosttrack.sae.module import SparseAutoencoder, load_sae

B, D, H = 29, 23, 61  # odd shapes
CONFIGS = {"relu": ReluSAEConfig(d_in=D, d_sae=H, l1_coeff=0.3),
           "jumprelu": JumpReluSAEConfig(d_in=D, d_sae=H, l0_coeff=0.05, bandwidth=0.5, init_threshold=0.2),
           "topk": TopKSAEConfig(d_in=D, d_sae=H, k=5, aux_k=7, aux_coeff=0.5, dead_tokens=10)}
SCALE = 0.7  # sparsity_scale


def _sae(arch, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    sae = SparseAutoencoder(CONFIGS[arch], pre_encoder_bias=True).to(dtype)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 1.0)  # large enough that forgetting it anywhere shows
    return sae


def _x(dtype=torch.float64, seed=1):
    return (torch.randn(B, D, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5).to(dtype)


def _dead():
    since = torch.zeros(H, dtype=torch.int64)
    since[::3] = 100  # every third latent dead: 21 >= aux_k
    return since


def _by_hand(arch, p, x):
    """The loss written out with x - b_dec before the encoder (plain dense PyTorch)."""
    cfg = CONFIGS[arch]
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    if arch == "relu":
        acts = torch.relu(pre)
        penalty = cfg.l1_coeff * SCALE * (acts * p["W_dec"].norm(dim=1)).sum(-1).mean()
    elif arch == "jumprelu":
        acts = reference.JumpReLU.apply(pre, p["threshold"], cfg.bandwidth)
        l0 = reference.Step.apply(pre, p["threshold"], cfg.bandwidth).sum(-1).mean()
        penalty = cfg.l0_coeff * SCALE * l0
    else:
        relu = torch.relu(pre)
        vals, idx = relu.topk(cfg.k, dim=-1)
        acts = torch.zeros_like(relu).scatter(-1, idx, vals)
    x_hat = acts @ p["W_dec"] + p["b_dec"]
    mse = (x - x_hat).pow(2).sum(-1).mean()
    if arch == "topk":
        dead = _dead() >= cfg.dead_tokens
        vals, idx = relu.masked_fill(~dead, -1.0).topk(cfg.aux_k, dim=-1)
        e_hat = torch.zeros_like(relu).scatter(-1, idx, vals) @ p["W_dec"]
        auxk = ((x - x_hat).detach() - e_hat).pow(2).sum(-1).mean() * min(int(dead.sum()) / cfg.aux_k, 1.0)
        penalty = cfg.aux_coeff * SCALE * auxk
    return mse + penalty, x_hat


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_loss_and_every_gradient_are_the_formula(arch):
    sae = _sae(arch)
    x = _x()
    step = sae.training_loss(x, tokens_since_fired_H=_dead(), sparsity_scale=SCALE)
    step.loss.backward()
    p = {name: t.detach().clone().requires_grad_() for name, t in sae.named_parameters()}
    want_loss, want_x_hat = _by_hand(arch, p, x)
    want_loss.backward()
    torch.testing.assert_close(step.loss, want_loss)
    torch.testing.assert_close(step.x_hat_BD, want_x_hat.detach())
    torch.testing.assert_close(sae(x), want_x_hat.detach())
    for name, param in sae.named_parameters():
        torch.testing.assert_close(param.grad, p[name].grad, msg=f"grad {name}")
    assert sae.b_dec.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_fused_path_matches_the_reference_with_a_pre_encoder_bias(arch):
    pytest.importorskip("triton")
    if not fused.interpreting():
        pytest.skip("runs the kernels through TRITON_INTERPRET=1")
    ref, fus = _sae(arch, torch.float32), _sae(arch, torch.float32)
    x = _x(torch.float32)
    want = ref.training_loss(x, sparsity_scale=SCALE)
    got = fus.training_loss(x, sparsity_scale=SCALE, fused=True)
    want.loss.backward()
    got.loss.backward()
    tol = dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(got.loss, want.loss, **tol)
    torch.testing.assert_close(got.x_hat_BD, want.x_hat_BD, **tol)
    for (name, a), b in zip(fus.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=f"grad {name}")


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_data_init_starts_both_forms_on_the_same_centred_inputs(arch):
    mean = torch.randn(D, dtype=torch.float64) * 3
    x = _x()
    encoded = {}
    for bias in (False, True):
        torch.manual_seed(4)
        sae = SparseAutoencoder(CONFIGS[arch], pre_encoder_bias=bias).double()
        with torch.no_grad():
            sae.b_enc.normal_()  # whatever the biases held before, the init sets them
        sae.init_from_data_(mean)
        encoded[bias] = sae.encode(x)
        shifted = x - sae.b_dec if bias else x
        torch.testing.assert_close(shifted @ sae.W_enc + sae.b_enc, (x - mean) @ sae.W_enc)
    torch.testing.assert_close(encoded[True], encoded[False])
    assert (encoded[True] > 0).any()


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_folding_gives_the_plain_form_on_raw_inputs(arch, tmp_path):
    sae = _sae(arch, torch.float32)
    if arch == "jumprelu":
        with torch.no_grad():
            sae.threshold.uniform_(0.0, 0.5)
    s = 2.7
    x_raw = _x(torch.float32) / s
    tol = dict(rtol=1e-4, atol=1e-4)
    folded = sae.folded(s)
    assert not folded.pre_encoder_bias
    torch.testing.assert_close(folded.encode(x_raw), sae.encode(x_raw * s) / s, **tol)
    torch.testing.assert_close(folded(x_raw), sae(x_raw * s) / s, **tol)
    folded.save(tmp_path)
    torch.testing.assert_close(load_sae(tmp_path)(x_raw), sae(x_raw * s) / s, **tol)
