"""ActivationLoader: shuffled, prefetched (B, D) batches of one layer, on the training device.

How a batch is made:

1. The layer's committed chunks are split into train and validation BY CHUNK (deterministic for
   the seed), and a scan (``stats.py``) decides which rows of each chunk training keeps.
2. The kept rows of the split are numbered 0..n-1, chunk after chunk. Each epoch shuffles the
   chunk order with a Generator seeded by (seed, epoch) and passes each chunk's row NUMBERS
   through ``mix_rows``; the row order therefore never depends on values or timing.
3. A batch of row numbers is gathered from the memory-mapped chunk files (the reader's fast
   path) on a prefetch thread, converted, and delivered (through pinned memory on CUDA).
   With ``device_resident`` the whole filtered split is instead loaded onto the device once
   and batches are gathered there, in the same order; the epoch's row order is uploaded once,
   at the epoch's start, so that a batch is one gather on the device with no host round trip.
4. Data parallel (``rank``, ``world``): the row-number stream is cut into global batches of
   world * batch_size rows, exactly those of one process with that batch size, and rank r takes
   rows [r * batch_size, (r + 1) * batch_size) of each. A rank reads only its own rows
   (``bytes_read`` counts them); the others' rows are skipped unread.

Resuming mid-epoch replays the row-number stream (no reads) up to the saved batch, so the
remaining batches are exactly those an uninterrupted loader would have produced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .background import in_background
from .errors import StoreError
from .mixing import mix_rows
from .reader import ActivationStore
from .stats import MAX_NORM_RATIO, LayerStats, scan_layer
from .transfer import HostToDevice

_SPLIT_STREAM = 2**32 - 1  # seeds the split; epochs use (seed, epoch) and never reach this
_QUEUE_BATCHES = 4  # batches assembled ahead of the consumer
_ORDER_KEYS = ("batch_size", "buffer_batches", "val_fraction", "seed", "skip_flagged", "max_norm_ratio")


@dataclass
class LoaderConfig:
    """How the loader shuffles, filters and delivers rows."""

    batch_size: int = 4096
    """Rows per batch."""
    buffer_batches: int = 8
    """The mixing buffer holds at least buffer_batches * batch_size rows (>= 8)."""
    val_fraction: float = 0.05
    """Fraction of chunks held out for validation; at least one when there are >= 2 chunks and
    the fraction is > 0, and never all of them."""
    seed: int = 0
    """Seeds the split, the chunk order of each epoch and the mixing."""
    skip_flagged: bool = True
    """Leave out position-0 rows (attention sinks with huge norms)."""
    max_norm_ratio: float | None = MAX_NORM_RATIO
    """Leave out rows whose L2 norm exceeds this times the median row norm (None: keep all)."""
    prefetch_chunks: int = 2
    """Chunks whose reading is started ahead of the one being mixed (the OS's read-ahead for local
    files; background GETs on an object store)."""
    device_resident: str = "auto"
    """"yes": hold the whole filtered split on the device; "no": stream from disk; "auto": hold
    it when the device is CUDA and it takes < 50% of the free device memory."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.buffer_batches < 8:
            raise ValueError(f"buffer_batches must be >= 8 (mixing quality), got {self.buffer_batches}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_norm_ratio is not None and self.max_norm_ratio <= 0:
            raise ValueError(f"max_norm_ratio must be > 0 or None, got {self.max_norm_ratio}")
        if self.prefetch_chunks < 0:
            raise ValueError(f"prefetch_chunks must be >= 0, got {self.prefetch_chunks}")
        if self.device_resident not in ("auto", "yes", "no"):
            raise ValueError(f"device_resident must be auto, yes or no, got {self.device_resident!r}")


def split_chunks(n_chunks: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) chunk indices, each sorted: a seeded draw of round(val_fraction * n) chunks."""
    n_val = 0
    if val_fraction > 0 and n_chunks >= 2:
        n_val = min(max(1, round(val_fraction * n_chunks)), n_chunks - 1)
    perm = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n_chunks)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _ChunkRows:
    """Streaming gather: kept-row numbers -> rows of memory-mapped chunk files.

    A chunk is mapped when one of its rows is first needed and dropped once all its rows went out.
    """

    def __init__(self, loader: "ActivationLoader"):
        self._loader = loader
        self._remaining = loader._counts.copy()
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._open:
            ld = self._loader
            c = int(ld.chunks[k])
            self._open[k] = (ld.store.read_chunk(ld.layer, c), np.flatnonzero(ld.stats.keep(c)))
        return self._open[k]

    def _which(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._loader._offsets, ids, side="right") - 1

    def consume(self, ids: np.ndarray) -> None:
        """Account for rows that leave without being read (batches skipped on resume)."""
        self._release(self._which(ids))

    def gather(self, ids: np.ndarray, out: np.ndarray) -> None:
        """Write the rows numbered ``ids`` into ``out`` (len(ids), d)."""
        which = self._which(ids)
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            x, rows = self._chunk(int(k))
            out[sel] = x[rows[ids[sel] - self._loader._offsets[k]]]
        self._loader.bytes_read += len(ids) * out.shape[1] * out.itemsize
        self._release(which)

    def _release(self, which: np.ndarray) -> None:
        ks, n = np.unique(which, return_counts=True)
        self._remaining[ks] -= n
        for k in ks[self._remaining[ks] == 0]:
            self._open.pop(int(k), None)


class ActivationLoader:
    """One epoch per iteration of (B, D) batches of ``layer``'s kept rows in ``split``.

    Train batches are mixed across chunks and the last partial batch is dropped; validation
    batches keep the stored order and include the last partial batch. An epoch that runs to the
    end advances ``epoch``; ``state_dict``/``load_state_dict`` resume exactly mid-epoch.
    """

    def __init__(self, store: ActivationStore, layer: int, config: LoaderConfig, *, split: str = "train",
                 device="cpu", dtype: torch.dtype = torch.float32, stats: LayerStats | None = None,
                 progress: bool = True, rank: int = 0, world: int = 1):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        self.rank, self.world = rank, world
        self.bytes_read = 0
        """Bytes of activations this loader copied out of the store (its own rows only)."""
        store.require_layer(layer)
        self.store, self.layer, self.config, self.split = store, layer, config, split
        self.device, self.dtype, self.progress = torch.device(device), dtype, progress
        if stats is None:
            stats = scan_layer(store, layer, skip_flagged=config.skip_flagged,
                               max_norm_ratio=config.max_norm_ratio, progress=progress)
        elif (stats.layer, stats.skip_flagged, stats.max_norm_ratio, stats.n_rows) != (
                layer, config.skip_flagged, config.max_norm_ratio, store.n_tokens):
            raise ValueError("stats were scanned for another layer, filter setting or store size")
        self.stats = stats
        train, val = split_chunks(store.n_chunks, config.val_fraction, config.seed)
        self.chunks = train if split == "train" else val
        """Chunk indices of this split, ascending."""
        self._counts = stats.kept_per_chunk[self.chunks]
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)
        self.n_rows = int(self._counts.sum())
        """Kept rows in this split."""
        self.epoch = 0
        self._batches_done = 0
        self._resident: torch.Tensor | None = None
        self.resident = self._want_resident()
        """Whether batches come from a copy of the whole split held on the device."""

    def _want_resident(self) -> bool:
        mode = self.config.device_resident
        if mode != "auto":
            return mode == "yes"
        if self.device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.n_rows * self.store.d_model * 2 < 0.5 * free

    def __len__(self) -> int:
        """Batches per epoch (of this rank)."""
        b, global_b = self.config.batch_size, self.config.batch_size * self.world
        if self.split == "train":
            return self.n_rows // global_b
        full, rest = divmod(self.n_rows, global_b)
        return full + (rest > self.rank * b)

    def _mine(self, ids: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch."""
        b = self.config.batch_size
        return ids[self.rank * b:(self.rank + 1) * b]

    def _others(self, ids: np.ndarray) -> np.ndarray:
        b = self.config.batch_size
        return np.concatenate([ids[:self.rank * b], ids[(self.rank + 1) * b:]])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration produces (restarting it unless it is the current one)."""
        if epoch != self.epoch:
            self.epoch, self._batches_done = epoch, 0

    # ---------------------------------------------------------------- row-number stream

    def _id_batches(self, epoch: int, on_feed=None) -> Iterator[np.ndarray]:
        """The epoch's global batches (world * batch_size rows) of kept-row numbers.

        ``on_feed(order, p)`` is called as the p-th chunk of ``order`` (positions into
        ``self.chunks``) enters the stream.
        """
        b = self.config.batch_size * self.world

        def feed(order: np.ndarray) -> Iterator[np.ndarray]:
            for p, k in enumerate(order):
                if on_feed is not None:
                    on_feed(order, p)
                yield self._offsets[k] + np.arange(self._counts[k], dtype=np.int64)

        if self.split == "val":  # stored order; the last batch may be partial
            rest = np.empty(0, np.int64)
            for ids in feed(np.arange(len(self.chunks))):
                rest = np.concatenate([rest, ids])
                n_full = len(rest) // b * b
                yield from (rest[i:i + b] for i in range(0, n_full, b))
                rest = rest[n_full:]
            if len(rest):
                yield rest
            return
        rng = np.random.default_rng([self.config.seed, epoch])
        order = rng.permutation(len(self.chunks))
        for batch in mix_rows(feed(order), self.config.buffer_batches * b, b, rng):
            if len(batch) == b:  # only the final batch can be partial: train drops it
                yield batch

    def _read_ahead(self, order: np.ndarray, p: int) -> None:
        """Start reading the chunk entering the stream and the next prefetch_chunks ones (the OS's
        read-ahead for local files, concurrent GETs on an object store)."""
        for j in order[p:p + self.config.prefetch_chunks + 1]:
            self.store.read_ahead(self.layer, int(self.chunks[j]))

    # ---------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch, skip = self.epoch, self._batches_done
        batches = self._iter_resident(epoch, skip) if self.resident else self._iter_streaming(epoch, skip)
        for batch in batches:
            self._batches_done += 1
            yield batch
        self.epoch, self._batches_done = epoch + 1, 0

    def _iter_streaming(self, epoch: int, skip: int) -> Iterator[torch.Tensor]:
        xfer = HostToDevice(self.device, self.dtype, self.config.batch_size, self.store.d_model,
                            pool_size=_QUEUE_BATCHES + 3, host_dtype=self.store.layer_dtype)

        def produce():
            rows = _ChunkRows(self)
            done = 0  # batches handled so far: no read-ahead for chunks fed while replaying

            def on_feed(order: np.ndarray, p: int) -> None:
                if done >= skip:
                    self._read_ahead(order, p)

            for ids in self._id_batches(epoch, on_feed):
                mine = self._mine(ids)
                if self.world > 1:
                    rows.consume(self._others(ids))
                if done < skip:
                    rows.consume(mine)
                    done += 1
                elif len(mine):
                    yield xfer.stage(len(mine), lambda out, mine=mine: rows.gather(mine, out))

        for staged in in_background(produce, _QUEUE_BATCHES):
            yield xfer.deliver(staged)

    def _iter_resident(self, epoch: int, skip: int) -> Iterator[torch.Tensor]:
        x = self._load_resident()
        mine = [ids for ids in map(self._mine, self._id_batches(epoch)) if len(ids)]
        bounds = np.cumsum([0] + [len(ids) for ids in mine]).tolist()
        # The whole epoch's order in one copy (pinned, so the host does not wait for it); each
        # batch is then a slice of it, with no host-to-device copy of its own.
        order = torch.from_numpy(np.concatenate(mine) if mine else np.empty(0, np.int64))
        if self.device.type == "cuda":
            order = order.pin_memory()
        order_on_device = order.to(self.device, non_blocking=True)
        for i in range(skip, len(mine)):
            # index_select: fp16 advanced indexing takes a far slower path on the CPU
            yield x.index_select(0, order_on_device[bounds[i]:bounds[i + 1]]).to(self.dtype)

    def _load_resident(self) -> torch.Tensor:
        """The split's kept rows, numbered as in the row-number stream, in the store's dtype on the device."""
        if self._resident is None:
            x = torch.from_numpy(np.empty((0, self.store.d_model), self.store.layer_dtype))
            x = torch.empty((self.n_rows, self.store.d_model), dtype=x.dtype, device=self.device)
            for k, c in enumerate(tqdm(self.chunks.tolist(), desc=f"load layer {self.layer} to {self.device}",
                                       unit="chunk", disable=not self.progress)):
                rows = self.store.read_chunk(self.layer, c)[self.stats.keep(c)]
                self.bytes_read += rows.nbytes
                x[self._offsets[k]:self._offsets[k] + len(rows)] = torch.from_numpy(rows).to(self.device)
            self._resident = x
        return self._resident

    # ---------------------------------------------------------------- resume

    def state_dict(self) -> dict:
        """Position in the epoch plus what must match on resume."""
        return {"epoch": self.epoch, "batches_done": self._batches_done, "layer": self.layer,
                "split": self.split, "n_rows": self.n_rows, "world": self.world, "config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the loader must see the same store, layer and config."""
        mine = self.state_dict()
        for key in ("layer", "split", "n_rows"):
            if state[key] != mine[key]:
                raise StoreError(f"loader state was saved with {key}={state[key]!r}, this loader has "
                                 f"{mine[key]!r}; resume with the same store, layer and loader settings")
        if state.get("world", 1) != self.world:  # the world size decides which rows each rank gets
            raise StoreError(f"loader state was saved by {state.get('world', 1)} processes, this loader is one "
                             f"of {self.world}; resume with the same number of processes")
        for key in _ORDER_KEYS:  # what decides the batch order; device settings may differ
            if state["config"][key] != mine["config"][key]:
                raise StoreError(f"loader state was saved with {key}={state['config'][key]!r}, this "
                                 f"loader has {mine['config'][key]!r}; resume with the same loader settings")
        self.epoch, self._batches_done = int(state["epoch"]), int(state["batches_done"])
