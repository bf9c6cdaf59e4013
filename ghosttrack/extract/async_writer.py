"""A writer thread between the forward pass and the store: compute never waits for the disk.

On CUDA, activations are copied with `non_blocking=True` into a small ring of pinned host
buffers; a CUDA event marks when each copy is done, and the thread waits on that event,
not the whole device, before handing the rows to the store. On the CPU the copy is a view.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

_DONE = object()


class AsyncStoreWriter:
    """Feeds `StoreWriter.append` from a background thread; errors resurface in the caller."""

    def __init__(self, writer, *, pinned: bool, max_pending: int = 2):
        self.writer = writer
        self.pinned = pinned
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        # max_pending batches wait in the queue, one is being written, one is being filled.
        self._free: queue.Queue = queue.Queue()
        for _ in range(max_pending + 2):
            self._free.put(None)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="ghosttrack-store-writer", daemon=True)
        self._thread.start()

    def submit(self, acts: dict[int, torch.Tensor], *, tokens: np.ndarray, positions: np.ndarray,
               sequence_ids: np.ndarray) -> None:
        """Queue one batch: `acts[layer]` is (rows, d) float16 on the model's device."""
        self._raise_if_failed()
        slot = self._free.get()
        event = None
        if self.pinned:
            if slot is None or any(slot[k].shape != v.shape for k, v in acts.items()):
                slot = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in acts.items()}
            for layer, tensor in acts.items():
                slot[layer].copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            host = slot
        else:
            host = {k: v.cpu() for k, v in acts.items()}
            slot = None
        self._put((event, host, slot, tokens, positions, sequence_ids))

    def _put(self, item) -> None:
        # Waiting with a timeout lets a failure in the thread surface instead of blocking forever.
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # keep emptying the queue so the producer never blocks
            event, host, slot, tokens, positions, sequence_ids = item
            try:
                if event is not None:
                    event.synchronize()
                self.writer.append({k: v.numpy() for k, v in host.items()}, tokens, positions, sequence_ids)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer thread
                self._error = exc
            finally:
                self._free.put(slot)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, *, complete: bool) -> None:
        """Write what is queued, then close the store (complete or at its last commit)."""
        self._queue.put(_DONE)
        self._thread.join()
        error = self._error
        self.writer.close(complete=complete and error is None)
        if error is not None:
            raise error
