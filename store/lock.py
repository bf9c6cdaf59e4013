"""One writer per store: an OS lock (``fcntl.flock``) on a lock file that names its holder.

The kernel releases a flock when its holder dies, however it dies, so a lock we can take is never
held by a live process on this host: whatever the file says then is stale (a killed writer, an
empty file, our own pid left by an earlier life of this container) and is overwritten. The file
records pid, host and start time only for the messages, with one exception: a record written on
another host is refused even when the lock is free here, because flock does not reach across
every shared filesystem; ``break_lock=True`` (the CLI's ``--break-lock``) overrides it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import StoreError
from .location import as_location, is_remote


def read_holder(path: Path) -> dict:
    """The holder recorded in a lock file: {} when the file is missing, empty or unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe(holder: dict, path: Path) -> str:
    if not holder:
        return f"an unknown process (lock file {path})"
    since = f" since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since}"


class StoreLock:
    """A held lock; ``release()`` (or leaving the ``with`` block) removes the file and unlocks."""

    def __init__(self, path: Path, store: Path, fd: int):
        self.path = Path(path)
        self.store = Path(store)
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def acquire(cls, path: Path, store: Path, *, break_lock: bool = False) -> "StoreLock":
        """Take the lock or raise StoreError naming its holder and the way out. On an object store
        the lock is a conditionally created object instead (``object_lock.py``)."""
        if is_remote(path):
            from .object_lock import ObjectLock
            return ObjectLock.acquire(path, as_location(store), break_lock=break_lock)
        path, store = Path(path), Path(store)
        host = socket.gethostname()
        for _ in range(10):  # retried only while another process removes the file under us
            # CLOEXEC: a program we start must not inherit (and so prolong) the lock.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _flock_with_retries(fd, fcntl.LOCK_EX)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise StoreError(f"cannot lock store {store} ({path}: {e.strerror}); "
                                     "check the folder's permissions") from e
                raise StoreError(f"store {store} is being written by {_describe(read_holder(path), path)}; "
                                 "wait for it or kill it") from None
            try:
                if not _same_file(fd, path):  # the previous holder removed it as we opened it
                    os.close(fd)
                    continue
                holder = read_holder(path)
                if holder.get("host") not in (None, host) and not break_lock:
                    raise StoreError(f"store {store} is locked by {_describe(holder, path)}, another host; "
                                     "if no process there is writing it, rerun with --break-lock")
                record = {"pid": os.getpid(), "host": host,
                          "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(record).encode(), 0)
            except BaseException:
                _close(fd)
                raise
            return cls(path, store, fd)
        raise StoreError(f"could not lock store {store} ({path} keeps being replaced); check for another writer")

    def release(self) -> None:
        """Remove the lock file, then unlock (idempotent). Removing first, while still holding the
        lock, means no one can take it on a file that is about to disappear unnoticed: a process
        that opened the old file sees that it is gone (``_same_file``) and retries."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # an abandoned writer must not keep its store locked
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            _close(fd)


def _flock_with_retries(fd: int, kind: int, tries: int = 3, pause_s: float = 0.05) -> None:
    """flock without waiting, tried a few times: ``live_holder`` takes the lock for a moment to look,
    which must not turn a writer away."""
    for i in range(tries):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES) or i == tries - 1:
                raise
            time.sleep(pause_s)


def live_holder(path: Path) -> dict | None:
    """The record of the process that holds the lock file ``path`` now, or None when no process on
    a host sharing the kernel's locks holds it (whatever the file says: the record of a killed
    writer, a reused pid). For readers that must not start while a store is being written."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        return read_holder(path) or {"pid": None, "host": None}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def break_lock(store: Path, lock_name: str = ".lock") -> dict:
    """Remove a store's lock record when no process on this host holds its OS lock (the CLI's
    ``--break-lock`` for a record left by another host); returns the record removed.
    A lock held by a live process here is refused, as ``StoreLock.acquire`` would."""
    path = as_location(store) / lock_name
    if is_remote(path):
        from .object_lock import ObjectLock, read_holder as read_object_holder
        holder = read_object_holder(path) or {}
        ObjectLock.acquire(path, as_location(store), break_lock=True).release()
        return holder
    holder = read_holder(path)
    with StoreLock.acquire(path, store, break_lock=True):
        pass
    return holder
