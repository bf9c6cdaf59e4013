"""A small activation store with sparse structure (rows = a few dictionary atoms + noise), for the
trainer tests: an SAE can actually learn it, and it holds planted attention-sink-like outliers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ghosttrack.store.writer import StoreWriter

CONTEXT = 64


def sparse_rows(n: int, d: int, n_atoms: int, active: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = np.argsort(rng.random((n, n_atoms)), axis=1)[:, :active]
    coef = rng.uniform(1.0, 2.0, (n, active))
    x = np.einsum("na,nad->nd", coef, atoms[idx]) + 0.05 * rng.standard_normal((n, d)) + 0.5
    return x.astype(np.float32)


def write_store(path: Path, *, layers=(0, 2), d_model: int = 16, n_tokens: int = 8192, chunk_tokens: int = 512,
                outlier_every: int = 997, nan_row: int | None = None, complete: bool = True) -> dict:
    """Write the store; returns what was planted ({"outliers": n, "flagged": n})."""
    rows = {layer: sparse_rows(n_tokens, d_model, 2 * d_model, 2, seed=layer) for layer in layers}
    positions = (np.arange(n_tokens) % CONTEXT).astype(np.int32)
    outliers = np.flatnonzero((np.arange(n_tokens) % outlier_every == 5) & (positions != 0))
    for x in rows.values():
        x[outliers] *= 80.0  # like the attention sinks of real models: ~80x the median norm
        if nan_row is not None:
            x[nan_row, 3] = np.nan
    attrs = {"model": "synthetic-sparse", "revision": None, "hook": "resid_post", "context_length": CONTEXT,
             "tokenizer": "none", "corpus": {"kind": "synthetic"}}
    w = StoreWriter.open(path, layers=list(layers), d_model=d_model, target_tokens=n_tokens,
                         chunk_tokens=chunk_tokens, attrs=attrs)
    with w:
        for a in range(0, n_tokens, 1000):
            b = min(n_tokens, a + 1000)
            w.append({layer: x[a:b] for layer, x in rows.items()}, np.zeros(b - a, np.int32), positions[a:b],
                     np.arange(a, b) // CONTEXT)
        w.close(complete=complete)
    return {"outliers": len(outliers), "flagged": int((positions == 0).sum()), "rows": rows}


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny shapes: one intra-op thread avoids OpenMP barrier stalls when the 2 cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
