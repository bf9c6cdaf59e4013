"""A writer thread between the forward pass and the store: compute never waits for the disk.

On CUDA, activations are copied with `non_blocking=True` into a small ring of pinned host
buffers, on a side stream of the model's device (so the copies overlap the next forward pass);
an event on that stream marks when each copy is done, and the thread waits on that event, not
the whole device, before handing the rows to the store. On the CPU the copy is a view.

No hand-off blocks without a limit: the producer polls (checking the thread's error and the
stop request) while it waits for a free buffer or a queue slot, and closing waits for the
thread at most `stall_timeout` seconds. A Ctrl-C therefore never hangs on the thread, and a
disk that stops answering becomes an error instead of a silent hang.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import numpy as np
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.interrupts import Interrupted

_DONE = object()
_POLL_S = 0.05
STALL_TIMEOUT_S = 600.0
"""Seconds without progress of the writer thread after which the run stops with an error."""


class AsyncStoreWriter:
    """Feeds `StoreWriter.append` from a background thread; errors resurface in the caller.

    `should_stop()` is polled while the producer waits: when it turns true the wait ends with
    `Interrupted`. `check_batch(counts)` runs on the thread before each batch is written
    (it sees the per-layer counts passed to `submit`) and may raise to refuse the batch.
    """

    def __init__(self, writer, *, pinned: bool, max_pending: int = 2,
                 should_stop: Callable[[], bool] = lambda: False,
                 check_batch: Callable[[np.ndarray], None] | None = None,
                 stall_timeout: float = STALL_TIMEOUT_S, device: torch.device | None = None,
                 after_append: Callable[[int], None] | None = None):
        self.writer = writer
        self.after_append = after_append
        """Called on the thread after each batch is written, with the writer's committed row count."""
        self.pinned = pinned
        # `device`: the model's CUDA device (its current stream produced the activations).
        self._stream = torch.cuda.Stream(device=device) if pinned else None
        self.should_stop = should_stop
        self.check_batch = check_batch
        self.stall_timeout = stall_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        # max_pending batches wait in the queue, one is being written, one is being filled.
        self._free: queue.Queue = queue.Queue()
        for _ in range(max_pending + 2):
            self._free.put(None)
        self._error: BaseException | None = None
        self._abandon = False
        self._thread = threading.Thread(target=self._drain, name="ghosttrack-store-writer", daemon=True)
        self._thread.start()

    def submit(self, acts: dict[int, torch.Tensor], *, tokens: np.ndarray, positions: np.ndarray,
               sequence_ids: np.ndarray, counts: torch.Tensor | None = None) -> None:
        """Queue one batch: `acts[layer]` is (rows, d) on the model's device, in the store's dtype."""
        slot = self._wait(lambda timeout: self._free.get(timeout=timeout), "a free host buffer")
        event = None
        if self.pinned:
            tensors = {**acts, "counts": counts} if counts is not None else acts
            if slot is None or slot.keys() != tensors.keys() or any(
                    slot[k].shape != v.shape or slot[k].dtype != v.dtype for k, v in tensors.items()):
                slot = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in tensors.items()}
            self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))  # after the forward
            with torch.cuda.stream(self._stream):
                for key, tensor in tensors.items():
                    slot[key].copy_(tensor, non_blocking=True)
                    tensor.record_stream(self._stream)  # not reused by the allocator before the copy ran
                event = torch.cuda.Event()
                event.record(self._stream)
            host = dict(slot)
            host_counts = host.pop("counts", None)
        else:
            host = {k: v.cpu() for k, v in acts.items()}
            host_counts = counts.cpu() if counts is not None else None
            slot = None
        item = (event, host, host_counts, slot, tokens, positions, sequence_ids)
        self._wait(lambda timeout: self._queue.put(item, timeout=timeout), "a place in the write queue")

    def _wait(self, handoff: Callable[[float], object], what: str):
        """Run a blocking queue operation in short polls; between polls surface the thread's error,
        honour a stop request, and give up after stall_timeout seconds without success."""
        deadline = time.monotonic() + self.stall_timeout
        while True:
            self._raise_if_failed()
            if self.should_stop():
                raise Interrupted("stop requested while waiting for the store writer")
            try:
                return handoff(_POLL_S)
            except (queue.Empty, queue.Full):
                if time.monotonic() > deadline:
                    raise self._stalled(f"waiting for {what}") from None

    def _stalled(self, doing: str) -> GhostTrackError:
        return GhostTrackError(f"the store writer made no progress for {self.stall_timeout:g} s ({doing}); "
                               f"is the disk of {self.writer.path} stalled? the store keeps its last commit; "
                               "rerun with --resume once it answers")

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            event, host, counts, slot, tokens, positions, sequence_ids = item
            try:
                if self._error is None and not self._abandon:
                    if event is not None:
                        event.synchronize()
                    if self.check_batch is not None and counts is not None:
                        self.check_batch(counts.numpy())
                    self.writer.append({k: v.numpy() for k, v in host.items()}, tokens, positions, sequence_ids)
                    if self.after_append is not None:
                        self.after_append(self.writer.committed_tokens)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer thread
                self._error = exc
            finally:
                # Emptying the queue after an error keeps the producer from waiting on a full one.
                self._free.put(slot)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, *, complete: bool) -> None:
        """complete=True: write what is queued, then mark the store complete. complete=False (an error
        or a stop): drop the queued batches and close the store at its last commit."""
        self._abandon = not complete
        deadline = time.monotonic() + self.stall_timeout
        while True:
            try:
                self._queue.put(_DONE, timeout=_POLL_S)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    raise self._stalled("finishing its queue") from None
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            # The store stays locked until this process exits (the OS releases the lock).
            raise self._stalled("finishing its last write")
        error = self._error
        self.writer.close(complete=complete and error is None)
        if error is not None:
            raise error
