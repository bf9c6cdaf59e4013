"""`ghosttrack train`: one SAE per layer of an activation store (options shared with `run`)."""
from __future__ import annotations

import dataclasses
import sys

import click

from ghosttrack.cli.common import config_option
from ghosttrack.cli.options import apply, config_command_options, dataclass_options
from ghosttrack.config_fields import from_options, values_for
from ghosttrack.errors import GhostTrackError
from ghosttrack.interrupts import INTERRUPTED_EXIT
from ghosttrack.sae import ARCHITECTURES
from ghosttrack.sae.config import check_sae_options
from ghosttrack.train.config import SAEShape, TrainerConfig, TrainRun


def _architecture_options() -> list:
    """--arch, the width, and every registered architecture's own settings (each once)."""
    archs = ARCHITECTURES.values()
    options = dataclass_options(SAEShape, help_overrides={
        "arch": "; ".join(f"{a.name}: {a.summary}" for a in archs) + "."})
    seen: set[str] = set()
    for arch in archs:
        for option in dataclass_options(arch.config_class, skip=("d_in", "d_sae", *seen), defaults_in_help=True):
            options.append(option)
        seen.update(f.name for f in dataclasses.fields(arch.config_class))
    return options


def train_options(func):
    """Options of `train` (except those of TrainRun), shared with `run`: the architecture's from the
    registry, the rest from TrainerConfig's fields."""
    return apply([*_architecture_options(), *dataclass_options(TrainerConfig)], func)


@click.command()
@config_option
@config_command_options(TrainRun, only=("store", "layer", "layers"))
@train_options
@config_command_options(TrainRun, only=("out", "resume", "overwrite", "trust_store", "allow_partial_store"))
def train(**options) -> None:
    """Train a sparse autoencoder on each layer of an activation store."""
    run_training(options)


def check_training_options(options: dict) -> TrainRun:
    """Every value of `train`'s options checked, before the store is opened (the architecture's own
    bounds need the store's d_model and are checked when its config is built)."""
    run = from_options(TrainRun, options)
    shape = from_options(SAEShape, options)
    check_sae_options(shape.arch, values_for(ARCHITECTURES[shape.arch].config_class, options))
    from_options(TrainerConfig, options)
    return run


def run_training(options: dict, *, progress: bool = True) -> dict:
    """Check every option, train, print one line per layer; GhostTrackError if any layer failed."""
    from ghosttrack.train.layers import train_layers

    run = check_training_options(options)
    options = {**options, "layers": run.layers or "all"}
    options.pop("layer", None)
    try:
        results = train_layers(run.store, options["layers"], run.out, options, progress=progress)
    except KeyboardInterrupt as exc:
        why = str(exc) or "Ctrl-C"  # a second Ctrl-C arrives as a bare KeyboardInterrupt()
        click.echo(f"\ninterrupted ({why}); rerun the same command with --resume to continue from "
                   f"the last checkpoint", err=True)
        sys.exit(INTERRUPTED_EXIT)
    failed = {layer: exc for layer, exc in results.items() if isinstance(exc, Exception)}
    for layer, summary in results.items():
        if layer not in failed:
            click.echo(_describe(summary), err=True)
    if failed:
        raise GhostTrackError(f"{len(failed)} of {len(results)} layers failed "
                              f"({', '.join(str(layer) for layer in failed)}); see the errors above")
    return results


def _describe(s: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    skipped = s["skipped"]
    return (f"layer {s['layer']}: {s['steps']} steps, {s['tokens']:,} tokens -> {s['out_dir']}  "
            f"val FVU {fmt(s.get('val_fvu'), '.4f')}  L0 {fmt(s.get('val_l0'), '.1f')}  "
            f"dead {fmt(s.get('dead_fraction'), '.2%')}  skipped {skipped['flagged_skipped']:,} position-0 + "
            f"{skipped['outliers_skipped']:,} outlier rows" +
            (f" (> {skipped['max_norm_ratio']}x median norm)" if skipped["max_norm_ratio"] else ""))
