"""The features whose decoder directions are closest to each feature's (cosine similarity).

Blocked: `block` rows of the normalised decoder against all H at a time, a top-N per row, so
memory stays at block x H and an H x H matrix never exists (H = 24k would be 2.3 GB).
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def nearest_by_decoder(W_dec_HD: torch.Tensor, top_n: int, *, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(ids (H, N), cosines (H, N)) of each feature's N nearest other features, closest first.

    A zero decoder row has cosine 0 with everything. The order of exact ties is unspecified.
    """
    W = W_dec_HD.detach().float()
    n = W.shape[0]
    top_n = min(top_n, n - 1)
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ids = np.zeros((n, max(top_n, 0)), dtype=np.int64)
    cos = np.zeros((n, max(top_n, 0)), dtype=np.float32)
    if top_n <= 0:
        return ids, cos
    for s in range(0, n, block):
        sim = unit[s:s + block] @ unit.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + s] = -torch.inf  # never its own neighbour
        vals, order = torch.topk(sim, top_n, dim=1, sorted=True)
        ids[s:s + block] = order.cpu().numpy()
        cos[s:s + block] = vals.cpu().numpy()
    return ids, cos
