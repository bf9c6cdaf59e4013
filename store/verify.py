"""Check a whole store: every committed chunk of every array is there, has its size, matches its
checksum and, for activations, holds only finite values. What fails is listed by (array, chunk),
and ``repair_ranges`` turns that into the row ranges an extractor re-extracts with
``StoreWriter.rewrite_chunk``.

Reads check each chunk's checksums as they go (``reader.py``); this checks every committed chunk at
once, and finite values besides. ``upgrade_store`` binds the chunks of a store written before
bound checksums (format < 3) after this check finds them healthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from tqdm.auto import tqdm

from . import format as fmt
from .binding import UPGRADE_COMMAND
from .errors import StoreError
from .reader import REPAIR_COMMAND, ActivationStore, ChunkDamaged

_BLOCK_BYTES = 1 << 21  # finite checks in blocks that stay in the cache
_REMOTE_AHEAD = 8  # chunk objects requested ahead of the one being checked


@dataclass(frozen=True)
class Damage:
    """One damaged chunk of one array."""

    array: str
    chunk: int
    reason: str


@dataclass
class VerifyReport:
    """What ``verify_store`` found."""

    path: Path
    arrays: list[str]
    n_chunks: int
    """Committed chunks per array."""
    n_tokens: int
    chunk_tokens: int
    checksums: bool
    """Whether every array's chunks carry a checksum (format 1 stores have none)."""
    bound: bool = False
    """Whether every chunk has a bound checksum (format 3): swapped, moved or retyped chunks show."""
    format_version: int = fmt.FORMAT_VERSION
    bytes_read: int = 0
    damaged: list[Damage] = field(default_factory=list)
    data_crcs: dict[tuple[str, int], int] = field(default_factory=dict)
    """CRC-32C of each healthy chunk's data bytes (what ``upgrade_store`` binds)."""

    @property
    def healthy(self) -> bool:
        return not self.damaged

    @property
    def damaged_chunks(self) -> list[int]:
        """Chunk indices with any damaged array, ascending."""
        return sorted({d.chunk for d in self.damaged})

    def summary(self) -> str:
        """What ``ghosttrack verify`` prints: one line when healthy, else one line per damaged chunk."""
        checks = ("presence, size, CRC-32C bound to array, chunk, dtype and shape, finite values" if self.bound else
                  "presence, size, CRC-32C, finite values" if self.checksums else
                  "presence, size, finite values; format-1 store: no checksums")
        head = (f"store {self.path}: {self.n_chunks} chunks x {len(self.arrays)} arrays, "
                f"{self.n_tokens:,} committed tokens ({checks}), {self.bytes_read / 1e9:.2f} GB read")
        if self.healthy:
            if not self.bound:
                return (f"{head}: healthy as far as format {self.format_version} can tell (chunks not bound to "
                        f"their place: reads refuse it); run {UPGRADE_COMMAND} {self.path} to bind them")
            return f"{head}: healthy"
        lines = [f"{head}: {len(self.damaged)} damaged chunk file(s) in {len(self.damaged_chunks)} chunk(s)"]
        lines += [f"  {d.array} chunk {d.chunk}: {d.reason}" for d in self.damaged]
        lines.append(f"fix: re-extract them with {REPAIR_COMMAND} (the options of the original run)")
        return "\n".join(lines)


def verify_store(path, *, progress: bool = False) -> VerifyReport:
    """Read every committed chunk of the store at ``path`` and report the damaged ones.

    A store that cannot be opened at all (no commit record, damaged metadata) raises StoreError.
    """
    store = ActivationStore.open(path, trust=True)  # checked here, chunk by chunk, with more detail
    arrays = store.array_names
    report = VerifyReport(path=store.path, arrays=arrays, n_chunks=store.n_chunks, n_tokens=store.n_tokens,
                          chunk_tokens=store.chunk_tokens,
                          checksums=all(fmt.has_checksum(store._arrays[a]) for a in arrays), bound=store.bound,
                          format_version=store.attrs["format_version"])
    work = [(name, c) for c in range(store.n_chunks) for name in arrays]
    for i, (name, c) in enumerate(tqdm(work, desc=f"verify {store.path.name}", unit="chunk", disable=not progress)):
        if store.remote:  # keep a few GETs in flight ahead of the check
            for ahead in work[i:i + _REMOTE_AHEAD]:
                store.fetch_ahead(*ahead)
        reason = _check_chunk(store, name, c, report)
        if reason is not None:
            report.damaged.append(Damage(name, c, reason))
    return report


