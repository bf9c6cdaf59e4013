"""Host batches to the device: fp16 rows gathered on the host, converted to the training dtype.

On CUDA a batch is gathered into one of a small pool of pinned buffers and copied with
``non_blocking=True`` (half the bytes of fp32: the dtype conversion runs on the device); a buffer
is reused only after the event recorded behind its copy has completed. Elsewhere the batch is
converted on the host, on the producer thread.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

import numpy as np
import torch


class HostToDevice:
    """Stage batches on the producer thread, deliver them as tensors on the consumer thread."""

    def __init__(self, device: torch.device, dtype: torch.dtype, batch_size: int, d_model: int,
                 pool_size: int, host_dtype: np.dtype = np.dtype(np.float16)):
        self.device, self.dtype = device, dtype
        self.host_dtype = np.dtype(host_dtype)
        """The store's dtype: rows are staged in it, unconverted (float16, or float32)."""
        self.shape = (batch_size, d_model)
        self.cuda = device.type == "cuda"
        self._free: queue.Queue = queue.Queue()
        if self.cuda:
            for _ in range(pool_size):  # > batches that can be queued + in flight at once
                self._free.put((torch.from_numpy(np.empty(self.shape, self.host_dtype)).pin_memory(), None))

    def stage(self, n: int, fill: Callable[[np.ndarray], None]):
        """Producer side: ``fill`` writes n fp16 rows into a host array; returns a staged batch."""
        if not self.cuda:
            host = np.empty((n, self.shape[1]), self.host_dtype)
            fill(host)
            return torch.from_numpy(host).to(self.dtype)
        buf, done = self._free.get()
        if done is not None:
            done.synchronize()  # the previous copy out of this buffer has finished
        fill(buf.numpy()[:n])
        return buf, n

    def deliver(self, staged) -> torch.Tensor:
        """Consumer side: the staged batch as a (n, d_model) tensor of ``dtype`` on the device."""
        if not self.cuda:
            return staged
        buf, n = staged
        out = buf[:n].to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._free.put((buf, done))
        return out.to(self.dtype)
