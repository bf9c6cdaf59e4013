"""Our SAE checkpoints in SAELens, in-process, both ways, for every architecture.

sae-lens is in the dev extra, so `make test` runs this: a change of either format fails here
instead of landing unseen. Without sae-lens the module fails to collect (it never skips).
"""
import pytest
import torch

try:
    from sae_lens import SAE
except ImportError as error:  # pragma: no cover - the dev extra installs it
    # Installed but failing to import (a dependency moved, a folder shadowing a package) is not "missing".
    import importlib.util

    why = (f"sae-lens is installed but its import failed: {type(error).__name__}: {error}"
           if importlib.util.find_spec("sae_lens") else
           "sae-lens is not installed; it is in the dev extra: pip install -e '.[dev]'")
    pytest.fail(why, pytrace=False)

from ghosttrack.sae import ARCHITECTURES, SparseAutoencoder  # noqa: E402
from ghosttrack.sae.module import load_sae  # noqa: E402

D, H = 24, 56
META = {"hook_name": "blocks.4.hook_resid_post", "hook_layer": 4, "model_name": "tiny-gpt2"}


def trained_looking(arch: str) -> SparseAutoencoder:
    """An SAE of a registered architecture (its default options) with every parameter moved off
    its init, so a dropped or misread tensor shows."""
    torch.manual_seed(1)
    sae = SparseAutoencoder(ARCHITECTURES[arch].config_class(d_in=D, d_sae=H), META)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if hasattr(sae, "threshold"):  # thresholds stay positive and spread, so some latents fire
            sae.threshold.copy_(torch.empty(H).uniform_(-3, 0).exp())
    return sae


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
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


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
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
