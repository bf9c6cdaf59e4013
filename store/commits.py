"""Commit records of a multi-process extraction, and how they merge into one committed prefix.

With ``world_size`` > 1, rank r owns the row chunks c with ``c % world_size == r`` and records
its own progress in ``commits/rank-<r>.json``: how many rows of its own chunks, in order, are
durably written, and whether it has written all of them. The store's ``committed_tokens`` is
the longest prefix of chunks that are all committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zarr

from . import format as fmt
from .errors import StoreError
from .files import read_json, write_json
from .location import Location, as_location, remove_tree, zarr_store
from .lock import StoreLock

COMMITS_DIR = "commits"


def rank_file(root: Location, rank: int) -> Location:
    """Where rank ``rank`` records its progress."""
    return as_location(root) / COMMITS_DIR / f"rank-{rank}.json"


def mark_multi_process(root: Location) -> None:
    """Make ``commits/`` exist before any rank commits: it tells readers and resumes that the store
    is written by several processes. On an object store, where a prefix exists only while objects
    lie under it, an empty marker object holds it."""
    commits = as_location(root) / COMMITS_DIR
    if isinstance(commits, Path):
        commits.mkdir(exist_ok=True)
    elif not commits.is_dir():
        (commits / "started").write_bytes(b"")


@dataclass(frozen=True)
class RankCommit:
    """One rank's durable progress."""

    rank: int
    world_size: int
    committed_tokens: int
    """Rows of this rank's own chunks written, counted in the rank's own chunk order."""
    complete: bool
    """The rank wrote all its rows (its last chunk may then be partial)."""


def write_rank_commit(root: Path, commit: RankCommit) -> None:
    """Record a rank's progress atomically."""
    write_json(rank_file(root, commit.rank), commit.__dict__)


def read_rank_commits(root: Path, world_size: int) -> list[RankCommit]:
    """Every rank's record (a rank that has not committed yet counts as 0 rows, incomplete)."""
    out = []
    for r in range(world_size):
        try:
            doc = read_json(rank_file(root, r))
        except (OSError, ValueError) as e:
            raise StoreError(f"store {root} is damaged: the commit record of rank {r} ({rank_file(root, r)}) "
                             f"is unreadable ({type(e).__name__}); re-extract with --overwrite") from e
        if doc is not None and (not isinstance(doc, dict) or set(doc) != set(RankCommit.__dataclass_fields__)):
            raise StoreError(f"store {root} is damaged: the commit record of rank {r} ({rank_file(root, r)}) "
                             "is malformed; re-extract with --overwrite")
        if doc is None:
            out.append(RankCommit(r, world_size, 0, False))
            continue
        if doc.get("world_size") != world_size or doc.get("rank") != r:
            raise StoreError(
                f"store {root} was written by {doc.get('world_size')} processes, not {world_size}; "
                f"resume it with the same number of processes or pass --overwrite")
        out.append(RankCommit(**doc))
    return out


def recorded_world_size(root: Path) -> int | None:
    """The world size in the store's rank records, or None when it has none."""
    for p in sorted((as_location(root) / COMMITS_DIR).glob("rank-*.json"), key=str):
        doc = read_json(p)
        if isinstance(doc, dict) and isinstance(doc.get("world_size"), int):
            return doc["world_size"]
    return None


def own_chunk(rank: int, world_size: int, k: int) -> int:
    """Global index of the k-th chunk owned by ``rank``."""
    return rank + k * world_size


def merged_commit(commits: list[RankCommit], chunk_tokens: int, root: Path) -> tuple[int, bool]:
    """(committed_tokens, complete) of the store: the contiguous prefix of committed chunks."""
    ws = len(commits)
    total, c = 0, 0
    while True:
        r, k = c % ws, c // ws
        rows = min(max(commits[r].committed_tokens - k * chunk_tokens, 0), chunk_tokens)
        total += rows
        if rows < chunk_tokens:  # a gap, or the final partial chunk
            break
        c += 1
    written = sum(x.committed_tokens for x in commits)
    all_done = all(x.complete for x in commits)
    if all_done and total != written:
        raise StoreError(
            f"the ranks of store {root} finished with non-contiguous chunks ({written} rows written, "
            f"{total} contiguous); re-extract with --overwrite")
    return total, all_done


def progress_while_writing(root: Location, attrs: dict) -> dict:
    """The attributes a reader trusts while several processes write: the group's commit record
    stays at 0 rows until rank 0 merges the rank records at the end, so here the committed
    prefix is merged from the rank records (read-only), and progress shows during the run."""
    if attrs.get("complete"):
        return attrs
    world_size = recorded_world_size(root)
    if world_size is None:
        return attrs
    total, _ = merged_commit(read_rank_commits(root, world_size), attrs["chunk_tokens"], root)
    return {**attrs, "committed_tokens": max(total, attrs["committed_tokens"])}


def finalize_store(path: Location, world_size: int) -> int:
    """Merge the rank records of a multi-process store into its group attributes (rank 0, after
    every rank closed). When all ranks are complete the arrays are cut to the committed rows and
    the records are removed, leaving the same bytes as a single-process run. Returns committed_tokens."""
    stored = fmt.read_store_attrs(path)
    if stored is None:
        raise StoreError(f"no GhostTrack store at {path} to finalize")
    if stored.get("complete"):
        return stored["committed_tokens"]
    with StoreLock.acquire(path / fmt.LOCK_PREFIX, path):
        commits = read_rank_commits(path, world_size)
        total, complete = merged_commit(commits, stored["chunk_tokens"], path)
        group = zarr.open_group(zarr_store(path), mode="r+", zarr_format=3)
        if complete:
            for name in fmt.array_names(stored["layers"]):
                array = group[name]
                fmt.resize_rows(array, total)
        group.update_attributes({"committed_tokens": total, "complete": complete})
        if complete:
            remove_tree(path / COMMITS_DIR)
    return total
