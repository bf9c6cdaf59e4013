"""A uniform random sample of each feature's nonzero activations, kept during the streaming pass.

Why a sample and not one reservoir per quantile band: the band edges are quantiles of the
feature's whole distribution, which is known only once the pass ends (the log-binned
histogram gives them then, to a bin's width). Bands chosen from a running histogram would
move while examples are being kept, and the early examples would sit in the wrong band. A
uniform sample without replacement, split into bands after the pass, needs no edges during
the pass: each band of q of the activations holds about q of the sample (binomially), so a
sample of 32 fills five bands with ~6 examples each (a band is empty with probability
0.8**32 < 0.1%); a feature that fired on fewer rows than the sample size is kept whole.

The sample is "bottom-m by a hash key": every (row, feature) pair gets a pseudo-random 31-bit
key from a fixed integer hash, and each feature keeps the m pairs with the smallest keys.
The m smallest of i.i.d. uniform keys are a uniform sample without replacement (priority
sampling with equal weights), the result does not depend on the batch order or size, and a
pair whose key is above the feature's current m-th key can never enter: after the first
batches almost nothing is merged (the same shape as the running top-k in scan.py).
"""
from __future__ import annotations

import torch

EMPTY_KEY = 1 << 31
"""Key of an empty slot: above every 31-bit hash, so any pair beats it."""
_MASK32 = 0xFFFFFFFF


def _round(x: torch.Tensor) -> torch.Tensor:
    """One xor-shift-multiply round on int64 tensors holding values < 2**32."""
    return (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A full 32-bit integer finaliser: two rounds and a final xor-shift."""
    x = _round(_round(x))
    return (x >> 16) ^ x


def row_hash(rows: torch.Tensor) -> torch.Tensor:
    """A full-strength 32-bit hash of each store row id (int64, any size)."""
    return _mix32((rows & _MASK32) ^ (rows >> 32))


def feature_hash(features: torch.Tensor) -> torch.Tensor:
    return _mix32((features * 0x9E3779B1) & _MASK32)


def sample_key(rows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The 31-bit sampling key of each (store row, feature) pair (int64 tensors, same shape).

    For one feature the key is a bijection of the row's hash (xor with a constant, one round), so
    its keys over rows are as uniform as the row hash: its bottom-m is a uniform sample. The round
    after the xor keeps different features from sampling the same rows. Per pair it costs two
    gathers of precomputed hashes and five integer ops (the pass computes it for every activation).
    """
    return _round(row_hash(rows) ^ feature_hash(features)) >> 1


class UniformSample:
    """Per feature, the `size` (row, value) pairs with the smallest sample keys seen so far."""

    def __init__(self, d_sae: int, size: int, device: torch.device):
        self.d_sae, self.size = d_sae, size
        self.keys_HM = torch.full((d_sae, size), EMPTY_KEY, dtype=torch.long, device=device)
        self.rows_HM = torch.full((d_sae, size), -1, dtype=torch.long, device=device)
        self.vals_HM = torch.zeros((d_sae, size), device=device)
        self.threshold_H = self.keys_HM[:, -1].clone()  # each feature's m-th smallest key, contiguous
        self.feature_hash_H = feature_hash(torch.arange(d_sae, device=device))
        self._pending: list[tuple[torch.Tensor, ...]] = []
        self._pending_n = 0

    def offer(self, h_N: torch.Tensor, v_N: torch.Tensor, b_N: torch.Tensor, rows_B: torch.Tensor) -> None:
        """Nonzero activations v of features h on batch rows b, whose store rows are rows_B."""
        key_N = _round(row_hash(rows_B)[b_N] ^ self.feature_hash_H[h_N]) >> 1  # = sample_key(rows_B[b_N], h_N)
        enter_N = key_N < self.threshold_H[h_N]
        if enter_N.any():
            self._pending.append((h_N[enter_N], key_N[enter_N], rows_B[b_N[enter_N]], v_N[enter_N]))
            self._pending_n += int(self._pending[-1][0].numel())
            if self._pending_n >= self.d_sae * self.size:
                self.flush()

    def flush(self) -> None:
        """Merge the pending pairs into the samples of the features they touch."""
        if not self._pending:
            return
        h_M, key_M, r_M, v_M = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending, self._pending_n = [], 0
        m = self.size
        touched_H = torch.zeros(self.d_sae, dtype=torch.bool, device=h_M.device)
        touched_H[h_M] = True
        feats_F = touched_H.nonzero().squeeze(1)
        h_all = torch.cat([feats_F.repeat_interleave(m), h_M])
        key_all = torch.cat([self.keys_HM[feats_F].reshape(-1), key_M])
        r_all = torch.cat([self.rows_HM[feats_F].reshape(-1), r_M])
        v_all = torch.cat([self.vals_HM[feats_F].reshape(-1), v_M])
        # One sort on (feature, key); keys are < 2**32, so they fit beside the feature id.
        sorted_key, order = torch.sort((h_all << 32) | key_all)
        h_s = sorted_key >> 32
        start_H = torch.zeros(self.d_sae, dtype=torch.long, device=h_M.device)
        start_H[feats_F] = torch.searchsorted(h_s, feats_F)
        rank = torch.arange(sorted_key.numel(), device=h_M.device) - start_H[h_s]
        keep = rank < m
        h_k, rank_k, src = h_s[keep], rank[keep], order[keep]
        self.keys_HM[h_k, rank_k] = sorted_key[keep] & _MASK32
        self.rows_HM[h_k, rank_k] = r_all[src]
        self.vals_HM[h_k, rank_k] = v_all[src]
        self.threshold_H[feats_F] = self.keys_HM[feats_F, -1]
