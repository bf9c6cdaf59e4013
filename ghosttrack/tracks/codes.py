"""SAE activations of many rows (tokens) in CSR form: what matching and tracking pass around."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor


@dataclass
class SparseCodes:
    """SAE activations of n_rows rows in CSR form (entries of row r: row_ptr[r] .. row_ptr[r + 1])."""

    row_ptr: Tensor
    """(n_rows + 1,) int64."""
    feat: Tensor
    """(nnz,) int64 latent ids, ascending inside a row."""
    val: Tensor
    """(nnz,) float32 activations (> 0)."""
    n_features: int

    @property
    def n_rows(self) -> int:
        return self.row_ptr.numel() - 1

    @classmethod
    def from_dense(cls, acts_NH: Tensor, min_value: float = 0.0) -> "SparseCodes":
        """The entries of acts_NH above min_value (activations are >= 0: 0 keeps every firing latent)."""
        nz = (acts_NH > min_value).nonzero()
        counts = torch.bincount(nz[:, 0], minlength=acts_NH.shape[0]) if nz.numel() else \
            torch.zeros(acts_NH.shape[0], dtype=torch.long, device=acts_NH.device)
        ptr = torch.zeros(acts_NH.shape[0] + 1, dtype=torch.long, device=acts_NH.device)
        ptr[1:] = counts.cumsum(0)
        return cls(ptr, nz[:, 1].contiguous(), acts_NH[nz[:, 0], nz[:, 1]].float(), acts_NH.shape[1])

    @classmethod
    def cat(cls, parts: list["SparseCodes"], n_features: int, device) -> "SparseCodes":
        if not parts:
            return cls(torch.zeros(1, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device),
                       torch.zeros(0, device=device), n_features)
        offsets = torch.tensor([0] + [p.row_ptr[-1].item() for p in parts], device=device).cumsum(0)
        ptr = torch.cat([parts[0].row_ptr[:1]] + [p.row_ptr[1:] + offsets[i] for i, p in enumerate(parts)])
        return cls(ptr, torch.cat([p.feat for p in parts]), torch.cat([p.val for p in parts]), n_features)

    def entry_rows(self) -> Tensor:
        """(nnz,) the row of every entry."""
        counts = self.row_ptr.diff()
        return torch.repeat_interleave(torch.arange(self.n_rows, device=counts.device), counts)

    def select_rows(self, keep_N: Tensor) -> "SparseCodes":
        """The codes of the rows where keep_N is True, in order."""
        counts = self.row_ptr.diff()
        keep_e = keep_N[self.entry_rows()]
        ptr = torch.zeros(int(keep_N.sum()) + 1, dtype=torch.long, device=counts.device)
        ptr[1:] = counts[keep_N].cumsum(0)
        return SparseCodes(ptr, self.feat[keep_e], self.val[keep_e], self.n_features)

    def to_dense(self) -> Tensor:
        out = torch.zeros(self.n_rows, self.n_features, device=self.val.device)
        out[self.entry_rows(), self.feat] = self.val
        return out


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch CPU ops on one thread. Tracking and co-activation are sorts, gathers and scatters: on a
    busy CPU each multi-threaded op waits for free cores; one thread ran the tracker 20-35x and the
    co-activation 2-3x faster here (2 shared cores)."""
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
