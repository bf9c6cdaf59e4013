"""Builders shared by the tracks tests: random SAEs, a planted permutation, and small stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ghosttrack.sae import JumpReluSAEConfig, ReluSAEConfig, SparseAutoencoder
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, synthetic_acts, synthetic_rows
from ghosttrack.store.writer import StoreWriter


def random_sae(d_in: int, d_sae: int, *, arch: str = "relu", seed: int = 0, bias: float = -0.3) -> SparseAutoencoder:
    """An SAE with random unit decoder rows, tied encoder and a negative bias (sparse activations)."""
    torch.manual_seed(seed)
    cfg = JumpReluSAEConfig(d_in, d_sae) if arch == "jumprelu" else ReluSAEConfig(d_in, d_sae)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_enc.fill_(bias)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae) * 1.5 + 0.5)
    return sae.requires_grad_(False)


def permuted_sae(sae: SparseAutoencoder, perm: np.ndarray, *, rotation: torch.Tensor | None = None,
                 row_scale: torch.Tensor | None = None) -> SparseAutoencoder:
    """An SAE whose latent perm[h] is latent h of `sae`, on inputs rotated by `rotation` (x -> x @ R).

    row_scale[h] multiplies latent h's decoder row and divides its threshold (JumpReLU), the change
    that folding undoes.
    """
    out = SparseAutoencoder(sae.cfg, init=False)
    out.load_state_dict(sae.state_dict())
    p = torch.as_tensor(perm, dtype=torch.long)
    R = torch.eye(sae.cfg.d_in) if rotation is None else rotation
    c = torch.ones(sae.cfg.d_sae) if row_scale is None else row_scale
    with torch.no_grad():
        out.W_enc[:, p] = R.t() @ sae.W_enc  # (x R) @ R^T W_enc = x @ W_enc for orthogonal R
        out.b_enc[p] = sae.b_enc
        out.W_dec[p] = (sae.W_dec @ R) * c[:, None]
        out.b_dec.copy_(sae.b_dec @ R)
        if sae.cfg.architecture == "jumprelu":
            out.threshold[p] = sae.threshold / c
    return out.requires_grad_(False)


def write_rotated_store(path: Path, *, layers: tuple[int, int], rotation: np.ndarray, n_tokens: int,
                        chunk_tokens: int, context_length: int = 16) -> Path:
    """A store whose second layer is the first one times `rotation` (the same tokens at both layers)."""
    d_model = rotation.shape[0]
    with StoreWriter.open(path, layers=list(layers), d_model=d_model, target_tokens=n_tokens, chunk_tokens=chunk_tokens,
                          attrs={**SYNTHETIC_ATTRS, "context_length": context_length}) as w:
        for a in range(0, n_tokens, 500):
            b = min(n_tokens, a + 500)
            x = synthetic_acts(layers[0], a, b, d_model)
            w.append({layers[0]: x, layers[1]: x @ rotation}, *synthetic_rows(a, b, context_length))
        w.close(complete=True)
    return path


def save_layer(sae: SparseAutoencoder, root: Path, layer: int, ghosttrack: dict | None = None) -> Path:
    """Save `sae` as root/layer_<layer>/ with the metadata a trained SAE carries."""
    directory = root / f"layer_{layer}"
    sae.save(directory, {"hook_layer": layer, "ghosttrack": ghosttrack or {}})
    return directory
