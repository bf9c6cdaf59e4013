"""Builders shared by the tracks tests: random SAEs, a planted permutation, and small stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ghosttrack.sae import JumpReluSAEConfig, ReluSAEConfig, SparseAutoencoder
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, synthetic_acts, synthetic_rows
from ghosttrack.store.writer import StoreWriter
from ghosttrack.tracks.codes import SparseCodes


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


# --- tracker inputs ---------------------------------------------------------------------------

LAYERS = [3, 5, 9]


def codes_of(active: list[dict[int, float]], n_features: int) -> SparseCodes:
    dense = torch.zeros(len(active), n_features)
    for t, feats in enumerate(active):
        for f, a in feats.items():
            dense[t, f] = a
    return SparseCodes.from_dense(dense)


def edge_table(triples):
    src, dst, score = zip(*triples) if triples else ((), (), ())
    return {"src": np.array(src, np.int32), "dst": np.array(dst, np.int32), "score": np.array(score, np.float32)}


# Token 0: latent 0 splits into 0 and 1; latents 1 and 2 both lead to 3 (2 merges into 1's track); 5 is born
# at layer 5 and dies; at layer 9 the track of 3 merges into the split. Token 1: a latent that dies at once and a
# latent born at layer 9 that token 0's identical latent ids must not link to.
ACTIVE = [
    [{0: 1.0, 1: 2.0, 2: 0.5}, {3: 1.0}],
    [{0: 1.5, 1: 1.0, 3: 0.7, 5: 0.2}, {}],
    [{0: 2.0, 4: 1.0}, {0: 1.0}],
]
EDGES = {
    (3, 5): [(0, 0, 0.9), (0, 1, 0.6), (1, 3, 0.8), (2, 3, 0.5), (2, 4, 0.9)],
    (5, 9): [(0, 0, 0.7), (3, 4, 0.4), (1, 4, 0.45), (5, 0, 0.2)],  # 5 -> 0 is below min_score
}


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    n_layers, n_tokens = int(rng.integers(2, 5)), int(rng.integers(1, 9))
    layers = sorted(rng.choice(20, n_layers, replace=False).tolist())
    sizes = {layer: int(rng.integers(3, 12)) for layer in layers}
    density = rng.uniform(0.1, 0.6)
    active = [[{f: float(np.float32(rng.uniform(0.1, 3))) for f in range(sizes[layer]) if rng.random() < density}
               for _ in range(n_tokens)] for layer in layers]
    edges = {}
    for i, j in zip(layers[:-1], layers[1:]):
        triples = [(s, d, float(np.float32(rng.choice([0.2, 0.4, 0.6, 0.8]))))  # few values: many ties
                   for s in range(sizes[i]) for d in range(sizes[j]) if rng.random() < 0.35]
        if triples and rng.random() < 0.5:  # a duplicated edge with another score
            s, d, _ = triples[int(rng.integers(len(triples)))]
            triples.append((s, d, float(np.float32(0.6))))
        edges[(i, j)] = triples
    return layers, sizes, active, edges
