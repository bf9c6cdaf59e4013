"""Extraction from start to end: check everything that needs no weights, load the model, extract (or
repair), save the resolved config. `ghosttrack extract` and `ghosttrack run` call it."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from ghosttrack.config_fields import from_options
from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.config import NOT_SAVED, ExtractConfig
from ghosttrack.interrupts import INTERRUPTED_EXIT
from ghosttrack.run_config import parse_layers, save_resolved_config


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_extraction(config: ExtractConfig | dict, *, command: str = "extract") -> Path:
    """Check everything that needs no model weights, then load the model and extract (or repair).

    `config`: an ExtractConfig, or the options of `ghosttrack extract` (checked into one)."""
    from accelerate import Accelerator

    from ghosttrack.extract import preflight
    from ghosttrack.extract.extractor import STORE_DTYPE_NAMES, ExtractionPlan, HiddenStateExtractor
    from ghosttrack.extract.models import load_model
    from ghosttrack.precision import resolve_dtype
    from ghosttrack.store.location import as_location

    cfg = config if isinstance(config, ExtractConfig) else from_options(ExtractConfig, config)
    out = as_location(cfg.out)  # a bad URL, or a missing s3fs/gcsfs, stops here
    # Cheap checks first: nothing up to the model load reads weights or writes a file.
    preflight.check_device(cfg.device)
    shape = preflight.read_model_shape(cfg.model, gguf=cfg.gguf, revision=cfg.revision)
    layers = parse_layers(cfg.layers, shape.n_layers)
    device = None if cfg.device in (None, "auto") else cfg.device
    accelerator = Accelerator(cpu=device == "cpu")
    device = device or accelerator.device
    dtype, dtype_warning = resolve_dtype(cfg.dtype, device)
    plan = ExtractionPlan(layers=layers, target_tokens=cfg.target_tokens, seq_len=cfg.seq_len, hook=cfg.hook,
                          chunk_tokens=cfg.chunk_tokens, compute_dtype=dtype, shard_chunks=cfg.shard_chunks,
                          store_dtype=cfg.store_dtype)
    preflight.check_model_fits(shape, layers, plan.seq_len, cfg.model)
    corpus = cfg.open()
    preflight.check_corpus(corpus)
    expected = {"model": preflight.model_name(cfg.model, cfg.gguf), "hook": plan.hook,
                "layers": plan.layers, "d_model": shape.d_model, "context_length": plan.seq_len,
                "chunk_tokens": plan.chunk_tokens, "target_tokens": plan.target_tokens, "corpus": corpus.describe(),
                "compute_dtype": dtype, "dtype": STORE_DTYPE_NAMES[plan.store_dtype]}
    nothing_to_do = preflight.check_store_state(out, cfg.mode, expected, break_lock=cfg.break_lock)
    if nothing_to_do and not cfg.repair:
        if accelerator.is_main_process:
            _say(nothing_to_do)
        return out
    if dtype_warning and accelerator.is_main_process:
        _say(dtype_warning)
    try:
        if accelerator.is_main_process:
            _say(f"loading {cfg.model} ({dtype}) ...")
        loaded = load_model(cfg.model, gguf=cfg.gguf, dtype=dtype, device=device, revision=cfg.revision,
                            causal_lm=False)
        extractor = HiddenStateExtractor(loaded, corpus, out, accelerator=accelerator)
        if cfg.repair:
            _repair(extractor, plan, out, cfg.batch_size, progress=accelerator.is_local_main_process)
        if not nothing_to_do:
            extractor.extract(plan, batch_size=cfg.batch_size, mode=cfg.mode, break_lock=cfg.break_lock,
                              progress=accelerator.is_local_main_process,
                              host_buffer_bytes=cfg.host_buffer_mb << 20)
    except KeyboardInterrupt:
        from ghosttrack.store.format import read_store_attrs

        attrs = read_store_attrs(out) if out.is_dir() else None
        kept = (f"{out} keeps {attrs['committed_tokens']:,} committed tokens; rerun the same command with --resume "
                "to continue" if attrs else "nothing was written; rerun the same command")
        _say(f"\ninterrupted: {kept}")
        sys.exit(INTERRUPTED_EXIT)
    if accelerator.is_main_process:
        saved = {k: v for k, v in asdict(cfg).items() if k not in NOT_SAVED}
        save_resolved_config(out, command=command, options=saved)
        _report_short_corpus(out)
        _say(f"wrote {out}")
    return out


def _report_short_corpus(out) -> None:
    """One line when the corpus ran out before --tokens (the store records it: ghosttrack info shows it)."""
    from ghosttrack.store.reader import ActivationStore

    store = ActivationStore.open(out, trust=True)
    if store.corpus_ran_out:
        _say(f"corpus ran out at {store.n_tokens:,} of {store.attrs['target_tokens']:,} tokens: {out} is "
             f"complete with {store.n_tokens:,} tokens; pass a bigger --corpus for more")


def _repair(extractor, plan, out: Path, batch_size: int, *, progress: bool) -> None:
    from ghosttrack.store.verify import verify_store

    report = verify_store(out, progress=progress)
    if report.healthy:
        _say(f"store {out}: no damaged chunk to repair")
        return
    _say(f"repairing {len(report.damaged_chunks)} damaged chunk(s) of {out}: "
               f"{', '.join(map(str, report.damaged_chunks))}")
    from ghosttrack.extract.repair import repair_chunks

    repair_chunks(extractor, plan, report.damaged_chunks, batch_size=batch_size, progress=progress)
    again = verify_store(out)
    if not again.healthy:
        raise GhostTrackError(f"store {out} is still damaged after the repair ({len(again.damaged)} chunk file(s)): "
                              "the options differ from the original run's; rerun with its config.json (--config)")
    _say(f"repaired {len(report.damaged_chunks)} chunk(s); store {out} verifies healthy")
