"""Chunk reads from an object store: whole chunk objects fetched ahead, concurrently, and checked.

A memory map needs a local file; on an object store each chunk is one GET of the whole object.
``read_ahead`` starts the GETs of the chunks a loader will need next on a small thread pool (the
fsspec filesystems run them concurrently on their event loop), so that the training step does not
wait for the network. Every fetched chunk is checked for its size and, when the array has one, its
CRC-32C before it is used: the bytes came over the network anyway, and the check costs far less.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import google_crc32c
import numpy as np

from . import format as fmt
from .location import ObjectPath

FETCH_THREADS = 4
"""Chunk GETs in flight at once."""
MAX_PENDING = 16
"""Chunks fetched ahead and not yet used (a loader that stops early leaves at most this many)."""


class ChunkFetcher:
    """Fetches chunk objects, ahead of use where asked."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: OrderedDict[str, Future] = OrderedDict()

    def read_ahead(self, obj: ObjectPath) -> None:
        """Start fetching ``obj`` in the background (no-op when it is already on its way)."""
        key = str(obj)
        if key in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="ghosttrack-fetch")
        while len(self._pending) >= MAX_PENDING:
            self._pending.popitem(last=False)[1].cancel()
        self._pending[key] = self._pool.submit(obj.read_bytes)

    def fetch(self, obj: ObjectPath) -> bytes:
        """The object's bytes: the read-ahead's result if one was started, else one GET now.
        FileNotFoundError when the object is missing."""
        future = self._pending.pop(str(obj), None)
        return future.result() if future is not None else obj.read_bytes()

    def close(self) -> None:
        for f in self._pending.values():
            f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def check_chunk_bytes(raw: bytes, array, expected_size: int) -> str | None:
    """What is wrong with the fetched bytes of one plain chunk (None: nothing): its size, its CRC-32C."""
    if len(raw) != expected_size:
        return f"holds {len(raw)} bytes, expected {expected_size}"
    if fmt.has_checksum(array):
        data = np.frombuffer(raw, np.uint8, count=len(raw) - fmt.CHECKSUM_BYTES)  # read-only, no copy
        stored = int(np.frombuffer(raw, "<u4", count=1, offset=len(raw) - fmt.CHECKSUM_BYTES)[0])
        if google_crc32c.value(data) != stored:
            return "fails its CRC-32C checksum (its bytes changed after they were written)"
    return None
