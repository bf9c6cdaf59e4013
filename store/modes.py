"""What ``create``, ``resume`` and ``overwrite`` do with whatever is already at the store's path.

Each check runs before anything is changed. Overwriting a store first sets its commit record to
"nothing committed" and only then deletes files, so a run killed while it deletes leaves a store
that no reader calls complete and that ``--resume`` starts over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from . import format as fmt
from .commits import COMMITS_DIR
from .errors import StoreError
from .location import remove_tree, zarr_store

MODES = ("create", "resume", "overwrite")
COMMIT_KEYS = ("committed_tokens", "complete")


def describe(attrs: dict[str, Any] | None) -> str:
    if attrs is None:
        return "damaged"
    return f"model {attrs.get('model')}, layers {attrs.get('layers')}"


def check_identity(path: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to continue a store written with other settings (the format version may differ:
    a store of an older format is continued in its own format)."""
    have = fmt.identity_of(stored)
    keys = sorted((set(have) | set(wanted)) - {"format_version"})
    diffs = [f"{k}: stored {have.get(k)!r} vs requested {wanted.get(k)!r}" for k in keys if have.get(k) != wanted.get(k)]
    if diffs:
        raise StoreError(f"cannot resume store {path}: it was written with different settings "
                         f"({'; '.join(diffs)}); pass --overwrite to replace it or choose another --out")


def check_commit_record(path: Path, stored: dict[str, Any]) -> None:
    """A store without its commit record cannot say which rows to trust."""
    missing = [k for k in COMMIT_KEYS if k not in stored]
    bad = not missing and (not isinstance(stored["committed_tokens"], int) or stored["committed_tokens"] < 0
                           or not isinstance(stored["complete"], bool))
    if missing or bad:
        what = f"lacks {missing}" if missing else f"is invalid ({ {k: stored[k] for k in COMMIT_KEYS} })"
        raise StoreError(f"store {path} is damaged: its commit record {what}; re-extract with --overwrite")


def prepare(path: Path, identity: dict[str, Any], mode: str) -> tuple[dict[str, Any] | None, bool]:
    """Check ``mode`` against what is at ``path`` without changing anything.

    Returns (the stored attributes to resume from, or None to start afresh; whether the folder
    holds a store, possibly damaged, that starting afresh replaces).
    """
    occupied = bool(fmt.content_entries(path))
    try:
        stored = fmt.read_store_attrs(path)
        damaged = None
    except StoreError as e:  # a damaged zarr.json: only --overwrite may replace it
        stored, damaged = None, e
    if damaged is not None and mode != "overwrite":
        raise damaged
    if occupied and stored is None and damaged is None:
        raise StoreError(f"{path} is not empty and is not a GhostTrack store (no zarr.json with "
                         "format_version); refusing to touch it, choose another --out")
    if mode == "create" and occupied:
        raise StoreError(f"store already exists at {path} ({describe(stored)}); pass --resume to "
                         "continue it or --overwrite to replace it")
    if mode == "resume" and stored is not None:
        check_commit_record(path, stored)
        check_identity(path, stored, identity)
        if stored["committed_tokens"] > 0 or stored["complete"] or (path / COMMITS_DIR).is_dir():
            return stored, True
        # Nothing was ever committed (e.g. creation itself was cut short): start afresh.
    return None, occupied


def mark_uncommitted(path: Path) -> None:
    """Set the commit record of the store at ``path`` to nothing committed, and drop the rank
    records, before any of its files are deleted."""
    try:
        attrs = fmt.read_store_attrs(path)
    except StoreError:
        attrs = None  # an unreadable zarr.json already makes every reader refuse the store
    if attrs is not None and (attrs.get("committed_tokens") or attrs.get("complete")):
        group = zarr.open_group(zarr_store(path), mode="r+", zarr_format=3)
        group.update_attributes({"committed_tokens": 0, "complete": False})
    remove_tree(path / COMMITS_DIR)


def clear(path: Path) -> None:
    """Delete the store's content (not its lock files): the commit record goes last."""
    mark_uncommitted(path)
    entries = fmt.content_entries(path)
    for entry in sorted(entries, key=lambda p: p.name == "zarr.json"):
        remove_tree(entry) if entry.is_dir() else entry.unlink()
