"""StoreWriter: appends rows chunk by chunk and commits after every fully written chunk.

Commit protocol: the chunk files of every array are written first (each atomically, see
``files.py``), then the commit record advances (``committed_tokens`` in the group attributes, or
the rank's file in ``commits/`` for multi-process runs). A process killed at any instant leaves a
store whose commit record points at fully written chunks; ``mode="resume"`` deletes whatever lies
past it, and finishing the run gives the same bytes as an uninterrupted one.

On an object store the same order holds with PUTs instead of renames: the chunk objects of all
arrays go up together (``files.commit_all``), and only when all have landed is the commit record
PUT. Sharded arrays (``shard_chunks`` > 1) are written by zarr, one shard per commit.

Each chunk file ends with its CRC-32C (zarr's crc32c codec), computed as the rows stream in.
Before each chunk the free space is checked; a full disk (or any write error) stops the writer
with a StoreError and leaves the store at its last commit. ``rewrite_chunk`` replaces committed
chunks that ``verify_store`` found damaged.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import binding
from . import format as fmt
from .commits import (COMMITS_DIR, RankCommit, finalize_store, mark_multi_process, own_chunk,
                      read_rank_commits, recorded_world_size, write_rank_commit)
from .errors import StoreError
from .files import (AtomicFile, ObjectUpload, ShardWrite, atomic_file, commit_all, free_bytes, is_disk_full,
                    remove_partials)
from .location import Location, as_location, check_reachable, is_remote, remove_tree, zarr_store
from .lock import StoreLock
from .modes import MODES, check_commit_record, check_identity, clear, prepare

DISK_MARGIN = 1 << 20
"""Bytes kept free beyond a chunk's files: the commit record and zarr's temporary copy of it."""


def _lock_name(rank: int, world_size: int) -> str:
    return fmt.LOCK_PREFIX if world_size == 1 or rank == 0 else f"{fmt.LOCK_PREFIX}.rank-{rank}"


def _own_rows(total: int, rank: int, world_size: int, chunk_tokens: int) -> int:
    """Rows of the first ``total`` rows that lie in the chunks owned by ``rank`` (chunks c with
    c % world_size == rank; every chunk is full but the last). Closed form: no loop over chunks."""
    n_chunks = -(-total // chunk_tokens)
    owned = max(0, -(-(n_chunks - rank) // world_size))
    rows = owned * chunk_tokens
    if owned and (n_chunks - 1) % world_size == rank:  # the last chunk is ours: it may be partial
        rows -= n_chunks * chunk_tokens - total
    return rows


def _open_arrays(path: Path, group: zarr.Group, layers: list[int]) -> dict[str, zarr.Array]:
    arrays = {}
    for name in fmt.array_names(layers):
        try:
            arrays[name] = group[name]
        except (KeyError, ValueError, OSError) as e:
            raise StoreError(f"store {path} is damaged: array {name} is missing or unreadable "
                             f"({type(e).__name__}); re-extract with --overwrite") from e
    return arrays


class StoreWriter:
    """Appends activation rows to a store; see the module docstring for the commit protocol.

    With ``world_size`` > 1 open rank 0 first (it creates or checks the store), then the others.
    Rank r must append exactly the rows of its chunks (c % world_size == r), in order; after every
    rank closed, rank 0 calls ``StoreWriter.finalize(path, world_size)``.
    """

    def __init__(self, path: Path, group: zarr.Group, lock: StoreLock, *, rank: int,
                 world_size: int, committed_tokens: int, complete: bool):
        self.path = path
        self.rank, self.world_size = rank, world_size
        self.committed_tokens = committed_tokens
        """Rows durably committed (of this rank's own chunks when world_size > 1)."""
        self.complete = complete
        self._group, self._lock = group, lock
        attrs = group.attrs.asdict()
        self.layers: list[int] = list(attrs["layers"])
        self.chunk_tokens: int = attrs["chunk_tokens"]
        self.target_tokens: int = attrs["target_tokens"]
        self._arrays = _open_arrays(path, group, self.layers)
        # Each array's own metadata says whether its chunks end with a checksum (format 1: none).
        self._checksum = {name: fmt.has_checksum(a) for name, a in self._arrays.items()}
        self._chunk_bytes = sum(fmt.chunk_file_size(a) for a in self._arrays.values())
        self._store_dtype = attrs.get("dtype", fmt.DTYPE)
        # The bound checksums of each chunk (format 3; written for an older store too, where its
        # records array exists after `ghosttrack verify --upgrade`).
        self._records = group.get(binding.CHECKSUMS) if binding.CHECKSUMS in group else None
        self._record_names = list(self._records.attrs["arrays"]) if self._records is not None else []
        self.d_model: int = attrs["d_model"]
        layer_dtype = np.dtype(fmt.LAYER_DTYPES[attrs.get("dtype", fmt.DTYPE)])
        self._dtypes = {fmt.layer_array(i): layer_dtype for i in self.layers}
        self._dtypes.update({name: np.dtype(dt) for name, dt in fmt.ROW_ARRAYS.items()})
        # Rows go straight from append() into the current chunk's temporary files (no staging
        # copy); the files are renamed into place once the chunk is full.
        self._files: dict[str, AtomicFile] = {}
        self._n_buf = 0
        """Rows of the current chunk written to its temporary files, not yet committed."""
        self.capacity = _own_rows(self.target_tokens, rank, world_size, self.chunk_tokens)
        """Rows this writer may append in total (all of target_tokens when world_size == 1)."""
        self._failed: str | None = None
        self._closed = False

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, path, *, layers: list[int], d_model: int, target_tokens: int, chunk_tokens: int,
             attrs: dict, mode: str = "create", rank: int = 0, world_size: int = 1,
             break_lock: bool = False, dtype: str = fmt.DTYPE, shard_chunks: int = 1) -> "StoreWriter":
        """Create, resume or overwrite the store at ``path`` and lock it for writing.

        ``break_lock`` takes over a lock recorded by another host (see ``lock.py``); ``dtype`` is the
        layers' dtype (``float16``, or ``float32`` for activations beyond fp16's range);
        ``shard_chunks`` > 1 writes sharded arrays (``chunk_tokens`` rows per shard, see ``format.py``).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise ValueError(f"layers must be distinct non-negative ints, got {layers}")
        if min(d_model, target_tokens, chunk_tokens, world_size) < 1 or not 0 <= rank < world_size:
            raise ValueError("need d_model, target_tokens, chunk_tokens, world_size >= 1 and 0 <= rank < world_size")
        path = as_location(path)
        check_reachable(path, for_writing=True)
        identity = fmt.identity_attrs(layers=list(layers), d_model=d_model, chunk_tokens=chunk_tokens,
                                      target_tokens=target_tokens, attrs=attrs, dtype=dtype,
                                      shard_chunks=shard_chunks)
        try:
            if rank > 0:
                return cls._open_rank(path, identity, rank, world_size, break_lock)
            prepare(path, identity, mode)  # refuse before the lock file is put into the folder
            path.mkdir(parents=True, exist_ok=True)
            lock = StoreLock.acquire(path / _lock_name(rank, world_size), path, break_lock=break_lock)
            try:
                # Again under the lock: another writer may have changed the folder in between.
                stored, occupied = prepare(path, identity, mode)
                if stored is not None:
                    return cls._resume(path, stored, lock, world_size)
                if occupied:  # only a GhostTrack store (maybe damaged) gets here
                    clear(path)
                group = fmt.create_group(path, fmt.with_progress(identity, 0, False), target_tokens)
                # The bound checksums' records (binding.py, which builds on format.py: created here,
                # not by create_group, so that format.py does not import it back).
                binding.create_records(group, fmt.array_names(identity["layers"]), -(-target_tokens // chunk_tokens))
                if world_size > 1:
                    mark_multi_process(path)
                return cls(path, group, lock, rank=0, world_size=world_size, committed_tokens=0, complete=False)
            except BaseException:
                lock.release()
                raise
        except OSError as e:
            full = is_disk_full(e, path, DISK_MARGIN)
            what = "disk full" if full else (e.strerror or str(e))
            raise StoreError(f"cannot open store {path} for writing: {what}"
                             f"{f' ({e.filename})' if e.filename else ''}; "
                             f"{'free space' if full else 'fix that'} and rerun") from e

    @classmethod
    def _resume(cls, path: Path, stored: dict, lock: StoreLock, world_size: int) -> "StoreWriter":
        group = zarr.open_group(zarr_store(path), mode="r+", zarr_format=3)
        if stored["complete"]:  # nothing to append; appends are refused, repairs allowed
            own = _own_rows(stored["committed_tokens"], 0, world_size, stored["chunk_tokens"])
            return cls(path, group, lock, rank=0, world_size=world_size, committed_tokens=own, complete=True)
        commits_dir = path / COMMITS_DIR
        if commits_dir.is_dir():
            recorded = recorded_world_size(path)  # None: no rank had committed yet
        else:
            recorded = 1 if stored["committed_tokens"] > 0 else None
        if recorded not in (None, world_size):
            raise StoreError(f"store {path} was written by {recorded} process(es), not {world_size}; "
                             "resume it with the same number of processes or pass --overwrite")
        if world_size == 1:
            commits = [RankCommit(0, 1, stored["committed_tokens"], False)]
            if commits_dir.is_dir():
                remove_tree(commits_dir)  # the empty record folder of an earlier multi-process try
        else:
            mark_multi_process(path)
            commits = read_rank_commits(path, world_size)
        writer = cls(path, group, lock, rank=0, world_size=world_size,
                     committed_tokens=commits[0].committed_tokens, complete=commits[0].complete)
        writer._discard_uncommitted(commits)
        return writer

    @classmethod
    def _open_rank(cls, path: Path, identity: dict, rank: int, world_size: int, break_lock: bool) -> "StoreWriter":
        stored = fmt.read_store_attrs(path)
        if stored is None or not (stored.get("complete") or (path / COMMITS_DIR).is_dir()):
            raise StoreError(f"rank {rank}: no multi-process store at {path} yet; open it on rank 0 "
                             "first, then wait for everyone before opening the other ranks")
        check_commit_record(path, stored)
        check_identity(path, stored, identity)
        lock = StoreLock.acquire(path / _lock_name(rank, world_size), path, break_lock=break_lock)
        try:
            if stored["complete"]:
                mine = RankCommit(rank, world_size, _own_rows(stored["committed_tokens"], rank, world_size,
                                                              stored["chunk_tokens"]), True)
            else:
                mine = read_rank_commits(path, world_size)[rank]
            group = zarr.open_group(zarr_store(path), mode="r+", zarr_format=3)
            return cls(path, group, lock, rank=rank, world_size=world_size,
                       committed_tokens=mine.committed_tokens, complete=mine.complete)
        except BaseException:
            lock.release()
            raise

    def _discard_uncommitted(self, commits: list[RankCommit]) -> None:
        """Return an interrupted store to exactly its committed state: no temporary files, no chunk
        files past any rank's commit, arrays shaped for target_tokens again."""
        remove_partials(self.path)
        ct, ws = self.chunk_tokens, self.world_size
        for array in self._arrays.values():
            if array.shape[0] != self.target_tokens:  # killed while completing: undo the cut
                fmt.resize_rows(array, self.target_tokens)
        # Only the chunk files that exist are looked at (one listing per array): no call per
        # possible chunk of a large target.
        for array in [*self._arrays.values(), *([self._records] if self._records is not None else [])]:
            for c in self._stored_chunks(array):
                commit = commits[c % ws]
                if commit.complete or (c // ws) * ct < commit.committed_tokens:
                    continue
                fmt.chunk_file(self.path, array, c).unlink(missing_ok=True)

    def _stored_chunks(self, array: zarr.Array) -> list[int]:
        """Indices of the row chunks of ``array`` that have a file (or object)."""
        folder = as_location(self.path) / array.path / "c"
        if is_remote(self.path):
            prefix = f"{array.path}/c/"
            keys = [k[len(prefix):].split("/")[0] for k in self.path.sizes() if k.startswith(prefix)]
        else:
            keys = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return sorted({int(k) for k in keys if k.isdigit()})

    # ---------------------------------------------------------------- writing

    @property
    def next_chunk(self) -> int:
        """Global index of the chunk that the next appended rows go into."""
        return own_chunk(self.rank, self.world_size, self.committed_tokens // self.chunk_tokens)

    @property
    def next_row(self) -> int:
        """Global row index of the next row ``append`` expects (extraction resumes here)."""
        return self.next_chunk * self.chunk_tokens + self._n_buf

    def append(self, acts: dict[int, np.ndarray], tokens, positions, sequence_ids) -> None:
        """Write rows to the current chunk; every time a chunk fills up, put it in place and commit it."""
        self._check_writable()
        if set(acts) != set(self.layers):
            raise ValueError(f"acts must have exactly the layers {self.layers}, got {sorted(acts)}")
        rows = {fmt.layer_array(i): np.asarray(a) for i, a in acts.items()}
        rows.update(tokens=np.asarray(tokens), positions=np.asarray(positions),
                    sequence_ids=np.asarray(sequence_ids))
        n = len(rows["tokens"])
        for name, a in rows.items():
            want = (n, self.d_model) if name.startswith("layers/") else (n,)
            if a.shape != want:
                raise ValueError(f"{name} has shape {a.shape}, expected {want}")
        if self.committed_tokens + self._n_buf + n > self.capacity:
            raise ValueError(f"appending {n} rows would exceed target_tokens={self.target_tokens} "
                             f"(this writer may hold {self.capacity} rows, has "
                             f"{self.committed_tokens + self._n_buf})")
        rows = {name: np.ascontiguousarray(a, dtype=self._dtypes[name]) for name, a in rows.items()}
        done = 0
        while done < n:
            take = min(n - done, self.chunk_tokens - self._n_buf)
            self._write_rows({name: a[done:done + take] for name, a in rows.items()})
            done += take
            if self._n_buf == self.chunk_tokens:
                self._finish_chunk()
                self._commit(self.committed_tokens + self.chunk_tokens, complete=False)

    def _write_rows(self, rows: dict[str, np.ndarray]) -> None:
        where = f"while writing chunk {self.next_chunk} of {self.path}"
        try:
            if not self._files:
                self._check_free_space(where)
            for name, a in rows.items():
                if name not in self._files:
                    self._files[name] = self._chunk_file(name, self.next_chunk)
                self._files[name].write(a)
        except OSError as e:
            self._fail(e, where)
        self._n_buf += len(rows["tokens"])

    def _chunk_file(self, name: str, c: int) -> AtomicFile | ObjectUpload | ShardWrite:
        if self._arrays[name].shards is not None:
            return ShardWrite(self._arrays[name], c)
        return atomic_file(fmt.chunk_file(self.path, self._arrays[name], c), checksum=self._checksum[name])

    def _check_free_space(self, where: str) -> None:
        """Stop before a chunk that cannot fit: a full disk found mid-write costs the same stop,
        but some filesystems report it late or without an errno. (Object stores: no such limit.)"""
        if is_remote(self.path):
            return
        free = free_bytes(self.path)
        if free < self._chunk_bytes + DISK_MARGIN:
            self._fail(OSError(errno.ENOSPC, f"{free:,} bytes free, a chunk needs "
                                             f"{self._chunk_bytes + DISK_MARGIN:,}"), where)

    def _finish_chunk(self) -> None:
        """Pad the current chunk with the fill value (0) to full size and move its files into place."""
        pad = self.chunk_tokens - self._n_buf
        try:
            for name, f in self._files.items():
                if pad:
                    f.write(np.zeros((pad,) + self._arrays[name].shape[1:], self._dtypes[name]))
            commit_all(list(self._files.values()) + self._record(self.next_chunk, self._files))
        except OSError as e:
            self._fail(e, f"while writing chunk {self.next_chunk} of {self.path}")
        self._files, self._n_buf = {}, 0

    def _record(self, c: int, files: dict) -> list:
        """The record of chunk ``c``'s bound checksums, as a file to commit with its data files
        (none for a store without a records array)."""
        if self._records is None:
            return []
        sums = {}
        for name, f in files.items():
            a = self._arrays[name]
            sums[name] = binding.bind(f.data_crc, binding.header(name, c, a.dtype, a.shards or a.chunks,
                                                                 self._store_dtype))
        record = atomic_file(binding.record_file(self.path, self._records, c), checksum=True)
        record.write(binding.record_row(self._record_names, sums))
        return [record]

    # ---------------------------------------------------------------- repairing

    def rewrite_chunk(self, c: int, acts: dict[int, np.ndarray], tokens, positions, sequence_ids) -> None:
        """Write committed chunk ``c`` of every array again, from its rows (exactly the chunk's
        committed rows, e.g. re-extracted after ``verify_store`` found it damaged). Each file is
        replaced atomically; the commit record does not change."""
        if self._closed or self._failed:
            self._check_writable()
        ct, ws = self.chunk_tokens, self.world_size
        own_start = (c // ws) * ct
        if c < 0 or c % ws != self.rank or own_start >= self.committed_tokens:
            raise ValueError(f"chunk {c} is not a committed chunk of this writer (rank {self.rank} of {ws}, "
                             f"{self.committed_tokens} own rows committed)")
        n = min(ct, self.committed_tokens - own_start)
        if set(acts) != set(self.layers):
            raise ValueError(f"acts must have exactly the layers {self.layers}, got {sorted(acts)}")
        rows = {fmt.layer_array(i): a for i, a in acts.items()}
        rows.update(tokens=tokens, positions=positions, sequence_ids=sequence_ids)
        where = f"while rewriting chunk {c} of {self.path}"
        files: list[AtomicFile | ObjectUpload] = []
        by_name = {}
        try:
            self._check_free_space(where)
            for name, a in rows.items():
                a = np.ascontiguousarray(a, dtype=self._dtypes[name])
                want = (n,) + self._arrays[name].shape[1:]
                if a.shape != want:
                    raise ValueError(f"{name} has shape {a.shape}, chunk {c} needs {want}")
                f = by_name[name] = self._chunk_file(name, c)
                files.append(f)
                f.write(a)
                if n < ct:
                    f.write(np.zeros((ct - n,) + want[1:], a.dtype))
            files += self._record(c, by_name)
            commit_all(files)
        except BaseException as e:
            for f in files:
                try:
                    f.abort()
                except OSError:
                    pass
            if isinstance(e, OSError):
                self._fail(e, where)
            raise

    def _drop_chunk(self) -> None:
        """Delete the current chunk's temporary files: its rows were never committed."""
        for f in self._files.values():
            try:
                f.abort()
            except OSError:
                pass  # already gone, or the disk is failing: resume deletes leftovers anyway
        self._files, self._n_buf = {}, 0

    def _commit(self, committed_tokens: int, complete: bool) -> None:
        try:
            if self.world_size == 1:
                self._group.update_attributes({"committed_tokens": committed_tokens, "complete": complete})
            else:
                write_rank_commit(self.path, RankCommit(self.rank, self.world_size, committed_tokens, complete))
        except OSError as e:
            self._fail(e, f"while committing chunk {self.next_chunk} of {self.path}")
        self.committed_tokens, self.complete = committed_tokens, complete

    def _fail(self, err: OSError, where: str) -> None:
        # Judge a write error without an errno by the free space while the failed chunk's
        # temporary files still take it up.
        full = is_disk_full(err, self.path, self._chunk_bytes)
        self._drop_chunk()
        what = "disk full" if full else f"{err.strerror or err}"
        fix = "free space" if full else "fix that"
        self._failed = (f"{what} {where}; the store is intact at {self.committed_tokens} committed "
                        f"tokens; {fix} and rerun with --resume")
        raise StoreError(self._failed) from err

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"writer for {self.path} is closed")
        if self._failed:
            raise StoreError(self._failed)
        if self.complete:
            raise StoreError(f"store {self.path} is already complete ({self.committed_tokens} tokens); "
                             "pass --overwrite to extract it again")

    # ---------------------------------------------------------------- closing

    def close(self, complete: bool) -> None:
        """Release the lock. ``complete=True`` first writes the final partial chunk and marks the
        store (or this rank) complete; ``complete=False`` drops unflushed rows, keeping the last commit."""
        if self._closed:
            return
        try:
            if complete and not self.complete:
                self._check_writable()
                total = self.committed_tokens + self._n_buf
                if self._n_buf:
                    self._finish_chunk()
                if self.world_size == 1:
                    try:
                        for array in self._arrays.values():
                            if array.shape[0] != total:
                                fmt.resize_rows(array, total)
                    except OSError as e:
                        self._fail(e, f"while completing {self.path}")
                self._commit(total, complete=True)
        finally:
            self._drop_chunk()
            self._closed = True
            self._lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving the block closes with complete=False unless close(complete=True) already ran."""
        self.close(complete=False)

    @staticmethod
    def finalize(path, world_size: int) -> int:
        """Merge the rank records of a multi-process store (see ``commits.finalize_store``)."""
        return finalize_store(as_location(path), world_size)
