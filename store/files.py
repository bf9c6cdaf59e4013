"""Atomic file writes: write ``<name>.partial`` in the same folder, then rename it over the target.

A process killed at any instant leaves either the old file or the new one, never a torn one
(plus possibly a stray ``.partial`` file, which a resuming writer deletes). Like zarr's LocalStore
this does not fsync: it protects against killed processes, not against power loss.

On an object store (``location.ObjectPath``) there is no rename: ``ObjectUpload`` keeps the bytes in
memory and sends them in one PUT on commit, which is atomic (readers see the whole object or none);
a killed process leaves nothing behind. ``atomic_file`` picks the right one for a location.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import google_crc32c  # a dependency of zarr v3: its crc32c codec uses it
import numpy as np

from .format import TMP_SUFFIX
from .location import Location, ObjectPath, as_location, is_remote

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_CRC_BLOCK_BYTES = 1 << 20


def is_disk_full(err: OSError, folder: Path | None = None, need: int = 1) -> bool:
    """True for the errors a full disk or an exhausted quota raise.

    Some writers (``ndarray.tofile``) raise an OSError without an errno when the disk fills up;
    for those, a ``folder`` with less than ``need`` bytes free decides.
    """
    if err.errno in DISK_FULL_ERRNOS:
        return True
    if folder is None or is_remote(folder):
        return False
    return err.errno is None and free_bytes(folder) < need


def free_bytes(folder: Path) -> int:
    """Bytes free for this user on the filesystem that holds ``folder`` (its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _read_only(a: np.ndarray) -> np.ndarray:
    """google_crc32c only accepts read-only buffers: a read-only view, no copy."""
    v = a.view()
    v.flags.writeable = False
    return v


class AtomicFile:
    """A file written piece by piece under ``<name>.partial`` and renamed into place by ``commit()``.

    With ``checksum=True`` the CRC-32C of everything written is appended on commit, as zarr's
    crc32c codec stores it (little-endian uint32 after the data). ``data_crc`` is that CRC either way.
    """

    def __init__(self, path: Path, checksum: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self._trailer = checksum
        self._crc = 0
        """CRC-32C of the data so far: the trailer, and the start of the chunk's bound checksum."""
        self._f = open(self.tmp, "wb")

    def write(self, data: np.ndarray | bytes) -> None:
        """Append bytes, or the raw bytes of a C-contiguous array (what zarr's ``bytes`` codec stores)."""
        if isinstance(data, bytes):
            self._f.write(data)
            self._crc = google_crc32c.extend(self._crc, data)
            return
        if not data.flags.c_contiguous:
            raise ValueError("AtomicFile.write needs a C-contiguous array")
        # ndarray.tofile writes in blocks: measurably faster here than one huge file.write().
        # Checksum each block right after writing it, while it is still in the cache: one pass
        # over memory instead of two (bench/bench_store.py measures what the checksum costs).
        flat = data.reshape(-1)
        step = max(1, _CRC_BLOCK_BYTES // max(1, data.itemsize))
        for i in range(0, len(flat), step):
            block = flat[i:i + step]
            block.tofile(self._f)
            self._crc = google_crc32c.extend(self._crc, _read_only(block))

    @property
    def data_crc(self) -> int:
        """CRC-32C of the bytes written so far (the trailer not included)."""
        return self._crc

    def commit(self) -> None:
        """Close the file (after its checksum, if any) and move it to its final name."""
        if self._trailer:
            self._f.write(np.uint32(self._crc).astype("<u4").tobytes())
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file; the final name is left as it was."""
        self._f.close()
        self.tmp.unlink(missing_ok=True)


class ObjectUpload:
    """``AtomicFile`` for an object store: the bytes are kept in memory (one chunk) and sent in one
    PUT by ``commit()``; ``abort()`` sends nothing. ``payload()`` is what commit would send (so that
    several uploads can go out together, see ``commit_all``)."""

    def __init__(self, path: ObjectPath, checksum: bool = False):
        self.path = path
        self._parts: list[bytes] = []
        self._trailer = checksum
        self._crc = 0

    def write(self, data: np.ndarray | bytes) -> None:
        if not isinstance(data, bytes):
            if not data.flags.c_contiguous:
                raise ValueError("ObjectUpload.write needs a C-contiguous array")
            data = data.tobytes()
        self._parts.append(data)
        self._crc = google_crc32c.extend(self._crc, data)

    @property
    def data_crc(self) -> int:
        return self._crc

    def payload(self) -> bytes:
        tail = [np.uint32(self._crc).astype("<u4").tobytes()] if self._trailer else []
        return b"".join(self._parts + tail)

    def commit(self) -> None:
        self.path.write_bytes(self.payload())
        self._parts = []

    def abort(self) -> None:
        self._parts = []


class ShardWrite:
    """One shard of a sharded array, written by zarr itself on ``commit()``: the rows are kept in
    memory (copied: callers reuse their buffers) and written as one region, so zarr encodes the
    inner chunks, their checksums and the index, and stores the shard in one piece (a rename on
    disk, a PUT on an object store). ``abort()`` writes nothing."""

    def __init__(self, array, c: int):
        self.array, self.c = array, c
        self._parts: list[np.ndarray] = []

    def write(self, data: np.ndarray) -> None:
        self._parts.append(np.array(data, copy=True))

    @property
    def data_crc(self) -> int:
        """CRC-32C of the shard's rows as raw little-endian bytes (zarr's own checksums are per inner chunk)."""
        crc = 0
        for part in self._parts:
            crc = google_crc32c.extend(crc, _read_only(part.reshape(-1).view(np.uint8)))
        return crc

    def commit(self) -> None:
        rows = self.array.shards[0]
        start = self.c * rows
        stop = min(start + rows, self.array.shape[0])  # the last shard may reach past the array
        self.array[start:stop] = np.concatenate(self._parts)[: stop - start]
        self._parts = []

    def abort(self) -> None:
        self._parts = []


def atomic_file(path: Location, checksum: bool = False) -> AtomicFile | ObjectUpload:
    """A file written piece by piece that appears whole on ``commit()`` (see the module docstring)."""
    return ObjectUpload(path, checksum) if is_remote(path) else AtomicFile(path, checksum)


def commit_all(files: list) -> None:
    """Commit several files; on an object store their PUTs go out concurrently (fsspec's ``pipe``
    with many keys), all of them finished when this returns."""
    uploads = [f for f in files if isinstance(f, ObjectUpload)]
    for f in files:
        if not isinstance(f, ObjectUpload):
            f.commit()
    if uploads:
        uploads[0].path.fs.pipe({f.path.key: f.payload() for f in uploads})
        for f in uploads:
            f.abort()  # sent: drop the buffered bytes


def write_json(path: Location, doc: Any, *, default=None, newline: bool = False) -> None:
    """Write a JSON document atomically (a local temporary file renamed, or one PUT), with sorted keys so
    equal documents give equal bytes: the one atomic JSON writer. ``default`` turns values JSON lacks
    into ones it has (e.g. str); ``newline`` ends the file with one."""
    f = atomic_file(path)
    try:
        f.write((json.dumps(doc, indent=2, sort_keys=True, default=default) + ("\n" if newline else "")).encode())
        f.commit()
    except BaseException:
        f.abort()
        raise


def read_json(path: Path) -> Any:
    """Read a JSON document; None when the file does not exist."""
    try:
        return json.loads(as_location(path).read_text())
    except FileNotFoundError:
        return None


def remove_partials(root: Path) -> int:
    """Delete every leftover ``*.partial`` file under ``root`` (debris of a killed writer)."""
    if is_remote(root):
        return 0  # an object appears whole or not at all: nothing partial to delete
    n = 0
    for p in Path(root).rglob("*" + TMP_SUFFIX):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
