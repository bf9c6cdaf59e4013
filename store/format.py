"""The on-disk layout of an activation store: a zarr v3 group, its arrays and its attributes.

One group per extraction run:

- ``layers/<i>``: (n_tokens, d_model) float16, one chunk = ``chunk_tokens`` rows, uncompressed
  (plain little-endian ``bytes`` codec) followed by zarr's ``crc32c`` codec: a chunk file is the
  ``chunk_tokens * d_model * 2`` data bytes, which can be memory-mapped, plus a 4-byte CRC-32C of
  them that plain zarr checks on every read (format 2; format-1 stores have no checksum).
- ``tokens`` (int32), ``positions`` (int32, position inside its packed sequence) and
  ``sequence_ids`` (int64, index of the packed sequence): (n_tokens,), same row chunking.
- ``checksums`` (format 3): (n_chunks, n_arrays) uint32, one row per chunk: each array's chunk
  checksum bound to the array's name, the chunk index, dtype and shape (``binding.py``).

With ``shard_chunks`` = N > 1 every array is a zarr v3 sharded array: one object (shard) holds N
chunks of ``chunk_tokens / N`` rows each with its CRC-32C, plus an index (N times fewer objects, for
object stores). ``chunk_tokens`` is then the rows of a shard, the unit of commit, resume, repair and
of rank ownership; plain zarr reads such a store, the memory-map fast path does not apply.

The group attributes are the identity of the run (model, hook, layers, corpus ...) plus the
commit record (``committed_tokens``, ``complete``). Rows past ``committed_tokens`` are never
trusted. All attributes are plain JSON without timestamps, so the same inputs give the same bytes.

zarr's LocalStore writes every file to a temporary name and renames it into place, so a killed
process never leaves a half-written ``zarr.json``; the writer relies on that for the commit record.
On an object store (``location.py``) zarr's FsspecStore writes each object in one PUT, which is
atomic in the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

from .errors import StoreError
from .location import Location, as_location, zarr_store

FORMAT_VERSION = 3
"""Written by this version. 2: every chunk ends with a CRC-32C (zarr's crc32c codec); 3: plus a
checksum per chunk that binds it to its array, index, dtype and shape (``binding.py``)."""
READABLE_VERSIONS = (1, 2, 3)
"""Format versions this version reads (1: no checksums; 1 and 2 only unchecked or after
``ghosttrack verify --upgrade``)."""
DTYPE = "float16"
"""The layers' default dtype; ``float32`` is the other one a store may hold (the ``dtype`` attribute)."""
LAYER_DTYPES = {"float16": "<f2", "float32": "<f4"}
"""The layers' dtypes a store may record in its ``dtype`` attribute, little-endian."""
FLAGGED_ROWS = "positions == 0"
ROW_ARRAYS: dict[str, str] = {"tokens": "<i4", "positions": "<i4", "sequence_ids": "<i8"}
"""The per-row metadata arrays and their little-endian dtypes (the bytes codec's byte order)."""
LAYER_DTYPE = "<f2"
REQUIRED_ATTRS = ("model", "revision", "hook", "context_length", "tokenizer", "corpus")
"""Identity keys the caller must pass in ``attrs`` (revision may be None)."""
PROGRESS_KEYS = ("committed_tokens", "complete")
"""Attributes that change while a run progresses; every other attribute is the run's identity."""
_OWN_KEYS = ("format_version", "layers", "d_model", "dtype", "chunk_tokens", "target_tokens",
             "flagged_rows", "shard_chunks") + PROGRESS_KEYS
CHUNK_KEY_ENCODING = {"name": "default", "separator": "/"}
LOCK_PREFIX = ".lock"
"""Lock files (``.lock``, ``.lock.rank-<r>``) sit in the store folder but are not store content."""
TMP_SUFFIX = ".partial"
"""Suffix of files being written; zarr's LocalStore uses the same one for its temporary files."""


MAX_TOKENS = 2**40
"""Most rows a store holds (1.1 trillion; at d_model 768 in fp16 one layer alone is 1.7 PB)."""
MAX_CHUNKS = 2**24
"""Most chunks per array (16.8 million files each): bounds every per-chunk loop of set-up and resume."""


def budget_problem(target_tokens: int, chunk_tokens: int) -> str | None:
    """Why a store of ``target_tokens`` rows in chunks of ``chunk_tokens`` cannot be made (None: it can)."""
    if target_tokens > MAX_TOKENS:
        return f"{target_tokens:,} tokens is more than a store holds ({MAX_TOKENS:,} rows); pass fewer --tokens"
    n_chunks = -(-target_tokens // chunk_tokens)
    if n_chunks > MAX_CHUNKS:
        return (f"{target_tokens:,} tokens in chunks of {chunk_tokens:,} rows make {n_chunks:,} chunks, more than "
                f"a store holds ({MAX_CHUNKS:,} per array); pass fewer --tokens or a larger --chunk-tokens")
    return None


def _positive_int(value) -> bool:
    return type(value) is int and value > 0


def bad_attributes(attrs: dict[str, Any]) -> str | None:
    """A description of the attributes no writer writes (None: they are well-formed)."""
    layers = attrs["layers"]
    if not isinstance(layers, list) or not layers or not all(type(i) is int and i >= 0 for i in layers) \
            or len(set(layers)) != len(layers):
        return f"layers={layers!r}"
    for key in ("d_model", "chunk_tokens", "context_length"):
        if not _positive_int(attrs[key]):
            return f"{key}={attrs[key]!r}"
    if "target_tokens" in attrs and not _positive_int(attrs["target_tokens"]):
        return f"target_tokens={attrs['target_tokens']!r}"
    return None


def layer_array(layer: int) -> str:
    """Name of the array that holds one layer's activations."""
    return f"layers/{layer}"


def _canonical_json(value: Any) -> Any:
    """The value as JSON would read it back (tuples -> lists, nested keys sorted), so that
    comparisons with stored attributes are exact and the written bytes are deterministic."""
    return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))


