"""Our SAE checkpoints in SAELens, in-process, both ways (skipped only when sae-lens is not installed).

Run it with the peers venv, which has sae-lens:
    /work/peers-venv/bin/python -m pytest -q tests/test_saelens.py
"""
import pytest
import torch

pytest.importorskip("sae_lens", reason="sae-lens is not installed")
from sae_lens import SAE  # noqa: E402

from ghosttrack.sae.module import load_sae  # noqa: E402
from ghosttrack.sae import JumpReluSAEConfig, ReluSAEConfig, SparseAutoencoder, TopKSAEConfig  # noqa: E402

D, H = 24, 56
CONFIGS = {
    "relu": ReluSAEConfig(d_in=D, d_sae=H),
    "jumprelu": JumpReluSAEConfig(d_in=D, d_sae=H),
    "topk": TopKSAEConfig(d_in=D, d_sae=H, k=5),
}
META = {"hook_name": "blocks.4.hook_resid_post", "hook_layer": 4, "model_name": "tiny-gpt2"}


def trained_looking(arch: str) -> SparseAutoencoder:
    """An SAE with every parameter moved off its init, so a dropped or misread tensor shows."""
    torch.manual_seed(1)
    sae = SparseAutoencoder(CONFIGS[arch], META)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.empty(H).uniform_(-3, 0).exp())
    return sae


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_our_checkpoint_loads_in_saelens(arch, tmp_path):
    ours = trained_looking(arch)
    ours.save(tmp_path)
    theirs = SAE.load_from_disk(str(tmp_path))
    x = torch.randn(33, D) * 3
    with torch.no_grad():
        acts = theirs.encode(x)
        torch.testing.assert_close(acts, ours.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.decode(acts), ours.decode(acts), rtol=1e-5, atol=1e-5)
    assert (acts > 0).float().mean() > 0.01
    assert theirs.cfg.metadata.hook_name == META["hook_name"] and theirs.cfg.d_sae == H


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_saelens_saved_sae_loads_in_ours(arch, tmp_path):
    """An SAE written by SAELens itself (save_model) reads back into ours with the same features."""
    ours = trained_looking(arch)
    ours.save(tmp_path / "ours")
    SAE.load_from_disk(str(tmp_path / "ours")).save_model(tmp_path / "theirs")
    back = load_sae(tmp_path / "theirs")
    x = torch.randn(17, D)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(x), ours(x), rtol=1e-5, atol=1e-5)
