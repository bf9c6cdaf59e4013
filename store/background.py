"""Run a generator on a background thread and hand its items over through a bounded queue.

numpy copies, memory-mapped page reads and torch conversions release the GIL, so the next
batches are assembled while the caller trains on the current one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def in_background(make_iter: Callable[[], Iterator[T]], depth: int, name: str = "ghosttrack-prefetch") -> Iterator[T]:
    """Yield the items of ``make_iter()``, produced up to ``depth`` items ahead on a thread.

    An exception in the producer is re-raised here; leaving the loop early stops the producer
    (and closes its generator) before this generator returns.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            with contextlib.closing(make_iter()) as it:
                for item in it:
                    if not put(item):
                        return
            put(_END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Raised(e))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
