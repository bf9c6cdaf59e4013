"""Atomic file writes: write ``<name>.partial`` in the same folder, then rename it over the target.

A process killed at any instant leaves either the old file or the new one, never a torn one
(plus possibly a stray ``.partial`` file, which a resuming writer deletes). Like zarr's LocalStore
this does not fsync: it protects against killed processes, not against power loss.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .format import TMP_SUFFIX

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(err: OSError) -> bool:
    """True for the errors a full disk or an exhausted quota raise."""
    return err.errno in DISK_FULL_ERRNOS


class AtomicFile:
    """A file written piece by piece under ``<name>.partial`` and renamed into place by ``commit()``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self._f = open(self.tmp, "wb")

    def write(self, data: np.ndarray | bytes) -> None:
        """Append bytes, or the raw bytes of a C-contiguous array (what zarr's ``bytes`` codec stores)."""
        if isinstance(data, bytes):
            self._f.write(data)
            return
        if not data.flags.c_contiguous:
            raise ValueError("AtomicFile.write needs a C-contiguous array")
        # ndarray.tofile writes in blocks: measurably faster here than one huge file.write().
        data.tofile(self._f)

    def commit(self) -> None:
        """Close the file and move it to its final name (replacing any older file there)."""
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file; the final name is left as it was."""
        self._f.close()
        self.tmp.unlink(missing_ok=True)


def write_json(path: Path, doc: Any) -> None:
    """Write a JSON document atomically, with sorted keys so equal documents give equal bytes."""
    f = AtomicFile(path)
    try:
        f.write(json.dumps(doc, indent=2, sort_keys=True).encode())
        f.commit()
    except BaseException:
        f.abort()
        raise


def read_json(path: Path) -> Any:
    """Read a JSON document; None when the file does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def remove_partials(root: Path) -> int:
    """Delete every leftover ``*.partial`` file under ``root`` (debris of a killed writer)."""
    n = 0
    for p in Path(root).rglob("*" + TMP_SUFFIX):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
