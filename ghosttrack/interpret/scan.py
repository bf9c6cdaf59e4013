"""The streaming interpretation pass: one read of a stored layer through the SAE encoder.

For every feature at once it keeps the top-k activations and their store rows (a
running top-k merge), the number of activations, their sum, and a histogram on
log-spaced bins. Everything runs in torch on the SAE's device; the only per-batch
host sync is the size of the nonzero set.

The merge works on the sparse (row, feature, value) triplets of a batch: a triplet can
only enter a feature's top-k if it beats the feature's current k-th best value, so
after the first batches only a handful of triplets are merged (see `update`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ghosttrack.errors import GhostTrackError
from ghosttrack.interpret.sampling import UniformSample
from ghosttrack.store.stats import MAX_NORM_RATIO, scan_layer


@dataclass(frozen=True)
class LogBins:
    """Histogram bins with log-spaced edges; values below the first edge land in bin 0, above the last in the last."""

    min_log10: float = -4.0
    """log10 of the lowest inner edge."""
    max_log10: float = 4.0
    """log10 of the highest inner edge."""
    per_decade: int = 20
    """Bins per factor of ten."""

    def __post_init__(self) -> None:
        if self.per_decade < 1 or self.max_log10 <= self.min_log10:
            raise GhostTrackError(f"histogram bins need per_decade >= 1 and max > min, got {self}")

    @property
    def n_bins(self) -> int:
        # One under-range bin, the decades, one over-range bin.
        return round((self.max_log10 - self.min_log10) * self.per_decade) + 2

    def edges(self) -> np.ndarray:
        """The n_bins - 1 inner edges (bin i spans edges[i-1] .. edges[i])."""
        return 10.0 ** np.linspace(self.min_log10, self.max_log10, self.n_bins - 1)


@contextmanager
def _cpu_threads(device: torch.device, n: int) -> Iterator[None]:
    """Run torch CPU ops with n intra-op threads. The bookkeeping is many small ops: with two
    OpenMP threads on a busy CPU each op waits for a free core, single-threaded they cost 3-8x
    less (measured here); the encoder keeps every thread."""
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class FeatureAccumulator:
    """Per-feature running statistics over batches of activations, all features at once.

    The top-k slots start empty (value 0, row -1): activations that count are > 0, so any of
    them beats an empty slot.
    """

    def __init__(self, d_sae: int, top_k: int, *, bins: LogBins = LogBins(), device: torch.device | str = "cpu",
                 numpy_nonzero: bool | None = None, sample_size: int = 0):
        if top_k < 1:
            raise GhostTrackError(f"top_k must be >= 1, got {top_k}; pass --top-k 1 or more")
        self.d_sae, self.top_k, self.bins = d_sae, top_k, bins
        self.device = device = torch.device(device)
        # On the CPU numpy's compare + flatnonzero is ~3x faster than torch.nonzero (measured here).
        self.numpy_nonzero = device.type == "cpu" if numpy_nonzero is None else numpy_nonzero
        self.top_vals_HK = torch.zeros((d_sae, top_k), device=device)
        self.top_rows_HK = torch.full((d_sae, top_k), -1, dtype=torch.long, device=device)
        self.count_H = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.sum_H = torch.zeros(d_sae, dtype=torch.float64, device=device)
        # Bin-major: a batch's activations fall in a few bins, so the scatter below stays cache-local.
        self.hist_NH = torch.zeros(bins.n_bins, d_sae, dtype=torch.long, device=device)
        self.n_rows = 0
        # Candidates wait until there are about as many as top-k slots: a merge costs O(candidates +
        # touched features x k), so waiting makes the slot part negligible per candidate.
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending_n = 0
        self.merge_at = d_sae * top_k
        # A uniform sample of every feature's activations, split into quantile bands after the pass.
        self.sample = UniformSample(d_sae, sample_size, device) if sample_size > 0 else None

    def _nonzero(self, acts_BH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat indices, values) of the entries > 0, in row-major order."""
        if self.numpy_nonzero:
            a = acts_BH.numpy().reshape(-1)
            flat = np.flatnonzero(a > 0)
            return torch.from_numpy(flat), torch.from_numpy(a[flat])
        flat = (acts_BH.view(-1) > 0).nonzero().squeeze(1)
        return flat, acts_BH.view(-1)[flat]

    def bin_of(self, v_N: torch.Tensor) -> torch.Tensor:
        """Histogram bin of each value: floor((log10 v - min_log10) * per_decade) + 1, clamped to the range bins."""
        b = self.bins
        pos = torch.floor((torch.log10(v_N) - b.min_log10) * b.per_decade)
        return pos.clamp_(-1, b.n_bins - 2).long() + 1

    @torch.no_grad()
    def update(self, acts_BH: torch.Tensor, rows_B: torch.Tensor) -> None:
        """Fold in one batch: acts (B, H) >= 0, rows (B,) the store row of each batch row."""
        with _cpu_threads(self.device, 1):
            self._update(acts_BH, rows_B)

    def _update(self, acts_BH: torch.Tensor, rows_B: torch.Tensor) -> None:
        self.n_rows += acts_BH.shape[0]
        acts_BH = acts_BH.float().contiguous()
        flat_N, v_N = self._nonzero(acts_BH)
        if flat_N.numel() == 0:
            return
        h_N = flat_N % self.d_sae
        ones_N = torch.ones_like(h_N)
        # index_add_ rather than bincount: the latter is several times slower on the CPU.
        self.count_H.index_add_(0, h_N, ones_N)
        self.sum_H.index_add_(0, h_N, v_N.double())
        self.hist_NH.view(-1).index_add_(0, self.bin_of(v_N) * self.d_sae + h_N, ones_N)
        if self.sample is not None:
            self.sample.offer(h_N, v_N, flat_N // self.d_sae, rows_B)
        # Only values above the feature's current k-th best can change its top-k.
        enter_N = v_N > self.top_vals_HK[h_N, -1]
        flat_M = flat_N[enter_N]
        if flat_M.numel():
            self._pending.append((h_N[enter_N], v_N[enter_N], rows_B[flat_M // self.d_sae]))
            self._pending_n += flat_M.numel()
            if self._pending_n >= self.merge_at:
                self.flush()

    def flush(self) -> None:
        """Merge the pending candidates into the top-k of the features they touch."""
        if not self._pending:
            return
        h_M, v_M, r_M = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending, self._pending_n = [], 0
        k = self.top_k
        touched_H = torch.zeros(self.d_sae, dtype=torch.bool, device=h_M.device)
        touched_H[h_M] = True
        feats_F = touched_H.nonzero().squeeze(1)
        # Each touched feature contributes its current k slots, so every group has >= k entries.
        # Slots first, then candidates in row order: the stable sort lets the earliest row win a tie.
        h_all = torch.cat([feats_F.repeat_interleave(k), h_M])
        v_all = torch.cat([self.top_vals_HK[feats_F].reshape(-1), v_M])
        r_all = torch.cat([self.top_rows_HK[feats_F].reshape(-1), r_M])
        # One sort on (feature ascending, value descending): the bits of a float32 >= 0 read as an
        # int32 order like the floats, so flipping them orders values descending. The sorted keys
        # give back the feature (high half) and the value (low half) without a gather.
        key = (h_all << 32) | (0x7FFFFFFF - v_all.view(torch.int32)).long()
        key_s, order = torch.sort(key, stable=True)
        h_s = key_s >> 32
        start_H = torch.zeros(self.d_sae, dtype=torch.long, device=key.device)
        start_H[feats_F] = torch.searchsorted(h_s, feats_F)
        rank = torch.arange(key_s.numel(), device=key.device) - start_H[h_s]
        keep = rank < k
        h_k, rank_k = h_s[keep], rank[keep]
        low = key_s[keep] & 0xFFFFFFFF
        self.top_vals_HK[h_k, rank_k] = (0x7FFFFFFF - low).to(torch.int32).view(torch.float32)
        self.top_rows_HK[h_k, rank_k] = r_all[order[keep]]

    def result(self) -> "FeatureStats":
        """The statistics as numpy arrays (unfilled top-k slots: value nan, row -1)."""
        with _cpu_threads(self.device, 1):
            self.flush()
            if self.sample is not None:
                self.sample.flush()
        rows = self.top_rows_HK.cpu().numpy()
        vals = self.top_vals_HK.cpu().numpy().copy()
        vals[rows < 0] = np.nan
        return FeatureStats(
            n_rows=self.n_rows,
            top_values=vals,
            top_rows=rows,
            counts=self.count_H.cpu().numpy(),
            sums=self.sum_H.cpu().numpy(),
            histogram=self.hist_NH.t().cpu().numpy(),
            bins=self.bins,
            sample_rows=None if self.sample is None else self.sample.rows_HM.cpu().numpy(),
            sample_values=None if self.sample is None else self.sample.vals_HM.cpu().numpy(),
        )


@dataclass
class FeatureStats:
    """What the pass found, per feature (H = d_sae, K = top_k)."""

    n_rows: int
    """Rows that went through the encoder (after skipping)."""
    top_values: np.ndarray
    """(H, K) float32, best first; nan where a feature fired on fewer than K rows."""
    top_rows: np.ndarray
    """(H, K) int64 store rows of `top_values`; -1 where unfilled."""
    counts: np.ndarray
    """(H,) int64 number of rows where the feature is > 0."""
    sums: np.ndarray
    """(H,) float64 sum of the feature's activations."""
    histogram: np.ndarray
    """(H, n_bins) int64 counts of nonzero activations per `bins` bin."""
    bins: LogBins
    sample_rows: np.ndarray | None = None
    """(H, M) int64 store rows of a uniform random sample of each feature's activations
    (sampling.py), in sample-key order; -1 where the feature fired on fewer than M rows."""
    sample_values: np.ndarray | None = None
    """(H, M) float32 activations of `sample_rows`."""
    keep_mask: np.ndarray | None = None
    """(n_tokens,) bool: the rows the pass read (False: skipped by the row rule)."""
    skipped_flagged: int = 0
    """Rows skipped because they are flagged (position 0, attention sinks)."""
    skipped_outliers: int = 0
    """Rows skipped because their norm exceeds max_norm_ratio x the median norm."""
    skipped_positions: int = 0
    """Rows skipped for their position (skip_positions; position 0 counts as flagged)."""
    median_norm: float | None = None

    @property
    def density(self) -> np.ndarray:
        return self.counts / max(self.n_rows, 1)

    @property
    def max_values(self) -> np.ndarray:
        return np.nan_to_num(self.top_values[:, 0], nan=0.0)

    @property
    def mean_values(self) -> np.ndarray:
        """Mean activation over the rows where the feature fired (0 for dead features)."""
        return np.divide(self.sums, self.counts, out=np.zeros_like(self.sums), where=self.counts > 0)


def run_pass(
    store,
    layer: int,
    encode,
    d_sae: int,
    *,
    top_k: int,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
    skip_flagged: bool = True,
    max_norm_ratio: float | None = MAX_NORM_RATIO,
    skip_positions: tuple[int, ...] = (),
    bins: LogBins = LogBins(),
    sample_size: int = 0,
    progress: bool = True,
) -> FeatureStats:
    """Stream `layer` of `store` through `encode` ((B, D) float32 -> (B, H) >= 0) once.

    Which rows are skipped is decided by the loader's own scan (`scan_layer`): position-0
    rows (flagged attention sinks), rows at `skip_positions`, and rows whose norm exceeds
    `max_norm_ratio` x the median norm; a layer with NaN/inf rows is refused there.
    """
    if batch_size < 1:
        raise GhostTrackError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    scan = scan_layer(store, layer, skip_flagged=skip_flagged, max_norm_ratio=max_norm_ratio,
                      skip_positions=skip_positions, progress=progress)
    acc = FeatureAccumulator(d_sae, top_k, bins=bins, device=device, sample_size=sample_size)

    def read(c: int) -> tuple[np.ndarray, np.ndarray]:
        # On the prefetch thread: copy the kept rows out of the memmap while the encoder works.
        lo, _ = store.chunk_bounds(c)
        keep = scan.keep(c)
        chunk = store.read_chunk(layer, c)
        return np.flatnonzero(keep) + lo, (np.array(chunk) if keep.all() else chunk[keep])

    bar = tqdm(total=store.n_tokens, unit="tok", unit_scale=True, desc=f"interpret layer {layer}",
               disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, 0) if store.n_chunks else None
        for c in range(store.n_chunks):
            rows_np, x_np = pending.result()
            pending = pool.submit(read, c + 1) if c + 1 < store.n_chunks else None
            for s in range(0, len(rows_np), batch_size):
                x_BD = torch.from_numpy(x_np[s:s + batch_size]).to(device).float()
                acc.update(encode(x_BD), torch.from_numpy(rows_np[s:s + batch_size]).to(device))
            bar.update(scan.chunk_rows[c])
    bar.close()
    stats = acc.result()
    stats.skipped_flagged, stats.skipped_outliers = scan.n_flagged_skipped, scan.n_outliers_skipped
    stats.skipped_positions = scan.n_positions_skipped
    stats.median_norm = scan.median_norm
    stats.keep_mask = np.concatenate([scan.keep(c) for c in range(store.n_chunks)]) if store.n_chunks else None
    return stats
