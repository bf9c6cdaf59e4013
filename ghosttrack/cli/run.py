"""`ghosttrack run`: extract, then train, as the seed's extract_and_train.py did, into OUT/store and OUT/sae."""
from __future__ import annotations

from pathlib import Path

import click

from ghosttrack.cli import extract_options, run_extraction
from ghosttrack.cli.common import config_option, local_output
from ghosttrack.cli.train import run_training, train_options
from ghosttrack.errors import GhostTrackError

STORE_DIR = "store"
SAE_DIR = "sae"


@click.command()
@config_option
@extract_options(in_run=True)
@click.option("--layers", default="all", show_default=True, help="Layers to extract and train: 0-11, 0,6,11 or all.")
@train_options
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=local_output,
              help="Run folder: the store goes to OUT/store, the SAEs to OUT/sae/layer_<i>/.")
@click.option("--extract-only", is_flag=True, help="Stop after extraction.")
@click.option("--train-only", is_flag=True, help="Train on the existing OUT/store.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (extraction and training).")
@click.option("--overwrite", is_flag=True, help="Replace what OUT holds.")
def run(**options) -> None:
    """Extract activations, then train an SAE per layer (the seed's extract_and_train)."""
    if options["extract_only"] and options["train_only"]:
        raise GhostTrackError("--extract-only and --train-only exclude each other; pass at most one")
    out = Path(options["out"])
    store = out / STORE_DIR
    extract_names = ("model", "gguf", "revision", "corpus", "wiki_language", "wiki_date", "text_field", "min_chars",
                     "hook", "tokens", "seq_len", "chunk_tokens", "store_dtype", "host_buffer_mb", "layers", "device", "resume", "overwrite")
    if not options["train_only"]:
        extraction = {name: options[name] for name in extract_names}
        extraction.update(batch_size=options["extract_batch_size"], dtype=options["extract_dtype"], out=str(store))
        # Training can resume on a finished store: only extract when there is something left to write.
        if not (options["resume"] and _is_complete(store)):
            run_extraction(extraction, command="extract")
    if options["extract_only"]:
        return
    if not store.exists():
        raise GhostTrackError(f"{store} does not exist; run without --train-only first to extract it")
    training = {key: value for key, value in options.items()
                if key not in ("extract_batch_size", "extract_dtype", "extract_only", "train_only", *extract_names[:-3])}
    training.update(store=str(store), out=str(out / SAE_DIR), layers=options["layers"],
                    resume=options["resume"], overwrite=options["overwrite"], device=options["device"] or "auto")
    run_training(training)


def _is_complete(store: Path) -> bool:
    from ghosttrack.store.reader import ActivationStore

    return (store / "zarr.json").exists() and ActivationStore.open(store, trust=True).complete
