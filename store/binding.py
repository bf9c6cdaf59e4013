"""Checksums that bind a chunk to what it is, not only to its bytes.

zarr's crc32c trailer of a chunk file proves that its bytes are the bytes written, but not which
chunk they are: two equal-size chunk files swapped, a chunk file moved, or an array's
``data_type`` edited in its zarr.json all pass it. So every committed chunk also has a *bound*
checksum,

    CRC-32C(the chunk's data bytes || header),   header = JSON [array, chunk index, array dtype,
                                                           chunk shape, the store's dtype attribute]

recorded in the ``checksums`` array (one row per chunk, one column per array; each row its own chunk
file, written with the chunk's data files before its commit). A reader recomputes the header from what it believes (the array it
asked for, the index, the dtype and chunk shape in the array's zarr.json, the store's ``dtype``
attribute), so any of them changing breaks the match. The data CRC comes first so that the bound
value costs one extension of the CRC the trailer already holds: no second pass over the bytes.

Plain zarr reads ``checksums`` like any array and still checks each chunk's own trailer.
Stores of format < 3 have no records: ``upgrade_store`` (``ghosttrack verify --upgrade``) checks
every chunk against its trailer and then writes them.
"""

from __future__ import annotations

import json

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

from . import format as fmt
from .location import Location

BOUND_FORMAT = 3
"""The first format version whose chunks all have bound checksums."""
CHECKSUMS = "checksums"
"""The array of bound checksums (see ``create_records``)."""
UPGRADE_COMMAND = "ghosttrack verify --upgrade"
TRUST_FLAG = "--trust-store"
ABOUT = "CRC-32C(chunk data || JSON [array, chunk, dtype, chunk shape, store dtype]) per chunk and array"


def header(name: str, c: int, array_dtype: np.dtype, chunk_shape: tuple, store_dtype: str) -> bytes:
    """What chunk ``c`` of array ``name`` is, as the bytes its bound checksum ends with."""
    what = ["ghosttrack-chunk", name, int(c), np.dtype(array_dtype).str, [int(n) for n in chunk_shape],
            str(store_dtype)]
    return json.dumps(what, separators=(",", ":")).encode()


def bind(data_crc: int, head: bytes) -> int:
    """The bound checksum from the CRC-32C of the data bytes: the CRC extended by the header."""
    return google_crc32c.extend(data_crc, head)


def data_crc(data: np.ndarray) -> int:
    """CRC-32C of an array's raw bytes (a read-only view: google_crc32c takes no writable buffer)."""
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if flat.flags.writeable:
        flat = flat.view()
        flat.flags.writeable = False
    return google_crc32c.value(flat)


def create_records(group: zarr.Group, names: list[str], n_chunks: int) -> zarr.Array:
    """The ``checksums`` array: one row of bound checksums per chunk, one column per array of
    ``names``. Each row is its own chunk file (written with the chunk's data files), in the same
    format as the data arrays, so plain zarr reads it and zarr's crc32c guards it too."""
    return group.create_array(
        CHECKSUMS, shape=(max(int(n_chunks), 1), len(names)), chunks=(1, len(names)), dtype="uint32",
        compressors=Crc32cCodec(), serializer=BytesCodec(endian="little"), fill_value=0,
        chunk_key_encoding=fmt.CHUNK_KEY_ENCODING, attributes={"arrays": list(names), "about": ABOUT},
        overwrite=True)


def record_file(root: Location, records: zarr.Array, c: int) -> Location:
    """The file (or object) holding the bound checksums of chunk ``c``."""
    return fmt.chunk_file(root, records, c)


def record_row(names: list[str], sums: dict[str, int]) -> np.ndarray:
    """A chunk's record as written: the bound checksums in the records' column order."""
    return np.array([sums[n] for n in names], "<u4")


def read_record(root: Location, records: zarr.Array, c: int) -> dict[str, int] | str:
    """The bound checksums of chunk ``c`` by array, or a string saying what is wrong with its record."""
    f = record_file(root, records, c)
    if c >= records.shape[0]:
        return f"has no checksum record (the checksums array has {records.shape[0]} rows)"
    try:
        raw = f.read_bytes()
    except FileNotFoundError:
        return f"has no checksum record ({f} is missing)"
    except OSError as e:
        return f"has an unreadable checksum record ({f}: {e.strerror or e})"
    names = records.attrs.get("arrays")
    if not isinstance(names, list) or len(raw) != 4 * len(names) + fmt.CHECKSUM_BYTES:
        return f"has a malformed checksum record ({f})"
    values = np.frombuffer(raw, "<u4")
    if google_crc32c.value(raw[:-fmt.CHECKSUM_BYTES]) != int(values[-1]):
        return f"has a damaged checksum record ({f} fails its CRC-32C)"
    return dict(zip(names, map(int, values[:-1])))


def mismatch(name: str, c: int, f) -> str:
    """The damage reason when a chunk's bound checksum does not match its record."""
    return (f"is not the chunk its checksum record names (chunk {c} of {name} with this dtype and shape): "
            f"moved, swapped or retyped ({f})")


def unbound_refusal(path, version) -> str:
    """The one-line refusal to read a store whose chunks have no bound checksums."""
    return (f"store {path} (format {version}) was written before chunk checksums named their chunk, so a "
            f"swapped or retyped chunk would read as valid; run {UPGRADE_COMMAND} {path} once (it checks every "
            f"chunk first), or pass {TRUST_FLAG} to read it unchecked")


class ChunkChecks:
    """The checks of a chunk's bytes, as ``ActivationStore`` runs them on read and ``verify.py`` on
    every chunk (needs the store's ``path``, ``_arrays``, ``_records``, ``_record_of``, ``_file_size``,
    ``chunk_tokens``, ``store_dtype`` and ``bound``)."""

    def decoded_crc(self, name: str, rows: np.ndarray) -> int:
        """CRC-32C of a decoded chunk's bytes as the writer wrote them: its rows, padded with the fill
        value (0) to a whole chunk, little-endian."""
        array = self._arrays[name]
        full = np.zeros((self.chunk_tokens,) + array.shape[1:], array.dtype.newbyteorder("<"))
        full[: len(rows)] = rows
        return data_crc(full)

    def bound_problem(self, name: str, c: int, data_crc: int, where) -> str | None:
        """What is wrong with chunk ``c`` of ``name`` given the CRC-32C of its data bytes (None:
        nothing): its record's bound checksum must match that CRC extended by what the chunk is."""
        if c not in self._record_of:
            self._record_of[c] = read_record(self.path, self._records, c)
        record = self._record_of[c]
        if isinstance(record, str):
            return record
        array = self._arrays[name]
        head = header(name, c, array.dtype, array.shards or array.chunks, self.store_dtype)
        if record.get(name) != bind(data_crc, head):
            return mismatch(name, c, where)
        return None

    def bytes_problem(self, name: str, c: int, raw: np.ndarray, where) -> str | None:
        """What is wrong with the bytes ``raw`` (uint8, read-only) of plain chunk file ``c`` of
        ``name`` (None: nothing): its size, its CRC-32C trailer, its bound checksum (format 3)."""
        array = self._arrays[name]
        if len(raw) != self._file_size[name]:
            return f"holds {len(raw)} bytes, expected {self._file_size[name]} ({where})"
        crc = google_crc32c.value(raw[: fmt.chunk_nbytes(array)])
        if fmt.has_checksum(array) and crc != int(raw[-fmt.CHECKSUM_BYTES:].view("<u4")[0]):
            return f"fails its CRC-32C checksum (its bytes changed after they were written; {where})"
        return self.bound_problem(name, c, crc, where) if self.bound else None
