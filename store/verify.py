"""Check a whole store: every committed chunk of every array is there, has its size, matches its
checksum and, for activations, holds only finite values. What fails is listed by (array, chunk),
and ``repair_ranges`` turns that into the row ranges an extractor re-extracts with
``StoreWriter.rewrite_chunk``.

Reads skip the checksum to stay at memory-map speed; this is where it is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np
from tqdm.auto import tqdm

from . import format as fmt
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
    bytes_read: int = 0
    damaged: list[Damage] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.damaged

    @property
    def damaged_chunks(self) -> list[int]:
        """Chunk indices with any damaged array, ascending."""
        return sorted({d.chunk for d in self.damaged})

    def summary(self) -> str:
        """What ``ghosttrack verify`` prints: one line when healthy, else one line per damaged chunk."""
        checks = "presence, size, CRC-32C, finite values" if self.checksums else \
            "presence, size, finite values; format-1 store: no checksums"
        head = (f"store {self.path}: {self.n_chunks} chunks x {len(self.arrays)} arrays, "
                f"{self.n_tokens:,} committed tokens ({checks}), {self.bytes_read / 1e9:.2f} GB read")
        if self.healthy:
            return f"{head}: healthy"
        lines = [f"{head}: {len(self.damaged)} damaged chunk file(s) in {len(self.damaged_chunks)} chunk(s)"]
        lines += [f"  {d.array} chunk {d.chunk}: {d.reason}" for d in self.damaged]
        lines.append(f"fix: re-extract them with {REPAIR_COMMAND} (the options of the original run)")
        return "\n".join(lines)


def verify_store(path, *, progress: bool = False) -> VerifyReport:
    """Read every committed chunk of the store at ``path`` and report the damaged ones.

    A store that cannot be opened at all (no commit record, damaged metadata) raises StoreError.
    """
    store = ActivationStore.open(path)
    arrays = store.array_names
    report = VerifyReport(path=store.path, arrays=arrays, n_chunks=store.n_chunks, n_tokens=store.n_tokens,
                          chunk_tokens=store.chunk_tokens,
                          checksums=all(fmt.has_checksum(store._arrays[a]) for a in arrays))
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
        return _nonfinite(rows.reshape(len(rows), -1).view(np.uint8), rows.dtype, stop - start) \
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
        if checksum:
            crc = google_crc32c.extend(crc, block)
        if exponent is not None and not nonfinite and i < committed:
            nonfinite = exponent.any_all_set(block[:committed - i])
    if checksum and crc != int(raw[-fmt.CHECKSUM_BYTES:].view("<u4")[0]):
        return f"fails its CRC-32C checksum (its bytes changed after they were written; {f})"
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
