"""Files of a trained SAE and of a training run, each written atomically (tmp + rename).

An SAE directory uses SAELens's layout, so `sae_lens.SAE.load_from_disk(dir)` reads it:

    sae_weights.safetensors   W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in), b_dec, threshold (jumprelu)
    cfg.json                  d_in, d_sae, architecture ("standard" | "jumprelu" | "topk"), dtype, device,
                              apply_b_dec_to_input=false, normalize_activations="none", k (topk),
                              metadata {hook_name, hook_layer, model_name, ...}, and our own
                              "ghosttrack" section (the exact architecture config, input scale folded, store)

The weights are saved in raw activation units (the training input scale folded in, see
`SparseAutoencoder.folded`), so the saved SAE works on activations as the model gives them.
A training run adds `trainer_state.pt` (everything exact resume needs) and `history.json`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ghosttrack.errors import GhostTrackError
from ghosttrack.sae.module import SparseAutoencoder
from ghosttrack.sae.config import sae_config_from_dict

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
# SAELens >= 6 reads "metadata.sae_lens_version" to pick its config format; this is that format.
SAELENS_FORMAT_VERSION = "6.0.0"
SAELENS_ARCH = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}
OUR_ARCH = {v: k for k, v in SAELENS_ARCH.items()}


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def save_sae(sae: SparseAutoencoder, directory: str | Path, metadata: dict[str, Any]) -> Path:
    """Write `sae` (already in raw units) as sae_weights.safetensors + cfg.json in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(sae, name).detach().float().cpu().contiguous()
               for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.cfg.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().float().cpu().contiguous()
    tmp = _tmp(directory / WEIGHTS_FILE)
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / WEIGHTS_FILE)

    meta = {k: v for k, v in metadata.items() if k != "ghosttrack"}
    cfg = {
        "architecture": SAELENS_ARCH[sae.cfg.architecture],
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,  # pre = x @ W_enc + b_enc: b_dec is not subtracted first
        "normalize_activations": "none",  # the input scale is folded into the weights
        "reshape_activations": "none",
        # Older readers (SAELens < 6, dashboards) look for these at the top level.
        "hook_name": meta.get("hook_name"),
        "hook_layer": meta.get("hook_layer"),
        "model_name": meta.get("model_name"),
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None, **meta},
        "ghosttrack": {"sae_config": sae.cfg.to_dict(), **metadata.get("ghosttrack", {})},
    }
    if sae.cfg.architecture == "topk":
        cfg["k"] = sae.cfg.k
        cfg["rescale_acts_by_decoder_norm"] = False
    write_json(directory / CFG_FILE, cfg)
    return directory


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Read an SAE directory written by `save_sae` (or a plain SAELens standard/jumprelu/topk one)."""
    directory = Path(directory)
    try:
        cfg = json.loads((directory / CFG_FILE).read_text())
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError) as exc:
        raise GhostTrackError(f"{directory} is not a readable SAE directory ({exc}); "
                              f"it needs {CFG_FILE} and {WEIGHTS_FILE}") from exc
    ours = cfg.get("ghosttrack", {})
    if "sae_config" in ours:
        sae_cfg = sae_config_from_dict(ours["sae_config"])
    else:
        arch = OUR_ARCH.get(cfg.get("architecture", "standard"))
        if arch is None:
            raise GhostTrackError(f"{directory}: SAELens architecture {cfg.get('architecture')!r} is not "
                                  f"supported; ghosttrack reads {', '.join(OUR_ARCH)}")
        extra = {"k": cfg["k"]} if arch == "topk" else {}
        sae_cfg = sae_config_from_dict({"architecture": arch, "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], **extra})
        if cfg.get("apply_b_dec_to_input", False):
            # Fold "x - b_dec" into b_enc, so that our pre = x @ W_enc + b_enc matches theirs.
            tensors["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
    metadata = {**cfg.get("metadata", {}), "ghosttrack": ours}
    sae = SparseAutoencoder(sae_cfg, metadata, init=False)
    state = {name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae_cfg.architecture == "jumprelu":
        state["threshold"] = tensors["threshold"]
    sae.load_state_dict(state)
    return sae.to(device)


def save_trainer_state(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a half-written state."""
    path = Path(path)
    tmp = _tmp(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise GhostTrackError(f"cannot read the training state {path} ({exc}); "
                              f"restart that layer without --resume") from exc
