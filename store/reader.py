"""ActivationStore: read-only access to a store's committed rows.

A chunk of an uncompressed, unsharded array is handed out as a ``numpy.memmap`` of the data part
of its chunk file (no copy, no decode: the fast path); any other layout goes through zarr. On an
object store a plain chunk is one GET of the whole object, fetched ahead where the loader asks
(``remote_reads.py``). Rows past ``committed_tokens`` are never returned.

Every chunk is checked the first time it is read (local files) or each time it is fetched (object
stores): its CRC-32C trailer, and its bound checksum, which says it is chunk c of that array with
that dtype and shape (``binding.py``); ``trust=True`` skips both for a store the caller vouches for
(object-store chunks still get their size and trailer checked). ``verify.py`` checks every chunk
at once, and finite values besides.

The committed range checks itself: every committed chunk must be there with its full size, so a
missing, short or unreadable chunk file is an error naming the array, the chunk and the fix,
never the zeros zarr would return for a missing chunk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import binding
from . import format as fmt
from .commits import progress_while_writing
from .errors import StoreError
from .location import Location, as_location, check_reachable, is_remote, zarr_store
from .modes import check_commit_record
from .remote_reads import ChunkFetcher, check_chunk_bytes


REPAIR_COMMAND = "ghosttrack extract ... --resume --repair"
"""Re-extracts damaged chunks (the run's own options plus --resume --repair)."""


def repair_hint(path: Path) -> str:
    """The fix for damaged chunks, as every message about them names it."""
    return f"run ghosttrack verify {path} to list every damaged chunk, then {REPAIR_COMMAND} to re-extract them"


class ChunkDamaged(StoreError):
    """A committed chunk that cannot be read as written: missing, short, unreadable or undecodable."""

    def __init__(self, path: Path, array: str, chunk: int, why: str):
        super().__init__(f"store {path} is damaged: chunk {chunk} of {array} {why}; {repair_hint(path)}")
        self.array, self.chunk, self.why = array, chunk, why


damaged_chunk = ChunkDamaged


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ActivationStore(binding.ChunkChecks):
    """A GhostTrack activation store opened for reading (see ``format.py`` for the layout)."""

    def __init__(self, path: Location, group: zarr.Group, attrs: dict[str, Any], *, trust: bool = False):
        self.path = path
        self.trust = trust
        """True: chunks are read without checking their checksums (a store the caller vouches for)."""
        self.remote = is_remote(path)
        """True on an object store: chunks are fetched, not memory-mapped."""
        self._fetcher = ChunkFetcher() if self.remote else None
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
        self.layer_dtype = np.dtype(fmt.LAYER_DTYPES.get(attrs.get("dtype", fmt.DTYPE), fmt.LAYER_DTYPE))
        """The layers' dtype (little-endian float16, or float32 for a --store-dtype fp32 store)."""
        self._arrays = {}
        for name in fmt.array_names(self.layers):
            try:
                self._arrays[name] = group[name]
            except KeyError:
                raise StoreError(f"store {path} is damaged: array {name} is missing (its creation or an "
                                 "--overwrite was cut short?); re-extract with --overwrite") from None
        self._plain = {name: fmt.is_plain_chunked(a) for name, a in self._arrays.items()}
        self._file_size = {name: fmt.chunk_file_size(a) for name, a in self._arrays.items() if self._plain[name]}
        self._paths: dict[tuple[str, int], str] = {}
        self.store_dtype: str = str(attrs.get("dtype", fmt.DTYPE))
        self._records = group[binding.CHECKSUMS] if binding.CHECKSUMS in group else None
        self.bound = self._records is not None
        """Whether every committed chunk has a bound checksum (format 3, or upgraded). The records
        decide, not the version number: only the writer of a format-3 store or an upgrade makes them."""
        self._record_of: dict[int, dict[str, int] | str] = {}
        self._checked: set[tuple[str, int]] = set()
        """Local chunks whose checksums this reader has checked (each is checked once)."""

    @classmethod
    def open(cls, path, *, trust: bool = False) -> "ActivationStore":
        """Open the store at ``path``; StoreError if it is missing, not a store, or damaged.

        Every chunk read is checked against its bound checksum (its bytes, and that it is the chunk
        of that array, index, dtype and shape) the first time it is read, unless ``trust``; a store
        without bound checksums (format < 3) is refused unless ``trust``, naming the upgrade.
        """
        path = as_location(path)
        check_reachable(path, for_writing=False)
        if not path.is_dir():
            raise StoreError(f"no activation store at {path}; run ghosttrack extract --out {path} first")
        attrs = fmt.read_store_attrs(path)
        if attrs is None:
            raise StoreError(f"{path} is not a GhostTrack activation store (no zarr.json with "
                             "format_version); pass the folder that ghosttrack extract wrote")
        if attrs["format_version"] not in fmt.READABLE_VERSIONS:
            raise StoreError(f"store {path} has format_version {attrs['format_version']}, this GhostTrack "
                             f"reads {', '.join(map(str, fmt.READABLE_VERSIONS))}; upgrade GhostTrack or re-extract")
        missing_keys = [k for k in ("layers", "d_model", "chunk_tokens", "model", "hook", "context_length")
                        if k not in attrs]
        if missing_keys:
            raise StoreError(f"store {path} is damaged: its attributes lack {missing_keys}; "
                             "re-extract with --overwrite")
        bad = fmt.bad_attributes(attrs)
        if bad:
            raise StoreError(f"store {path} is damaged: its attributes hold {bad}; re-extract with --overwrite")
        check_commit_record(path, attrs)
        attrs = progress_while_writing(path, attrs)  # several processes writing: their merged prefix
        try:
            group = zarr.open_group(zarr_store(path, read_only=True), mode="r", zarr_format=3)
            store = cls(path, group, attrs, trust=trust)
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise StoreError(f"store {path} is damaged ({type(e).__name__}: {e}); "
                             "re-extract with --overwrite") from e
        store._check_shapes()
        if attrs["format_version"] >= binding.BOUND_FORMAT and store._records is None:
            raise StoreError(f"store {path} is damaged: its checksums array is missing; {repair_hint(path)}")
        if store.bound and store._records.attrs.get("arrays") != store.array_names:
            raise StoreError(f"store {path} is damaged: its attributes name the arrays {store.array_names}, its "
                             f"checksums cover {store._records.attrs.get('arrays')}; re-extract with --overwrite")
        if not trust and not store.bound:
            raise StoreError(binding.unbound_refusal(path, attrs["format_version"]))
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
        (compressed or sharded array, or an object store). Missing or short files raise StoreError."""
        name = self.require_layer(layer)
        if not self._plain[name] or self.remote:
            return None
        return Path(self._checked_plain_file(name, c))

    def _plain_path(self, name: str, c: int) -> str:
        """Path (a str: np.memmap resolves Paths) of chunk ``c`` of a plain-chunked array."""
        key = (name, c)
        f = self._paths.get(key)
        if f is None:
            f = self._paths[key] = str(fmt.chunk_file(self.path, self._arrays[name], c))
        return f

    def read_ahead(self, layer: int, c: int) -> None:
        """Start reading chunk ``c`` of ``layer`` before it is needed: on an object store its GET
        starts on a background thread; a local file is handed to the OS's read-ahead."""
        name = self.require_layer(layer)
        if self.remote:
            self.fetch_ahead(name, c)
            return
        f = self.chunk_file(layer, c)
        if f is None or not hasattr(os, "posix_fadvise"):
            return
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def chunk_problem(self, name: str, c: int) -> str | None:
        """What is wrong with the file of committed chunk ``c`` of array ``name`` that its presence
        and size show (None: nothing). Reading it (``verify.py``) can find more."""
        if self.remote:
            f = fmt.chunk_file(self.path, self._arrays[name], c)
            size = f.size()
            if size is None:
                return f"is missing ({f})"
            if self._plain[name] and size != self._file_size[name]:
                return f"holds {size} bytes, expected {self._file_size[name]} ({f})"
            return None
        if not self._plain[name]:
            f = fmt.chunk_file(self.path, self._arrays[name], c)
            return None if f.is_file() else f"is missing ({f})"
        f = self._plain_path(name, c)
        try:
            size = os.stat(f).st_size
        except FileNotFoundError:
            return f"is missing ({f})"
        except OSError as e:
            return f"cannot be read ({f}: {e.strerror})"
        if size != self._file_size[name]:
            return f"holds {size} bytes, expected {self._file_size[name]} ({f})"
        return None

    def _checked_plain_file(self, name: str, c: int) -> str:
        """Path of committed chunk ``c`` of a plain-chunked array, after checking that the file is
        there with its full size."""
        self.chunk_bounds(c)
        problem = self.chunk_problem(name, c)
        if problem is not None:
            raise damaged_chunk(self.path, name, c, problem)
        return self._plain_path(name, c)

    def _array_chunk(self, name: str, c: int) -> np.ndarray:
        """Committed rows of chunk ``c`` of array ``name``: a memmap of its file on the fast path,
        else decoded by zarr (which checks a checksum the chunks carry)."""
        start, stop = self.chunk_bounds(c)
        array = self._arrays[name]
        if self._plain[name] and self.remote:
            return self._fetched_chunk(name, c)[: stop - start]
        if self._plain[name]:
            f = self._checked_plain_file(name, c)
            shape = (self.chunk_tokens,) + array.shape[1:]
            dtype = array.dtype.newbyteorder("<")
            try:
                if self.trust or (name, c) in self._checked:
                    return np.memmap(f, dtype=dtype, mode="r", shape=shape)[: stop - start]
                raw = np.memmap(f, dtype=np.uint8, mode="r")
            except OSError as e:
                raise damaged_chunk(self.path, name, c, f"cannot be read ({f}: {e.strerror})") from e
            problem = self.bytes_problem(name, c, raw, f)
            if problem is not None:
                raise damaged_chunk(self.path, name, c, problem)
            self._checked.add((name, c))
            return raw[: fmt.chunk_nbytes(array)].view(dtype).reshape(shape)[: stop - start]
        problem = self.chunk_problem(name, c)
        if problem is not None:  # zarr would read the fill value
            raise damaged_chunk(self.path, name, c, problem)
        try:
            rows = array[start:stop]
        except Exception as e:  # a decoder's error (checksum, truncated stream ...): damaged data
            raise damaged_chunk(self.path, name, c, f"cannot be decoded ({type(e).__name__}: {e})") from e
        if not self.trust and (name, c) not in self._checked:
            problem = self.bound_problem(name, c, self.decoded_crc(name, rows), fmt.chunk_file(self.path, array, c))
            if problem is not None:
                raise damaged_chunk(self.path, name, c, problem)
            self._checked.add((name, c))
        return rows

    def fetch_ahead(self, name: str, c: int) -> None:
        """Object store: start the GET of chunk ``c`` of array ``name`` in the background."""
        if self.remote and self._plain[name] and 0 <= c < self.n_chunks:
            self._fetcher.read_ahead(fmt.chunk_file(self.path, self._arrays[name], c))

    def fetch_raw(self, name: str, c: int) -> np.ndarray:
        """Object store: the bytes of chunk object ``c`` of ``name`` as uint8, unchecked (for
        ``verify.py``); FileNotFoundError when it is missing."""
        return np.frombuffer(self._fetcher.fetch(fmt.chunk_file(self.path, self._arrays[name], c)), np.uint8)

    def _fetched_chunk(self, name: str, c: int) -> np.ndarray:
        """A plain chunk of an object store: the whole object, checked, as a read-only array."""
        obj = fmt.chunk_file(self.path, self._arrays[name], c)
        try:
            raw = self._fetcher.fetch(obj)
        except FileNotFoundError:
            raise damaged_chunk(self.path, name, c, f"is missing ({obj})") from None
        except OSError as e:
            raise damaged_chunk(self.path, name, c, f"cannot be read ({obj}: {e})") from e
        if self.trust:
            problem = check_chunk_bytes(raw, self._arrays[name], self._file_size[name])
            problem = problem and f"{problem} ({obj})"
        else:
            problem = self.bytes_problem(name, c, np.frombuffer(raw, np.uint8), obj)
        if problem is not None:
            raise damaged_chunk(self.path, name, c, problem)
        array = self._arrays[name]
        shape = (self.chunk_tokens,) + array.shape[1:]
        return np.frombuffer(raw, array.dtype.newbyteorder("<"), count=int(np.prod(shape))).reshape(shape)

    def read_chunk(self, layer: int, c: int) -> np.ndarray:
        """Chunk ``c`` of ``layer`` as (rows, d_model) float16: a read-only ``numpy.memmap`` of the
        chunk file on the fast path, else an array decoded by zarr."""
        self.chunk_bounds(c)
        return self._array_chunk(self.require_layer(layer), c)

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
        return np.concatenate(parts) if parts else np.empty((0, self.d_model), self.layer_dtype)

    def _row_array(self, name: str, start: int, stop: int | None) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        ct = self.chunk_tokens
        parts = [self._array_chunk(name, c)[max(start - c * ct, 0): stop - c * ct]
                 for c in range(start // ct, -(-stop // ct))]
        return np.concatenate(parts) if parts else np.empty(0, self._arrays[name].dtype)

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
        if self.remote:
            return sum(n for k, n in self.path.sizes().items() if not k.startswith(fmt.LOCK_PREFIX))
        return sum(p.stat().st_size for entry in fmt.content_entries(self.path)
                   for p in ([entry] if entry.is_file() else entry.rglob("*")) if p.is_file())

    @property
    def corpus_ran_out(self) -> bool:
        """True when the extraction finished before its target: the corpus had no more text (a
        complete store is never cut short otherwise)."""
        return self.complete and self.n_tokens < self.attrs.get("target_tokens", self.n_tokens)

    @property
    def array_names(self) -> list[str]:
        """Every array: the layers, then tokens, positions and sequence_ids."""
        return list(self._arrays)

    def damaged_files(self) -> list[tuple[str, int, str]]:
        """(array, chunk, problem) for every committed chunk file that is missing or has the wrong
        size: a quick check (one stat per file, one listing on an object store); ``verify_store``
        also reads the data."""
        if self.remote:
            return self._damaged_objects()
        return [(name, c, why) for name in self._arrays for c in range(self.n_chunks)
                if (why := self.chunk_problem(name, c)) is not None]

    def _damaged_objects(self) -> list[tuple[str, int, str]]:
        sizes, root, out = self.path.sizes(), len(str(self.path)) + 1, []
        for name, array in self._arrays.items():
            want = self._file_size.get(name)
            for c in range(self.n_chunks):
                f = fmt.chunk_file(self.path, array, c)
                size = sizes.get(str(f)[root:])
                if size is None:
                    out.append((name, c, f"is missing ({f})"))
                elif want is not None and size != want:
                    out.append((name, c, f"holds {size} bytes, expected {want} ({f})"))
        return out

    def summary(self) -> str:
        """What ``ghosttrack info`` prints. A store with missing or short chunk files is called
        damaged, whatever its commit record says."""
        a = self.attrs
        state = "complete" if self.complete else "incomplete (resume with --resume)"
        if self.corpus_ran_out:
            state += f": corpus ran out at {self.n_tokens:,} of {a['target_tokens']:,} tokens"
        damaged = self.damaged_files()
        if damaged:
            name, c, why = damaged[0]
            state = (f"DAMAGED: {len(damaged)} chunk file(s) missing or short (first: chunk {c} of {name}); "
                     f"{repair_hint(self.path)}")
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
