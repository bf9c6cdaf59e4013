"""The one entry `ghosttrack train` and `ghosttrack run` share: train an SAE per layer of a store.

`train_layers` keeps going when a layer fails and returns, per layer, either the run's
summary or the exception; the caller reports each failure and exits non-zero.
"""
from __future__ import annotations

import json
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from ghosttrack.sae.files import CFG_FILE, HISTORY_FILE, STATE_FILE, WEIGHTS_FILE, load_trainer_state
from ghosttrack.run_config import CONFIG_FILENAME, layer_dir, parse_layers, save_resolved_config
from ghosttrack.config_fields import from_options, values_for
from ghosttrack.errors import GhostTrackError
from ghosttrack.sae.config import SAEConfig, architecture, make_sae_config
from ghosttrack.store.errors import StoreError
from ghosttrack.store.reader import ActivationStore
from ghosttrack.stores import StoreAccess, open_store_for
from ghosttrack.train.trainer import FINAL_DIR, SAETrainer, make_accelerator
from ghosttrack.train.config import SAEShape, TrainerConfig

RUN_FILES = (STATE_FILE, HISTORY_FILE, WEIGHTS_FILE, CFG_FILE, CONFIG_FILENAME)
# Options that say how to treat existing files, not what is trained: left out of the saved config.
NOT_SAVED = ("resume", "overwrite", "config", "trust_store", "allow_partial_store")


def open_training_store(path: str | Path, access: StoreAccess = StoreAccess()) -> ActivationStore:
    """The store, refused (with the fix) while it is being written or when its extraction stopped early."""
    return open_store_for("train", path, access)


def _prepare_dir(directory: Path, *, resume: bool, overwrite: bool) -> dict | None:
    """The saved state to resume from (or None), after refusing to clobber an existing run."""
    if resume and overwrite:
        raise GhostTrackError("--resume and --overwrite exclude each other; pass one")
    existing = [name for name in RUN_FILES if (directory / name).exists()]
    if existing and not (resume or overwrite):
        raise GhostTrackError(f"{directory} already holds a training run ({', '.join(existing)}); pass --resume "
                              f"to continue it or --overwrite to start over")
    if overwrite:
        for d in (directory, directory / FINAL_DIR):
            for name in RUN_FILES:
                (d / name).unlink(missing_ok=True)
        if (directory / FINAL_DIR).is_dir() and not any((directory / FINAL_DIR).iterdir()):
            shutil.rmtree(directory / FINAL_DIR)
    if resume and (directory / STATE_FILE).exists():
        return load_trainer_state(directory / STATE_FILE)
    return None


def sae_metadata(store: ActivationStore, layer: int) -> dict[str, Any]:
    """SAELens metadata of an SAE trained on `layer` of `store`."""
    return {"model_name": store.model, "hook_name": f"blocks.{layer}.hook_{store.hook}", "hook_layer": layer,
            "hook_head_index": None, "context_size": store.context_length, "prepend_bos": False,
            "dataset_path": json.dumps(store.attrs.get("corpus"), sort_keys=True),
            # Absolute: evaluate finds the store (and skips its text) from any folder.
            "ghosttrack": {"store": str(store.path) if store.remote else str(Path(store.path).resolve()),
                           "layer": layer}}


def train_sae_for_layer(store: ActivationStore, layer: int, sae_cfg: SAEConfig, cfg: TrainerConfig,
                        out: str | Path, *, resume: bool = False, overwrite: bool = False,
                        options: dict[str, Any] | None = None, accelerator=None,
                        progress: bool = True) -> dict[str, Any]:
    """Train one SAE into `<out>/layer_<layer>/`; returns its summary (see SAETrainer)."""
    directory = layer_dir(out, layer)
    store.require_layer(layer)
    saved = _prepare_dir(directory, resume=resume, overwrite=overwrite)
    trainer = SAETrainer(store, layer, sae_cfg, cfg, directory, metadata=sae_metadata(store, layer),
                         accelerator=accelerator, progress=progress)
    clean = {k: v for k, v in (options or {}).items() if k not in NOT_SAVED}
    created = not directory.exists()
    if trainer.main:
        directory.mkdir(parents=True, exist_ok=True)
        if options is not None:
            save_resolved_config(directory, "train", clean)
    try:
        summary = trainer.run(saved)
    except Exception:  # not KeyboardInterrupt: an interrupted run keeps its files to resume from
        if trainer.main:
            _remove_unfinished(directory, created)
        raise
    if trainer.main and options is not None:  # final/ gets its config only beside its weights
        save_resolved_config(directory / FINAL_DIR, "train", clean)
    return summary


def _remove_unfinished(directory: Path, created: bool) -> None:
    """After a failed run with nothing to resume from (no checkpoint, no saved SAE), remove what it wrote
    (its config.json, history.json) so that nothing looks like a finished run or a resumable one."""
    if any((directory / name).exists() for name in (STATE_FILE, WEIGHTS_FILE, CFG_FILE)):
        return  # a checkpoint or a best SAE: --resume continues from it
    for name in (CONFIG_FILENAME, HISTORY_FILE):
        (directory / name).unlink(missing_ok=True)
    if created and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def configs_from_options(options: dict[str, Any], d_model: int) -> tuple[SAEConfig, TrainerConfig]:
    """The SAE and trainer configs that `train`'s options describe for a layer of width d_model
    (option names as the command line spells them; None or absent: the dataclass default)."""
    shape = from_options(SAEShape, options)
    d_sae = shape.d_sae(d_model)
    arch = architecture(shape.arch)
    sae_cfg = make_sae_config(arch.name, d_model, d_sae, **values_for(arch.config_class, options,
                                                                        skip=("d_in", "d_sae")))
    return sae_cfg, TrainerConfig(**values_for(TrainerConfig, options))


def train_layers(store_path: str | Path, layers: str | list[int], out: str | Path,
                 options: dict[str, Any], *, progress: bool = True) -> dict[int, dict[str, Any] | Exception]:
    """Train one SAE per layer (`layers`: a list, or a spec such as "all", "0-11", "0,6,11").

    Returns {layer: summary dict, or the exception that stopped that layer}. A failing layer is
    reported on stderr and does not stop the others; Ctrl-C does (after saving a resumable state).
    """
    store = open_training_store(store_path, StoreAccess(**values_for(StoreAccess, options)))
    wanted = parse_layers(layers)
    wanted = store.layers if wanted == "all" else wanted
    try:
        sae_cfg, cfg = configs_from_options(options, store.d_model)
    except ValueError as exc:
        raise GhostTrackError(f"bad training option: {exc}") from exc
    results: dict[int, dict[str, Any] | Exception] = {}
    for layer in wanted:
        # A fresh Accelerator per layer, emptied after it: one reused across layers would keep every
        # layer's SAE and Adam state referenced (memory growing with the layers).
        accelerator = make_accelerator(cfg)
        try:
            results[layer] = train_sae_for_layer(
                store, layer, sae_cfg, cfg, out, resume=bool(options.get("resume")),
                overwrite=bool(options.get("overwrite")), options={**options, "layers": str(layer)},
                accelerator=accelerator, progress=progress)
        except (GhostTrackError, StoreError) as exc:
            results[layer] = exc
            print(f"layer {layer}: error: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - one broken layer must not hide the others' results
            results[layer] = exc
            print(f"layer {layer}: unexpected error:\n{traceback.format_exc()}", file=sys.stderr)
        finally:
            accelerator.free_memory()  # drops its references and collects the trainer's cycles
            del accelerator
        if isinstance(results.get(layer), Exception):
            results[layer].__traceback__ = None  # its frames would hold the layer's trainer
    return results
