"""The per-layer SAEs of a run (`DIR/layer_<i>/`), checked from their cfg.json before any slow work."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.sae.files import read_cfg
from ghosttrack.sae.folders import layer_sae_dirs



@dataclass
class LayerSAEs:
    """Where each layer's SAE lives and what its cfg.json says (weights are loaded on demand)."""

    root: Path
    dirs: dict[int, Path]
    """Layer -> SAE folder, ascending by layer."""
    cfgs: dict[int, dict[str, Any]]
    """Layer -> its cfg.json."""

    @property
    def layers(self) -> list[int]:
        return sorted(self.dirs)

    @property
    def d_in(self) -> int:
        return int(self.cfgs[self.layers[0]]["d_in"])

    def d_sae(self, layer: int) -> int:
        return int(self.cfgs[layer]["d_sae"])

    def pairs(self) -> list[tuple[int, int]]:
        """Consecutive (i, j) pairs of the trained layers, i < j."""
        layers = self.layers
        return list(zip(layers[:-1], layers[1:]))

    def ghosttrack_meta(self, layer: int) -> dict[str, Any]:
        """The SAE's own "ghosttrack" section (trainer config, skipped-row rule); {} for foreign SAEs."""
        return dict(self.cfgs[layer].get("ghosttrack") or {})

    def load(self, layer: int, device: str | torch.device = "cpu"):
        from ghosttrack.sae import load_sae

        sae = load_sae(self.dirs[layer], device)
        sae.requires_grad_(False)
        return sae


def find_layer_saes(path: str | Path, *, min_layers: int = 2) -> LayerSAEs:
    """The `layer_<i>/` SAE folders under `path`; GhostTrackError (with the fix) when they cannot be matched."""
    root = Path(path)
    dirs: dict[int, Path] = {}
    cfgs: dict[int, dict[str, Any]] = {}
    for layer, sub in layer_sae_dirs(root).items():
        cfg = read_cfg(sub)  # one line naming the file when it is missing or malformed
        dirs[layer] = sub
        cfgs[layer] = cfg
    if len(dirs) < min_layers:
        found = ", ".join(f"layer_{i}" for i in sorted(dirs)) or "none"
        raise GhostTrackError(f"{root} holds {len(dirs)} layer SAE folder(s) ({found}); tracking needs at least "
                              f"{min_layers}: train more layers with ghosttrack train --layers ... --out {root}")
    widths = {layer: int(cfg["d_in"]) for layer, cfg in cfgs.items()}
    if len(set(widths.values())) > 1:
        desc = ", ".join(f"layer {k}: {v}" for k, v in sorted(widths.items()))
        raise GhostTrackError(f"the SAEs in {root} expect different d_model ({desc}); they must come from one "
                              f"model: pass a folder whose SAEs were all trained on the same store")
    return LayerSAEs(root, dict(sorted(dirs.items())), cfgs)