def identity_attrs(*, layers: list[int], d_model: int, chunk_tokens: int, target_tokens: int,
                   attrs: dict[str, Any], dtype: str = DTYPE, shard_chunks: int = 1) -> dict[str, Any]:
    """The identity attributes of a run, in a fixed key order (caller's extra keys sorted last).
    ``shard_chunks`` > 1: sharded arrays of that many chunks per ``chunk_tokens``-row shard."""
    if shard_chunks < 1 or chunk_tokens % shard_chunks:
        raise ValueError(f"shard_chunks must be >= 1 and divide chunk_tokens={chunk_tokens}, got {shard_chunks}")
    if dtype not in LAYER_DTYPES:
        raise ValueError(f"dtype must be one of {list(LAYER_DTYPES)}, got {dtype!r}")
    if (problem := budget_problem(target_tokens, chunk_tokens)) is not None:
        raise ValueError(problem)
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise ValueError(f"attrs is missing required keys {missing} (need {list(REQUIRED_ATTRS)})")
    reserved = sorted(set(attrs) & set(_OWN_KEYS))
    if reserved:
        raise ValueError(f"attrs may not set {reserved}: the store writes those itself")
    if not isinstance(attrs["corpus"], dict):
        raise ValueError(f"attrs['corpus'] must be a dict describing the corpus, got {attrs['corpus']!r}")
    try:
        extra = _canonical_json(attrs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"attrs must be plain JSON (no NaN, no objects): {e}") from e
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": extra.pop("model"),
        "revision": extra.pop("revision"),
        "hook": extra.pop("hook"),
        "layers": [int(i) for i in layers],
        "d_model": int(d_model),
        "dtype": dtype,
        "context_length": extra.pop("context_length"),
        "tokenizer": extra.pop("tokenizer"),
        "corpus": extra.pop("corpus"),
        "chunk_tokens": int(chunk_tokens),
        "target_tokens": int(target_tokens),
        "flagged_rows": FLAGGED_ROWS,
    }
    if shard_chunks > 1:  # absent from unsharded stores: their attributes stay as they were
        out["shard_chunks"] = int(shard_chunks)
    out.update(extra)  # already key-sorted by _canonical_json
    return out


def with_progress(identity: dict[str, Any], committed_tokens: int, complete: bool) -> dict[str, Any]:
    """Identity attributes plus the commit record, in the fixed order the group stores them."""
    return {**identity, "committed_tokens": int(committed_tokens), "complete": bool(complete)}


def identity_of(attrs: dict[str, Any]) -> dict[str, Any]:
    """The identity part of stored attributes (everything except the commit record)."""
    return {k: v for k, v in attrs.items() if k not in PROGRESS_KEYS}


