"""Where a run's SAEs are: one SAE folder, or a folder of `layer_<i>/` SAE folders (the --out of
`ghosttrack train`). The one finder of interpret, detect, match and track."""
from __future__ import annotations

import re
from pathlib import Path

from ghosttrack.errors import GhostTrackError

CFG_FILE = "cfg.json"
_LAYER_DIR = re.compile(r"layer_(\d+)")


def layer_sae_dirs(root: str | Path) -> dict[int, Path]:
    """{layer: folder} of the `layer_<i>/` SAE folders under `root`, ascending; a `layer_<i>/` without
    cfg.json is an unfinished SAE and refused (with the fix), never skipped in silence."""
    root = Path(root)
    if not root.is_dir():
        raise GhostTrackError(f"no SAE folder at {root}; pass the --out folder of ghosttrack train")
    found: dict[int, Path] = {}
    for sub in root.iterdir():
        match = _LAYER_DIR.fullmatch(sub.name)
        if not match or not sub.is_dir():
            continue
        if not (sub / CFG_FILE).is_file():
            raise GhostTrackError(f"{sub} has no cfg.json: it is not a finished SAE; finish its training "
                                  f"(ghosttrack train ... --resume) or remove the folder")
        found[int(match.group(1))] = sub
    return dict(sorted(found.items()))


def sae_dirs(path: str | Path) -> list[Path]:
    """An SAE folder (cfg.json + sae_weights.safetensors), or the per-layer ones under a run folder."""
    path = Path(path)
    if (path / CFG_FILE).is_file():
        return [path]
    found = list(layer_sae_dirs(path).values())
    if not found:
        raise GhostTrackError(f"{path} holds no SAE (cfg.json + sae_weights.safetensors) and no layer_<i>/ SAE "
                              "folders; pass the folder ghosttrack train wrote")
    return found
