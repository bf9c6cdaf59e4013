"""How the commands that read activations (train, interpret, match --store) open a store.

By default they read only a finished store and check every chunk they read against its bound
checksum (``store/binding.py``). Both are settings of ``run_config.StoreAccess``, one field each, so every
command spells the opt-outs the same way (--trust-store, --allow-partial-store).
"""
from __future__ import annotations

from pathlib import Path

from ghosttrack.errors import GhostTrackError
from ghosttrack.run_config import StoreAccess
from ghosttrack.store.format import LOCK_PREFIX
from ghosttrack.store.location import as_location
from ghosttrack.store.lock import live_holder
from ghosttrack.store.reader import ActivationStore


def open_store_for(command: str, path: str | Path, access: StoreAccess = StoreAccess()) -> ActivationStore:
    """The store at ``path`` for ``command``: refused (one line, with the fix) while it is being written
    or when its extraction stopped early, unless ``access.allow_partial_store``."""
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