def _check_chunk(store: ActivationStore, name: str, c: int, report: VerifyReport) -> str | None:
    # On an object store the fetched bytes show presence and size: no extra request for them.
    problem = None if store.remote and store._plain[name] else store.chunk_problem(name, c)
    if problem is not None:
        return problem
    array = store._arrays[name]
    start, stop = store.chunk_bounds(c)
    if not store._plain[name]:  # zarr decodes it, checking any checksum codec on the way
        try:
            rows = store._array_chunk(name, c)
        except ChunkDamaged as e:
            return e.why
        report.bytes_read += rows.nbytes
        crc = store.decoded_crc(name, rows)
        if store.bound and (problem := store.bound_problem(name, c, crc, fmt.chunk_file(store.path, array, c))):
            return problem
        report.data_crcs[(name, c)] = crc
        return _nonfinite(np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8), rows.dtype, stop - start) \
            if rows.dtype.kind == "f" else None
    f = store._plain_path(name, c)
    try:
        raw = store.fetch_raw(name, c) if store.remote else np.memmap(f, dtype=np.uint8, mode="r")
    except FileNotFoundError:
        return f"is missing ({f})"
    except OSError as e:
        return f"cannot be read ({f}: {e.strerror or e})"
    report.bytes_read += len(raw)
    if len(raw) != fmt.chunk_file_size(array):
        return f"holds {len(raw)} bytes, expected {fmt.chunk_file_size(array)} ({f})"
    data = raw[: fmt.chunk_nbytes(array)]
    checksum = fmt.has_checksum(array)
    is_float = array.dtype.kind == "f"
    # One pass over the file, block by block: the checksum and the finite test read each block
    # while it is in the cache.
    committed = (stop - start) * (len(data) // store.chunk_tokens)
    exponent = _Exponent(array.dtype) if is_float else None
    crc, nonfinite = 0, False
    for i in range(0, len(data), _BLOCK_BYTES):
        block = data[i:i + _BLOCK_BYTES]
        crc = google_crc32c.extend(crc, block)  # format 1 has no trailer, but a bound checksum may use it
        if exponent is not None and not nonfinite and i < committed:
            nonfinite = exponent.any_all_set(block[:committed - i])
    if checksum and crc != int(raw[-fmt.CHECKSUM_BYTES:].view("<u4")[0]):
        return f"fails its CRC-32C checksum (its bytes changed after they were written; {f})"
    if store.bound and (problem := store.bound_problem(name, c, crc, f)):
        return problem
    report.data_crcs[(name, c)] = crc
    if nonfinite:
        return _nonfinite(data.reshape(store.chunk_tokens, -1), array.dtype, stop - start)
    return None


_EXPONENT_BITS = {2: ("<u2", 0x7C00), 4: ("<u4", 0x7F800000), 8: ("<u8", 0x7FF0000000000000)}
"""Per IEEE float width: the unsigned view and the exponent mask (all set: inf or NaN)."""


class _Exponent:
    """Finds NaN/inf in raw float bytes: a value is NaN/inf when all its exponent bits are set, and
    the max of the masked exponents over a cache-sized block tells that several times faster than
    ``np.isfinite`` (which has no SIMD path for fp16)."""

    def __init__(self, dtype: np.dtype):
        view, self.mask = _EXPONENT_BITS[np.dtype(dtype).itemsize]
        self.view = np.dtype(view)
        self._scratch = np.empty(_BLOCK_BYTES // self.view.itemsize, self.view)

    def any_all_set(self, raw: np.ndarray) -> bool:
        """True when any value in the raw bytes ``raw`` (1-D uint8, a whole number of values) is NaN/inf."""
        bits = raw.view(self.view)
        step = len(self._scratch)
        for i in range(0, len(bits), step):
            part = bits[i:i + step]
            if np.bitwise_and(part, self.mask, out=self._scratch[:len(part)]).max() == self.mask:
                return True
        return False


def _nonfinite(rows_u8: np.ndarray, dtype: np.dtype, n_rows: int) -> str | None:
    """Count NaN/inf in the first ``n_rows`` rows (given as raw bytes, one row per line)."""
    rows_u8 = np.ascontiguousarray(rows_u8[:n_rows])
    exponent = _Exponent(dtype)
    if not len(rows_u8) or not exponent.any_all_set(rows_u8.reshape(-1)):
        return None
    bits = rows_u8.view(exponent.view)
    bad = (bits & bits.dtype.type(exponent.mask)) == exponent.mask
    rows = np.flatnonzero(bad.any(axis=1))[:3]
    return f"holds {int(bad.sum())} NaN/inf value(s) (rows of the chunk: {', '.join(map(str, rows))})"


def repair_ranges(report: VerifyReport) -> list[tuple[int, int]]:
    """[start, stop) row ranges to re-extract: the damaged chunks' committed rows, neighbours merged."""
    out: list[tuple[int, int]] = []
    ct = report.chunk_tokens
    for c in report.damaged_chunks:
        start, stop = c * ct, min((c + 1) * ct, report.n_tokens)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return out


def upgrade_store(path, *, progress: bool = False) -> str:
    """Bind the chunks of a store written before bound checksums (format < 3): check every committed
    chunk as ``verify_store`` does, and only when all are healthy write the ``checksums`` array
    from the CRCs just read and mark the store format 3. Holds the store's lock meanwhile (a running
    extraction is refused). Returns what was done, in one line; StoreError when the store is damaged."""
    from .binding import BOUND_FORMAT, bind, create_records, header, record_file, record_row
    from .files import atomic_file, commit_all
    from .location import as_location, zarr_store
    from .lock import StoreLock

    path = as_location(path)
    store = ActivationStore.open(path, trust=True)
    if store.bound:
        return f"store {path} already has bound checksums (format {store.attrs['format_version']}): nothing to do"
    with StoreLock.acquire(path / fmt.LOCK_PREFIX, path):
        report = verify_store(path, progress=progress)
        if not report.healthy:
            raise StoreError(f"store {path} has {len(report.damaged)} damaged chunk file(s) (first: chunk "
                             f"{report.damaged[0].chunk} of {report.damaged[0].array}: {report.damaged[0].reason}); "
                             f"repair them with {REPAIR_COMMAND} before {UPGRADE_COMMAND}")
        group = zarr.open_group(zarr_store(path), mode="r+", zarr_format=3)
        names = store.array_names
        n_chunks = max(store.n_chunks, -(-store.attrs.get("target_tokens", store.n_tokens) // store.chunk_tokens))
        records = create_records(group, names, n_chunks if not store.complete else store.n_chunks)
        for c in range(store.n_chunks):
            sums = {}
            for name in names:
                a = store._arrays[name]
                sums[name] = bind(report.data_crcs[(name, c)],
                                  header(name, c, a.dtype, a.shards or a.chunks, store.store_dtype))
            f = atomic_file(record_file(path, records, c), checksum=True)
            f.write(record_row(names, sums))
            commit_all([f])
        group.update_attributes({"format_version": BOUND_FORMAT})
    return (f"store {path}: {report.n_chunks} chunks x {len(names)} arrays checked and bound to their array, "
            f"index, dtype and shape (format {report.format_version} -> {BOUND_FORMAT}); reads check them from now on")
