"""The writer's lock on an object store: a lock object created with a conditional PUT.

``If-None-Match: *`` makes the PUT fail when the object exists, so of several writers exactly one
creates it (S3, GCS and moto honour it). Unlike ``flock`` nothing releases it when its holder
dies, so the record (pid, host, start time) decides what a later writer may do:

- a record from this host whose pid is no longer alive (a killed writer): stale, replaced;
- an empty or unreadable record: stale, replaced (a lock object is written in one PUT, so such a
  record was not written by us);
- a live pid here, or any record from another host: refused, naming the holder; when no process
  there is writing, ``break_lock=True`` (``--break-lock``) replaces it.

Replacing is delete, then conditional create again: if two writers replace the same stale record
at once, one of the creates fails and that writer is refused.
"""

from __future__ import annotations

import json
import os
import socket
import time

from .errors import StoreError
from .location import ObjectPath


def read_holder(path: ObjectPath) -> dict | None:
    """The record in the lock object: None when there is no lock object, {} when it is unreadable."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def holder_alive(holder: dict) -> bool | None:
    """Whether the holder is a live process: True/False on this host, None (unknown) on another."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return None
    return holder.get("pid") != os.getpid() and _pid_alive(holder.get("pid"))


def describe(holder: dict, path: ObjectPath) -> str:
    since = f" since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since} (lock object {path})"


class ObjectLock:
    """A held lock object; ``release()`` deletes it when it still holds our record."""

    def __init__(self, path: ObjectPath, store: ObjectPath, record: bytes):
        self.path, self.store, self._record = path, store, record

    @property
    def held(self) -> bool:
        return self._record is not None

    @classmethod
    def acquire(cls, path: ObjectPath, store: ObjectPath, *, break_lock: bool = False) -> "ObjectLock":
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}).encode()
        if path.create_exclusive(record):
            return cls(path, store, record)
        holder = read_holder(path)
        if holder is None:  # released between our create and our read: try once more
            pass
        elif holder_alive(holder) is True:
            raise StoreError(f"store {store} is being written by {describe(holder, path)}; wait for it or kill it")
        elif holder_alive(holder) is None and not break_lock:
            raise StoreError(f"store {store} is locked by {describe(holder, path)}, another host; "
                             "if no process there is writing it, rerun with --break-lock")
        path.unlink(missing_ok=True)  # stale (dead pid here, unreadable) or broken on purpose
        if path.create_exclusive(record):
            return cls(path, store, record)
        raise StoreError(f"store {store}: another writer took the lock ({path}) at the same moment; "
                         "wait for it or kill it")

    def release(self) -> None:
        """Delete the lock object if it still holds our record (idempotent)."""
        if self._record is None:
            return
        record, self._record = self._record, None
        try:
            if self.path.read_bytes() == record:
                self.path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ObjectLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def live_holder(path: ObjectPath) -> dict | None:
    """The record of the writer holding the lock object, or None when there is none or it is
    stale (see the module docstring); a holder on another host counts as alive."""
    holder = read_holder(path)
    if holder is None or holder_alive(holder) is False:
        return None
    return holder
