"""ActivationStore: read-only access to a store's committed rows.

A chunk of an uncompressed, unsharded layer array is handed out as a ``numpy.memmap`` of its
chunk file (no copy, no decode: the fast path); any other layout goes through zarr. Rows past
``committed_tokens`` are never returned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import format as fmt
from .errors import StoreError


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ActivationStore:
    """A GhostTrack activation store opened for reading (see ``format.py`` for the layout)."""

    def __init__(self, path: Path, group: zarr.Group, attrs: dict[str, Any]):
        self.path = path
        self.attrs = attrs
        self.layers: list[int] = list(attrs["layers"])
        self.d_model: int = attrs["d_model"]
        self.chunk_tokens: int = attrs["chunk_tokens"]
        self.n_tokens: int = attrs["committed_tokens"]
        """Committed rows: the only rows this reader returns."""
        self.n_chunks: int = -(-self.n_tokens // self.chunk_tokens)
        self.complete: bool = attrs["complete"]
        self.model: str = attrs["model"]
        self.hook: str = attrs["hook"]
        self.context_length: int = attrs["context_length"]
        self._arrays = {name: group[name] for name in fmt.array_names(self.layers)}
        self._plain = {name: fmt.is_plain_chunked(a) for name, a in self._arrays.items()}
        self._paths: dict[tuple[str, int], str | None] = {}

    @classmethod
    def open(cls, path) -> "ActivationStore":
        """Open the store at ``path``; StoreError if it is missing, not a store, or damaged."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"no activation store at {path}; run ghosttrack extract --out {path} first")
        attrs = fmt.read_store_attrs(path)
        if attrs is None:
            raise StoreError(f"{path} is not a GhostTrack activation store (no zarr.json with "
                             "format_version); pass the folder that ghosttrack extract wrote")
        if attrs["format_version"] != fmt.FORMAT_VERSION:
            raise StoreError(f"store {path} has format_version {attrs['format_version']}, this GhostTrack "
                             f"reads {fmt.FORMAT_VERSION}; upgrade GhostTrack or re-extract")
        missing_keys = [k for k in ("layers", "d_model", "chunk_tokens", "committed_tokens", "complete",
                                    "model", "hook", "context_length") if k not in attrs]
        if missing_keys:
            raise StoreError(f"store {path} is damaged: its attributes lack {missing_keys}; "
                             "re-extract with --overwrite")
        try:
            group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r", zarr_format=3)
            store = cls(path, group, attrs)
        except (KeyError, ValueError, OSError) as e:
            raise StoreError(f"store {path} is damaged ({type(e).__name__}: {e}); "
                             "re-extract with --overwrite") from e
        store._check_shapes()
        return store

    def _check_shapes(self) -> None:
        for name, a in self._arrays.items():
            want_cols = a.shape[1:] == ((self.d_model,) if name.startswith("layers/") else ())
            row_chunk = (a.shards or a.chunks)[0]
            if a.shape[0] < self.n_tokens or not want_cols or row_chunk != self.chunk_tokens:
                raise StoreError(f"store {self.path} is damaged: array {name} has shape {a.shape} and "
                                 f"chunks {a.chunks}, but {self.n_tokens} committed rows of width "
                                 f"{self.d_model} in chunks of {self.chunk_tokens} are recorded; "
                                 "re-extract with --overwrite")

    # ---------------------------------------------------------------- rows

    def chunk_bounds(self, c: int) -> tuple[int, int]:
        """[start, stop) rows of chunk ``c`` that are committed."""
        if not 0 <= c < self.n_chunks:
            raise IndexError(f"chunk {c} out of range: store {self.path} has {self.n_chunks} committed chunks")
        start = c * self.chunk_tokens
        return start, min(start + self.chunk_tokens, self.n_tokens)

    def require_layer(self, layer: int) -> str:
        """The array name of ``layer``; StoreError naming the fix when the store lacks it."""
        name = fmt.layer_array(layer)
        if name not in self._arrays:
            have = ", ".join(str(i) for i in self.layers)
            raise StoreError(f"layer {layer} is not in store {self.path} (it has layers {have}); "
                             f"extract it with ghosttrack extract --layers {layer}")
        return name

    def chunk_file(self, layer: int, c: int) -> Path | None:
        """The file to memory-map for chunk ``c`` of ``layer``, or None where zarr must decode it
        (compressed or sharded array, or a chunk never written, which reads as the fill value)."""
        f = self._chunk_path(self.require_layer(layer), c)
        return Path(f) if f is not None and os.path.isfile(f) else None

    def _chunk_path(self, name: str, c: int) -> str | None:
        """Cached str path of a chunk file of a plain-chunked array (str: np.memmap resolves Paths)."""
        key = (name, c)
        if key not in self._paths:
            plain = self._plain[name]
            self._paths[key] = str(fmt.chunk_file(self.path, self._arrays[name], c)) if plain else None
        return self._paths[key]

    def read_chunk(self, layer: int, c: int) -> np.ndarray:
        """Chunk ``c`` of ``layer`` as (rows, d_model) float16: a read-only ``numpy.memmap`` of the
        chunk file on the fast path, else an array decoded by zarr."""
        start, stop = self.chunk_bounds(c)
        name = self.require_layer(layer)
        f = self._chunk_path(name, c)
        try:
            size = os.stat(f).st_size if f is not None else None
        except FileNotFoundError:
            size = None
        if size is None:
            return self._arrays[name][start:stop]
        shape = (self.chunk_tokens, self.d_model)
        if size != shape[0] * shape[1] * 2:
            raise StoreError(f"store {self.path} is damaged: {f} holds {size} bytes, expected "
                             f"{shape[0] * shape[1] * 2}; re-extract with --overwrite")
        return np.memmap(f, dtype=fmt.LAYER_DTYPE, mode="r", shape=shape)[: stop - start]

    def _check_range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_tokens if stop is None else stop
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"rows [{start}, {stop}) out of range: store {self.path} has "
                             f"{self.n_tokens} committed rows")
        return start, stop

    def read_rows(self, layer: int, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of ``layer`` as float16, through the chunk reads above."""
        start, stop = self._check_range(start, stop)
        self.require_layer(layer)
        ct = self.chunk_tokens
        parts = []
        for c in range(start // ct, -(-stop // ct)):
            c0 = c * ct
            parts.append(self.read_chunk(layer, c)[max(start - c0, 0): stop - c0])
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty((0, self.d_model), fmt.LAYER_DTYPE)

    def _row_array(self, name: str, start: int, stop: int | None) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return self._arrays[name][start:stop]

    def tokens(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Token ids (int32) of rows [start, stop)."""
        return self._row_array("tokens", start, stop)

    def positions(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Position of each row inside its packed sequence (int32); 0 marks a flagged row."""
        return self._row_array("positions", start, stop)

    def sequence_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Index of the packed sequence each row belongs to (int64)."""
        return self._row_array("sequence_ids", start, stop)

    # ---------------------------------------------------------------- description

    def nbytes_on_disk(self) -> int:
        """Total size of the store's files (lock files excluded)."""
        return sum(p.stat().st_size for entry in fmt.content_entries(self.path)
                   for p in ([entry] if entry.is_file() else entry.rglob("*")) if p.is_file())

    def summary(self) -> str:
        """What ``ghosttrack info`` prints."""
        a = self.attrs
        state = "complete" if self.complete else "incomplete (resume with --resume)"
        corpus = ", ".join(f"{k}={v}" for k, v in a.get("corpus", {}).items()) or "-"
        rev = f" @ {a['revision']}" if a.get("revision") else ""
        fields = [
            ("store", str(self.path)),
            ("model", f"{self.model}{rev}"),
            ("hook", self.hook),
            ("layers", ", ".join(str(i) for i in self.layers)),
            ("tokens", f"{self.n_tokens:,} / {a.get('target_tokens', self.n_tokens):,} committed, {state}"),
            ("d_model", f"{self.d_model} ({a.get('dtype', fmt.DTYPE)})"),
            ("context", f"{self.context_length} tokens per sequence; flagged rows: {a.get('flagged_rows', '-')}"),
            ("chunking", f"{self.chunk_tokens:,} tokens per chunk, {self.n_chunks} chunks"),
            ("on disk", _human_bytes(self.nbytes_on_disk())),
            ("tokenizer", str(a.get("tokenizer"))),
            ("corpus", corpus),
        ]
        lines = [f"{name + ':':<11}{value}" for name, value in fields]
        return "\n".join(lines)
