"""How the commands that read activations (train, interpret, match --store) open a store.

By default they read only a finished store and check every chunk they read against its bound
checksum (``store/binding.py``). Both are settings of ``StoreAccess``, one field each: the config
dataclasses of those commands (TrainRun, InterpretConfig, MatchRun) derive from it, so every command's
options (--trust-store, --allow-partial-store) are generated from the same two fields. The store
modules are imported when a store is opened, so that the configs stay cheap to import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ghosttrack.errors import GhostTrackError

if TYPE_CHECKING:
    from ghosttrack.store.reader import ActivationStore


@dataclass
class StoreAccess:
    """How a command reads its activation store (shared by every command that reads activations)."""

    trust_store: bool = False
    """Read chunks without checking their checksums (a store you vouch for; also reads stores written
    before bound checksums without ghosttrack verify --upgrade)."""
    allow_partial_store: bool = False
    """Read the committed rows of a store that is still being written or whose extraction stopped early."""

    def __post_init__(self) -> None:
        from ghosttrack.config_fields import check_fields

        check_fields(self)


def open_store_for(command: str, path: str | Path, access: StoreAccess = StoreAccess()) -> ActivationStore:
    """The store at ``path`` for ``command``: refused (one line, with the fix) while it is being written
    or when its extraction stopped early, unless ``access.allow_partial_store``. ``access``: a StoreAccess,
    or a command's config derived from it."""
    from ghosttrack.store.format import LOCK_PREFIX
    from ghosttrack.store.location import as_location
    from ghosttrack.store.lock import live_holder
    from ghosttrack.store.reader import ActivationStore

    store = ActivationStore.open(path, trust=access.trust_store)
    if store.complete or access.allow_partial_store:
        return store
    target = store.attrs.get("target_tokens", "?")
    target = f"{target:,}" if isinstance(target, int) else target
    allow = f"or pass --allow-partial-store to {command} on its committed rows"
    for lock in sorted(as_location(path).glob(f"{LOCK_PREFIX}*"), key=str):
        holder = live_holder(lock)  # asks the OS lock: a killed writer's record or a reused pid is not alive
        if holder is None:
            continue
        raise GhostTrackError(f"store {path} is still being written (pid {holder.get('pid')}, {store.n_tokens:,} of "
                              f"{target} tokens so far); wait for ghosttrack extract to finish, {allow}")
    raise GhostTrackError(f"store {path} is incomplete ({store.n_tokens:,} of {target} tokens committed; its "
                          f"extraction was interrupted); finish it with ghosttrack extract ... --resume, {allow}")
