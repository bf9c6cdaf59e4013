"""An SAE and the rows it is applied to must agree: same layer, same hook point, same row rule.

An SAE trained on layer 15 encodes layer-6 rows without complaint and gives plausible, wrong
features; interpretation and evaluation therefore refuse a layer or hook that differs from the
one in the SAE's cfg.json unless the user says the mismatch is wanted. Paths recorded in cfg.json
(the model, the store) may be relative to where training ran: they are resolved from any folder.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ghosttrack.errors import GhostTrackError

ALLOW_FLAG = "--allow-layer-mismatch"


def sae_hook_point(meta: dict[str, Any]) -> tuple[int | None, str | None]:
    """(layer, hook point) recorded in an SAE's metadata: hook_layer and hook_name (blocks.6.hook_resid_post)."""
    name = str(meta.get("hook_name") or "")
    point = next((p for p in ("resid_post", "resid_pre") if p in name), None)
    layer = meta.get("hook_layer")
    if layer is None:
        match = re.search(r"(\d+)", name)
        layer = match.group(1) if match else None
    return (int(layer) if layer is not None else None), point


def check_layer_agreement(meta: dict[str, Any], layer: int | None, hook: str | None, *, sae: str,
                          allow_mismatch: bool = False) -> None:
    """Refuse rows of another layer or hook point than the SAE was trained on (unless allowed)."""
    sae_layer, sae_point = sae_hook_point(meta)
    wrong = []
    if layer is not None and sae_layer is not None and layer != sae_layer:
        wrong.append(f"layer {layer}")
    if hook is not None and sae_point is not None and hook != sae_point:
        wrong.append(f"hook {hook}")
    if wrong and not allow_mismatch:
        trained = meta.get("hook_name") or f"layer {sae_layer}"
        raise GhostTrackError(f"the SAE {sae} was trained on {trained} (layer {sae_layer}, {sae_point}) but "
                              f"{' and '.join(wrong)} was asked for; pass the SAE trained there, or "
                              f"{ALLOW_FLAG} if the mismatch is wanted")


def resolve_recorded_path(value: str | None, sae_dir: str | Path) -> str | None:
    """A path from cfg.json, usable from any folder: kept when it exists from here (or is absolute),
    else taken relative to the SAE's folder or its parents (where training ran, for the usual
    OUT/layer_<i> layout) when it exists there; otherwise returned unchanged (a hub id)."""
    if not value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return str(path)
    for base in [Path(sae_dir).resolve(), *Path(sae_dir).resolve().parents][:4]:
        if (base / path).exists():
            return str(base / path)
    return value


def trained_norm_rule(meta: dict[str, Any]) -> tuple[float | None, float] | None:
    """(max_norm_ratio or None for "no limit", median_norm) the SAE was trained with (the trainer saves
    both with it, the median taken over its training chunks); None when the SAE does not record them."""
    skipped = (meta.get("ghosttrack") or {}).get("skipped") or {}
    if "max_norm_ratio" not in skipped or not skipped.get("median_norm"):
        return None
    ratio = skipped["max_norm_ratio"]
    return (float(ratio) if ratio else None), float(skipped["median_norm"])
