"""Extraction from start to end: check everything that needs no weights, load the model, extract (or
repair), save the resolved config. `ghosttrack extract` and `ghosttrack run` call it."""
from __future__ import annotations

import sys
from pathlib import Path

from ghosttrack.errors import GhostTrackError
from ghosttrack.interrupts import INTERRUPTED_EXIT
from ghosttrack.run_config import parse_layers, parse_token_count, save_resolved_config


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_extraction(options: dict, *, command: str) -> Path:
    """Check everything that needs no model weights, then load the model and extract (or repair)."""
    from accelerate import Accelerator

    from ghosttrack.corpus.sources import open_corpus
    from ghosttrack.extract import preflight
    from ghosttrack.extract.extractor import STORE_DTYPE_NAMES, ExtractionPlan, HiddenStateExtractor
    from ghosttrack.extract.models import load_model
    from ghosttrack.precision import resolve_dtype
    from ghosttrack.store.location import as_location

    if options["resume"] and options["overwrite"]:
        raise GhostTrackError("--resume and --overwrite exclude each other; pass one")
    repair, break_lock = options.get("repair", False), options.get("break_lock", False)
    if repair and not options["resume"]:
        raise GhostTrackError("--repair mends an existing store; pass it together with --resume")
    tokens = parse_token_count(options["tokens"])
    mode = "resume" if options["resume"] else "overwrite" if options["overwrite"] else "create"
    out = as_location(options["out"])  # a bad URL, or a missing s3fs/gcsfs, stops here
    # Cheap checks first: nothing up to the model load reads weights or writes a file.
    preflight.check_device(options["device"])
    shape = preflight.read_model_shape(options["model"], gguf=options["gguf"], revision=options["revision"])
    layers = parse_layers(options["layers"], shape.n_layers)
    device = None if options["device"] in (None, "auto") else options["device"]
    accelerator = Accelerator(cpu=device == "cpu")
    device = device or accelerator.device
    dtype, dtype_warning = resolve_dtype(options["dtype"], device)
    plan = ExtractionPlan(layers=layers, target_tokens=tokens, seq_len=options["seq_len"], hook=options["hook"],
                          chunk_tokens=options["chunk_tokens"], compute_dtype=dtype,
                          shard_chunks=options.get("shard_chunks") or 1,
                          store_dtype=options.get("store_dtype") or "fp16")
    preflight.check_model_fits(shape, layers, plan.seq_len, options["model"])
    corpus = open_corpus(options["corpus"], min_chars=options["min_chars"], wiki_language=options["wiki_language"],
                         wiki_date=options["wiki_date"], text_field=options["text_field"])
    preflight.check_corpus(corpus)
    expected = {"model": preflight.model_name(options["model"], options["gguf"]), "hook": plan.hook,
                "layers": plan.layers, "d_model": shape.d_model, "context_length": plan.seq_len,
                "chunk_tokens": plan.chunk_tokens, "target_tokens": plan.target_tokens, "corpus": corpus.describe(),
                "compute_dtype": dtype, "dtype": STORE_DTYPE_NAMES[plan.store_dtype]}
    nothing_to_do = preflight.check_store_state(out, mode, expected, break_lock=break_lock)
    if nothing_to_do and not repair:
        if accelerator.is_main_process:
            _say(nothing_to_do)
        return out
    if dtype_warning and accelerator.is_main_process:
        _say(dtype_warning)
    try:
        if accelerator.is_main_process:
            _say(f"loading {options['model']} ({dtype}) ...")
        loaded = load_model(options["model"], gguf=options["gguf"], dtype=dtype, device=device,
                            revision=options["revision"], causal_lm=False)
        extractor = HiddenStateExtractor(loaded, corpus, out, accelerator=accelerator)
        if repair:
            _repair(extractor, plan, out, options["batch_size"], progress=accelerator.is_local_main_process)
        if not nothing_to_do:
            extractor.extract(plan, batch_size=options["batch_size"], mode=mode, break_lock=break_lock,
                              progress=accelerator.is_local_main_process,
                              host_buffer_bytes=(options.get("host_buffer_mb") or 2048) << 20)
    except KeyboardInterrupt:
        from ghosttrack.store.format import read_store_attrs

        attrs = read_store_attrs(out) if out.is_dir() else None
        kept = (f"{out} keeps {attrs['committed_tokens']:,} committed tokens; rerun the same command with --resume "
                "to continue" if attrs else "nothing was written; rerun the same command")
        _say(f"\ninterrupted: {kept}")
        sys.exit(INTERRUPTED_EXIT)
    if accelerator.is_main_process:
        # --resume/--overwrite/--repair say how to treat an existing store, not what the store is.
        saved = {k: v for k, v in options.items() if k not in ("resume", "overwrite", "repair", "break_lock", "device")}
        save_resolved_config(out, command="extract", options=saved)
        _say(f"wrote {out}")
    return out


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