def read_store_attrs(path: Location) -> dict[str, Any] | None:
    """The group attributes if ``path`` holds a GhostTrack store (a zarr.json with format_version), else None.

    A store whose zarr.json is damaged (unreadable, not JSON, not a group) while its arrays are
    there raises StoreError: it is a GhostTrack store, but nothing in it can be trusted.
    """
    meta = as_location(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except FileNotFoundError:
        doc = None
    except (OSError, ValueError) as e:
        doc = e
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and doc.get("node_type") == "group" and isinstance(attrs, dict) \
            and "format_version" in attrs:
        return attrs
    if doc is not None and looks_like_store(path):
        why = f"{type(doc).__name__}: {doc}" if isinstance(doc, Exception) else "not a GhostTrack group"
        raise StoreError(f"store {path} is damaged: its zarr.json is unreadable ({why}); "
                         "re-extract with --overwrite")
    return None


def looks_like_store(path: Location) -> bool:
    """True when ``path`` holds the arrays of a GhostTrack store (whatever its zarr.json says)."""
    path = as_location(path)
    return (path / "tokens" / "zarr.json").is_file() and (path / "layers").is_dir()


def content_entries(path: Location) -> list[Location]:
    """The folder's entries that are store content (everything but lock files); [] if missing."""
    path = as_location(path)
    if not path.is_dir():
        return []
    return sorted((p for p in path.iterdir() if not p.name.startswith(LOCK_PREFIX)), key=str)


def create_group(path: Location, attrs: dict[str, Any], target_tokens: int) -> zarr.Group:
    """Create the group and all its arrays, shaped for ``target_tokens`` rows.

    The arrays keep that shape until the run completes (then they are cut to the committed rows),
    so their metadata does not change while chunks are appended, and a resumed run writes the
    same metadata bytes as an uninterrupted one.
    """
    # "a", not "w" or "w-": those empty or refuse the folder, whose lock file is already there.
    group = zarr.open_group(zarr_store(path), mode="a", zarr_format=3, attributes=attrs)
    ct, d, n = attrs["chunk_tokens"], attrs["d_model"], attrs.get("shard_chunks", 1)
    for layer in attrs["layers"]:
        _create_array(group, layer_array(layer), (target_tokens, d), (ct, d), LAYER_DTYPES[attrs["dtype"]], n)
    for name, dtype in ROW_ARRAYS.items():
        _create_array(group, name, (target_tokens,), (ct,), dtype, n)
    return group


def _create_array(group: zarr.Group, name: str, shape: tuple, rows: tuple, dtype: str, shard_chunks: int) -> None:
    # crc32c is a bytes-to-bytes codec: the raw chunk bytes stay first in the file (memmap-able).
    # Sharded: each inner chunk carries its own CRC-32C, the shard index another (zarr's default).
    chunks = rows if shard_chunks == 1 else (rows[0] // shard_chunks,) + rows[1:]
    group.create_array(
        name, shape=shape, chunks=chunks, shards=None if shard_chunks == 1 else rows,
        dtype=np.dtype(dtype).name, compressors=Crc32cCodec(), serializer=BytesCodec(endian="little"),
        fill_value=0, chunk_key_encoding=CHUNK_KEY_ENCODING,
    )


def resize_rows(array: zarr.Array, rows: int) -> None:
    """Set the array's row count, touching only its zarr.json: zarr's own resize lists every chunk
    outside a smaller shape to delete it (minutes for a large target), and the writer never leaves
    chunk files past the rows it keeps."""
    from zarr.core.sync import sync

    sync(array.async_array.resize((int(rows),) + tuple(array.shape[1:]), delete_outside_chunks=False))


def array_names(layers: list[int]) -> list[str]:
    """Every array of a store with these layers: layer arrays first, then the row arrays."""
    return [layer_array(i) for i in layers] + list(ROW_ARRAYS)


def chunk_file(root: Location, array: zarr.Array, c: int) -> Location:
    """The file (or object) that holds row-chunk ``c`` of ``array`` (zarr's own key encoding decides
    the name)."""
    coords = (c,) + (0,) * (array.ndim - 1)
    return as_location(root) / array.path / array.metadata.encode_chunk_key(coords)


def has_checksum(array: zarr.Array) -> bool:
    """True when the array's chunks end with zarr's crc32c checksum."""
    return any(isinstance(c, Crc32cCodec) for c in array.compressors)


def is_plain_chunked(array: zarr.Array) -> bool:
    """True when each chunk file starts with the raw little-endian C-order bytes of the chunk
    (memmap-able): no filter, no sharding, a little-endian ``bytes`` serializer, and no
    compressor except a trailing crc32c checksum."""
    ser = array.serializer
    return (array.shards is None and not array.filters
            and all(isinstance(c, Crc32cCodec) for c in array.compressors)
            and isinstance(ser, BytesCodec)
            and (ser.endian is None or ser.endian.value == "little"))


def chunk_nbytes(array: zarr.Array) -> int:
    """Data bytes of one full chunk of a plain-chunked array (the checksum not included); of a
    sharded array, the data bytes of one shard."""
    return int(np.prod(array.shards or array.chunks)) * array.dtype.itemsize


CHECKSUM_BYTES = 4
"""Length of the crc32c trailer (little-endian uint32, as zarr's codec writes it)."""


def chunk_file_size(array: zarr.Array) -> int:
    """Expected size of each chunk file of a plain-chunked array."""
    return chunk_nbytes(array) + (CHECKSUM_BYTES if has_checksum(array) else 0)
