"""`ghosttrack run`: extract, then train, as the seed's extract_and_train.py did, into OUT/store and OUT/sae."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ghosttrack.cli import RUN_FLAGS, extract_options
from ghosttrack.cli.common import config_option, local_output
from ghosttrack.cli.train import check_training_options, run_training, train_options
from ghosttrack.config_fields import from_options, param_name
from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.config import ExtractConfig

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
    extraction = from_options(ExtractConfig, options, flags=RUN_FLAGS, out=str(store), layers=options["layers"],
                              device=options["device"] if options["device"] != "auto" else None,
                              resume=options["resume"], overwrite=options["overwrite"])
    extract_only = {param_name(f, RUN_FLAGS) for f in dataclasses.fields(ExtractConfig)} - {"layers", "device"}
    training = {key: value for key, value in options.items()
                if key not in ("extract_only", "train_only", *extract_only)}
    training.update(store=str(store), out=str(out / SAE_DIR), layers=options["layers"],
                    resume=options["resume"], overwrite=options["overwrite"], device=options["device"] or "auto")
    check_training_options(training)  # a bad training value stops the run before the extraction
    if not options["train_only"]:
        # Training can resume on a finished store: only extract when there is something left to write.
        if not (options["resume"] and _is_complete(store)):
            from ghosttrack.extract.pipeline import run_extraction

            run_extraction(extraction, command="extract")
    if options["extract_only"]:
        return
    if not store.exists():
        raise GhostTrackError(f"{store} does not exist; run without --train-only first to extract it")
    run_training(training)


def _is_complete(store: Path) -> bool:
    from ghosttrack.store.reader import ActivationStore

    return (store / "zarr.json").exists() and ActivationStore.open(store, trust=True).complete
