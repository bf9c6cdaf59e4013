"""The checks `ghosttrack interpret` makes before any work, and where an SAE's layer and row rule come from."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ghosttrack.errors import GhostTrackError


def check_inputs(sae, store, layer: int) -> None:
    """The errors a user can fix before any work starts."""
    if layer not in store.layers:
        have = ", ".join(str(x) for x in store.layers)
        raise GhostTrackError(f"layer {layer} is not in store {store.path} (it has layers {have}); "
                              f"extract it with ghosttrack extract --layers {layer}, or pass --layer")
    if sae.cfg.d_in != store.d_model:
        raise GhostTrackError(f"the SAE expects d_in={sae.cfg.d_in} but store {store.path} holds d_model="
                              f"{store.d_model} rows; pass the SAE trained on this store's model and layer")
    if store.n_tokens == 0:
        raise GhostTrackError(f"store {store.path} has no committed rows; extract (or --resume) it first")
    hook_name = str((getattr(sae, "metadata", {}) or {}).get("hook_name") or "")
    other = {"resid_post": "resid_pre", "resid_pre": "resid_post"}.get(store.hook)
    if other and other in hook_name:
        warnings.warn(f"the SAE was trained on {hook_name} but store {store.path} holds {store.hook} rows",
                      stacklevel=3)
    from ghosttrack.store.errors import StoreError

    try:
        tokens = np.asarray(store.tokens(0, min(store.n_tokens, store.chunk_tokens)))
    except StoreError:
        raise  # a damaged chunk: the store's own one-line error names it and the repair
    except Exception as exc:  # noqa: BLE001 - any other failure means there are no usable ids
        raise GhostTrackError(f"store {store.path} has no readable token ids, so contexts cannot be rebuilt; "
                              "re-extract it with ghosttrack extract") from exc
    if len(tokens) > 1 and not tokens.any():
        # Never-written token chunks read as zarr's fill value: a store saved without its ids.
        raise GhostTrackError(f"store {store.path} has no token ids (they read as all zero), so contexts "
                              "cannot be rebuilt; re-extract it with ghosttrack extract")


def open_store(path, access=None):
    """The store for interpret (``stores.open_store_for``: finished, checked unless ``access`` says
    otherwise), with a store that lacks its token-id array named as such."""
    from ghosttrack.store.errors import StoreError
    from ghosttrack.stores import StoreAccess, open_store_for

    try:
        return open_store_for("interpret", path, access or StoreAccess())
    except StoreError:
        if (Path(path) / "zarr.json").is_file() and not (Path(path) / "tokens").exists():
            raise GhostTrackError(f"store {path} has no token ids, so contexts cannot be rebuilt; "
                                  "re-extract it with ghosttrack extract") from None
        raise


def sae_layer(sae) -> int | None:
    """The layer an SAE was trained on, from its metadata (hook_layer, or the hook name's block index)."""
    meta = getattr(sae, "metadata", {}) or {}
    if meta.get("hook_layer") is not None:
        return int(meta["hook_layer"])
    match = re.search(r"(\d+)", str(meta.get("hook_name", "")))
    return int(match.group(1)) if match else None


def sae_skip_positions(sae) -> tuple[int, ...]:
    """The positions the SAE was trained without (saved with it by the trainer); () when not recorded."""
    from ghosttrack.store.rows import parse_positions

    meta = getattr(sae, "metadata", {}) or {}
    trainer = (meta.get("ghosttrack") or {}).get("trainer_config") or {}
    return parse_positions(trainer.get("skip_positions"))
