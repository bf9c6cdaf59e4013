"""One writer per store: a lock file created with O_CREAT|O_EXCL that names its holder (pid, host).

A lock whose holder is a dead process on this host is stale (the writer was killed) and is taken
over; a lock held by a live process, or by any process on another host, is refused.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .errors import StoreError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treat as held by an unknown process
    return doc if isinstance(doc, dict) else {}


class StoreLock:
    """An acquired lock file; ``release()`` (or leaving the ``with`` block) removes it."""

    def __init__(self, path: Path, store: Path):
        self.path = Path(path)
        self.store = Path(store)
        self.held = False

    @classmethod
    def acquire(cls, path: Path, store: Path) -> "StoreLock":
        """Create the lock file or raise StoreError naming the live holder."""
        lock = cls(path, store)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        payload = json.dumps(me).encode()
        for _ in range(3):  # retry after removing a stale lock
            try:
                fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_holder(lock.path)
                if holder is None:
                    continue  # released between our two calls
                pid, host = holder.get("pid"), holder.get("host")
                stale = host == me["host"] and isinstance(pid, int) and not _pid_alive(pid)
                if not stale:
                    who = f"pid {pid} on {host}" if pid is not None else f"an unknown process ({lock.path})"
                    raise StoreError(f"store {store} is being written by {who}; wait for it or kill it")
                lock.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            # Two processes may both have removed the same stale lock: only one of them now
            # finds its own pid in the file.
            if _read_holder(lock.path) != me:
                raise StoreError(f"store {store} was just locked by another process; wait for it or kill it")
            lock.held = True
            return lock
        raise StoreError(f"could not lock store {store} ({lock.path} keeps reappearing); "
                         "check for another writer")

    def release(self) -> None:
        """Remove the lock file (idempotent)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
