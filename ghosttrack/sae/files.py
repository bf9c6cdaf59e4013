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
from ghosttrack.sae.config import SAEConfig, architecture, sae_config_from_dict
from ghosttrack.sae.base import ARCHITECTURES

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
# SAELens >= 6 reads "metadata.sae_lens_version" to pick its config format; this is that format.
SAELENS_FORMAT_VERSION = "6.0.0"
SHARED_PARAMETERS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def save_sae(sae, directory: str | Path, metadata: dict[str, Any]) -> Path:
    """Write `sae` (a SparseAutoencoder, already in raw units) as sae_weights.safetensors + cfg.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = architecture(sae.cfg.architecture)(sae.cfg)
    names = (*SHARED_PARAMETERS, *arch.extra_parameters())
    tensors = {name: getattr(sae, name).detach().float().cpu().contiguous() for name in names}
    tmp = _tmp(directory / WEIGHTS_FILE)
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / WEIGHTS_FILE)

    meta = {k: v for k, v in metadata.items() if k != "ghosttrack"}
    cfg = {
        "architecture": arch.saelens_name,
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
        **arch.saelens_fields(),
    }
    write_json(directory / CFG_FILE, cfg)
    return directory


def read_cfg(directory: str | Path) -> dict[str, Any]:
    """An SAE directory's cfg.json as a dict; GhostTrackError naming the file when it is missing,
    unreadable, not JSON, not an object, or lacks a positive integer d_in / d_sae."""
    f = Path(directory) / CFG_FILE
    fix = "retrain the SAE (ghosttrack train ... --overwrite) or pass the folder ghosttrack train wrote"
    try:
        cfg = json.loads(f.read_text())
    except FileNotFoundError:
        raise GhostTrackError(f"{f} is missing: {directory} is not a finished SAE; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GhostTrackError(f"{f} cannot be read ({type(exc).__name__}: {exc}); {fix}") from exc
    except ValueError as exc:
        raise GhostTrackError(f"{f} is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(cfg, dict):
        raise GhostTrackError(f"{f} is malformed (a JSON {type(cfg).__name__}, not an object); {fix}")
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if type(value) is not int or value < 1:
            raise GhostTrackError(f"{f} is malformed: {key} is {value!r}, not a positive integer; {fix}")
    return cfg


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    f = directory / WEIGHTS_FILE
    fix = "retrain the SAE (ghosttrack train ... --overwrite) or copy the file again"
    if not f.is_file():
        raise GhostTrackError(f"{f} is missing: {directory} has no SAE weights; {fix}")
    try:
        return load_file(str(f))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged header
        raise GhostTrackError(f"{f} is damaged or truncated ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); {fix}") from exc


def _check_shapes(directory: Path, cfg: SAEConfig, tensors: dict[str, torch.Tensor], names: tuple) -> None:
    """Every parameter has the shape cfg.json's d_in / d_sae give it and a float dtype."""
    d_in, d_sae = cfg.d_in, cfg.d_sae
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name in names:
        shape = tuple(tensors[name].shape)
        if name in want and shape != want[name]:
            raise GhostTrackError(f"{directory / WEIGHTS_FILE} disagrees with {directory / CFG_FILE}: {name} has "
                                  f"shape {shape}, but d_in={d_in}, d_sae={d_sae} give {want[name]}; the two files "
                                  "come from different SAEs: retrain or copy both again")
        if not tensors[name].is_floating_point():
            raise GhostTrackError(f"{directory / WEIGHTS_FILE}: {name} holds {tensors[name].dtype}, not floats; "
                                  "the file is damaged or from another tool")


def read_sae(directory: str | Path) -> tuple[SAEConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """(config, metadata, parameters) of an SAE directory written by `save_sae`, or of a plain
    SAELens directory of a registered architecture (standard / jumprelu / topk). Every file is
    checked: a missing, truncated or malformed file, or weights whose shapes disagree with cfg.json,
    is a GhostTrackError naming the file."""
    directory = Path(directory)
    cfg = read_cfg(directory)
    tensors = _read_weights(directory)
    ours = cfg.get("ghosttrack", {})
    if not isinstance(ours, dict):
        raise GhostTrackError(f"{directory / CFG_FILE} is malformed: its ghosttrack section is not an object")
    try:
        sae_cfg = _sae_config(directory, cfg, ours)
    except (KeyError, TypeError, ValueError) as exc:
        raise GhostTrackError(f"{directory / CFG_FILE} is malformed ({type(exc).__name__}: {exc}); "
                              "retrain the SAE or pass the folder ghosttrack train wrote") from exc
    if (sae_cfg.d_in, sae_cfg.d_sae) != (cfg["d_in"], cfg["d_sae"]):
        raise GhostTrackError(f"{directory / CFG_FILE} contradicts itself: d_in={cfg['d_in']}, d_sae={cfg['d_sae']} "
                              f"but its ghosttrack section says {sae_cfg.d_in}, {sae_cfg.d_sae}; retrain the SAE")
    names = (*SHARED_PARAMETERS, *architecture(sae_cfg.architecture)(sae_cfg).extra_parameters())
    missing = [name for name in names if name not in tensors]
    if missing:
        raise GhostTrackError(f"{directory / WEIGHTS_FILE} lacks {', '.join(missing)} for a "
                              f"{sae_cfg.architecture} SAE; the file is damaged or from another tool")
    _check_shapes(directory, sae_cfg, tensors, names)
    if "sae_config" not in ours and cfg.get("apply_b_dec_to_input", False):
        # Fold SAELens's "x - b_dec" into b_enc, so that our pre = x @ W_enc + b_enc matches theirs.
        tensors["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
    metadata = cfg.get("metadata", {})
    if not isinstance(metadata, dict):
        raise GhostTrackError(f"{directory / CFG_FILE} is malformed: its metadata is not an object")
    return sae_cfg, {**metadata, "ghosttrack": ours}, {name: tensors[name] for name in names}


def _sae_config(directory: Path, cfg: dict, ours: dict) -> SAEConfig:
    if "sae_config" in ours:
        sae_cfg = sae_config_from_dict(ours["sae_config"])
    else:
        by_saelens_name = {arch.saelens_name: arch for arch in ARCHITECTURES.values()}
        arch = by_saelens_name.get(cfg.get("architecture", "standard"))
        if arch is None:
            raise GhostTrackError(f"{directory}: SAELens architecture {cfg.get('architecture')!r} is not "
                                  f"supported; ghosttrack reads {', '.join(by_saelens_name)}")
        sae_cfg = sae_config_from_dict({"architecture": arch.name, "d_in": cfg["d_in"], "d_sae": cfg["d_sae"],
                                        **arch.options_from_saelens(cfg)})
    return sae_cfg


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
