"""SparseAutoencoder: each architecture's forward/loss against the plain kernels, the decoder
geometry helpers, folding the input scale, and the SAELens-layout save/load round trip."""
import json

import pytest
import torch

from ghosttrack.sae.module import load_sae
from ghosttrack.kernels import reference
from ghosttrack.kernels.topk import topk_forward
from ghosttrack.sae.module import SparseAutoencoder
from ghosttrack.sae.config import (JumpReluSAEConfig, ReluSAEConfig, TopKSAEConfig, make_sae_config,
                                   sae_config_from_dict)

CONFIGS = [ReluSAEConfig(d_in=24, d_sae=70, l1_coeff=0.3),
           JumpReluSAEConfig(d_in=24, d_sae=70, l0_coeff=0.05, bandwidth=0.5, init_threshold=0.05),
           TopKSAEConfig(d_in=24, d_sae=70, k=6, aux_k=9, dead_tokens=10)]


def _sae(cfg, seed=0):
    torch.manual_seed(seed)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae


def _x(B=33, D=24, seed=1):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed)) * 2 + 0.3


def test_relu_loss_is_the_reference_loss():
    sae = _sae(CONFIGS[0])
    x = _x()
    step = sae.training_loss(x, sparsity_scale=0.5)
    ref = reference.sae_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, 0.3 * 0.5)
    torch.testing.assert_close(step.loss, ref.loss)
    torch.testing.assert_close(step.x_hat_BD, ref.x_hat)
    torch.testing.assert_close(step.x_hat_BD, sae(x))
    assert step.l0_B.tolist() == (ref.acts > 0).sum(1).tolist()
    assert step.fired_H.tolist() == (ref.acts > 0).sum(0).tolist()


def test_jumprelu_threshold_learns_and_encode_matches():
    sae = _sae(CONFIGS[1])
    x = _x()
    step = sae.training_loss(x)
    step.loss.backward()
    assert sae.threshold.grad is not None and sae.threshold.grad.abs().sum() > 0
    pre = x @ sae.W_enc + sae.b_enc
    acts = sae.encode(x)
    torch.testing.assert_close(acts, pre * (pre > sae.threshold))
    torch.testing.assert_close(step.x_hat_BD, sae.decode(acts))
    ref = reference.sae_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, 0.0, sae.threshold,
                                l0_coeff=0.05, bandwidth=0.5)
    torch.testing.assert_close(step.loss, ref.loss)


def test_topk_loss_matches_plain_topk_and_auxk_only_with_dead_latents():
    cfg = CONFIGS[2]
    sae = _sae(cfg)
    x = _x()
    ref = topk_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, cfg.k)
    alive = torch.zeros(cfg.d_sae, dtype=torch.int64)
    step = sae.training_loss(x, tokens_since_fired_H=alive)
    torch.testing.assert_close(step.mse, ref.mse)
    torch.testing.assert_close(step.loss, ref.mse)  # nothing dead: AuxK is exactly 0
    torch.testing.assert_close(step.x_hat_BD, sae(x))
    assert step.l0_B.max() <= cfg.k

    dead = alive.clone()
    dead[:20] = cfg.dead_tokens  # 20 dead latents >= aux_k: full AuxK weight
    sae.zero_grad()
    step = sae.training_loss(x, tokens_since_fired_H=dead)
    assert step.terms["auxk"] > 0
    # AuxK from the definition: residual reconstructed by the aux_k largest dead latents.
    pre = torch.relu(x @ sae.W_enc + sae.b_enc)[:, :20]
    vals, idx = pre.topk(cfg.aux_k, dim=-1)
    e_hat = (vals.unsqueeze(-1) * sae.W_dec[idx]).sum(1)
    want = ((x - ref.x_hat) - e_hat).pow(2).sum(-1).mean()
    torch.testing.assert_close(step.terms["auxk"], want.detach())
    step.loss.backward()
    # Only dead latents receive AuxK gradient through b_enc beyond the top-k ones.
    assert sae.b_enc.grad[:20].abs().sum() > 0

    few = alive.clone()
    few[:5] = cfg.dead_tokens  # 5 dead < aux_k = 9: all five used, weight 5/9
    step = sae.training_loss(x, tokens_since_fired_H=few)
    e_hat = (torch.relu(x @ sae.W_enc + sae.b_enc)[:, :5].unsqueeze(-1) * sae.W_dec[:5]).sum(1)
    want = ((x - ref.x_hat) - e_hat).pow(2).sum(-1).mean() * 5 / 9
    torch.testing.assert_close(step.terms["auxk"], want.detach())


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.architecture)
def test_folding_the_input_scale_gives_the_same_reconstruction_in_raw_units(cfg):
    sae = _sae(cfg)
    x_raw = _x() * 37.0
    scale = 0.021
    folded = sae.folded(scale)
    torch.testing.assert_close(folded(x_raw), sae(x_raw * scale) / scale, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(folded.encode(x_raw), sae.encode(x_raw * scale) / scale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded.W_dec, sae.W_dec)


def test_decoder_renormalisation_and_parallel_gradient_removal():
    sae = _sae(CONFIGS[0])
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(70, 1) + 0.5)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(70))
    sae.training_loss(_x()).loss.backward()
    sae.remove_parallel_grad_()
    scale = float(sae.W_dec.grad.norm(dim=1).max())
    assert scale > 0
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(70), atol=1e-6 * scale, rtol=0)


def test_init_from_data_centres_the_encoder():
    sae = _sae(CONFIGS[2])
    mean = torch.randn(24)
    sae.init_from_data_(mean)
    x = _x()
    torch.testing.assert_close(x @ sae.W_enc + sae.b_enc, (x - mean) @ sae.W_enc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.b_dec.detach(), mean)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.architecture)
def test_save_load_round_trip(tmp_path, cfg):
    sae = _sae(cfg)
    sae.save(tmp_path, {"hook_name": "blocks.3.hook_resid_post", "hook_layer": 3, "model_name": "tiny",
                        "ghosttrack": {"input_scale_folded": 0.5}})
    loaded = load_sae(tmp_path)
    assert loaded.cfg == cfg
    assert loaded.metadata["hook_layer"] == 3 and loaded.metadata["ghosttrack"]["input_scale_folded"] == 0.5
    x = _x()
    torch.testing.assert_close(loaded(x), sae(x))
    cfg_json = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg_json["architecture"] == {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[cfg.architecture]
    assert cfg_json["d_in"] == 24 and cfg_json["d_sae"] == 70 and cfg_json["apply_b_dec_to_input"] is False


def test_configs_round_trip_and_reject_bad_values():
    for cfg in CONFIGS:
        assert sae_config_from_dict(cfg.to_dict()) == cfg
    assert make_sae_config("topk", 8, 16, k=4, l1_coeff=9.0).k == 4
    assert TopKSAEConfig(d_in=1000, d_sae=4096).aux_k == 500
    with pytest.raises(ValueError, match="k must be"):
        TopKSAEConfig(d_in=8, d_sae=16, k=17)
    with pytest.raises(ValueError, match="unknown key"):
        sae_config_from_dict({"architecture": "relu", "d_in": 4, "d_sae": 8, "bogus": 1})
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        make_sae_config("gated", 4, 8)


def test_constraints_keep_thresholds_non_negative_and_decoder_rows_unit_norm():
    sae = _sae(CONFIGS[1])
    with torch.no_grad():
        sae.threshold[:10] = -0.5
        sae.W_dec.mul_(3.0)
    sae.constrain_()
    assert (sae.threshold >= 0).all() and (sae.threshold[:10] == 0).all()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(70))
