"""`ghosttrack train`: one SAE per layer of an activation store (options shared with `run`)."""
from __future__ import annotations

import dataclasses
import sys

import click

from ghosttrack.cli.common import config_option, local_output
from ghosttrack.cli.options import apply, dataclass_options, store_access_options
from ghosttrack.errors import GhostTrackError
from ghosttrack.interrupts import INTERRUPTED_EXIT
from ghosttrack.sae import ARCHITECTURES
from ghosttrack.train.config import TrainerConfig


def _architecture_options() -> list:
    """--arch, the width, and every registered architecture's own settings (each once)."""
    archs = ARCHITECTURES.values()
    options = [
        click.option("--arch", type=click.Choice(list(ARCHITECTURES)), default=next(iter(ARCHITECTURES)),
                     show_default=True, help="; ".join(f"{a.name}: {a.summary}" for a in archs) + "."),
        click.option("--expansion", type=float, default=16, show_default=True,
                     help="Latents = expansion x d_model (ignored with --d-hidden)."),
        click.option("--d-hidden", type=int, default=None, help="Number of latents (overrides --expansion)."),
    ]
    seen: set[str] = set()
    for arch in archs:
        for option in dataclass_options(arch.config_class, skip=("d_in", "d_sae", *seen), defaults_in_help=True):
            options.append(option)
        seen.update(f.name for f in dataclasses.fields(arch.config_class))
    return options


def train_options(func):
    """Options of `train` (except --store / --out / --layers), shared with `run`: the architecture's
    from the registry, the rest from TrainerConfig's fields."""
    return apply([*_architecture_options(), *dataclass_options(TrainerConfig)], func)


@click.command()
@config_option
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Activation store (ghosttrack extract --out).")
@click.option("--layer", type=int, default=None, help="One layer to train (same as --layers N).")
@click.option("--layers", default=None, help="Layers to train: 6, 0-11, 0,6,11 or all [default: all].")
@train_options
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=local_output,
              help="Output folder; each layer goes to OUT/layer_<i>/ (best SAE, final/, trainer_state.pt, history.json).")
@click.option("--resume", is_flag=True, help="Continue interrupted runs in OUT (same options required).")
@click.option("--overwrite", is_flag=True, help="Replace existing runs in OUT.")
@store_access_options
def train(**options) -> None:
    """Train a sparse autoencoder on each layer of an activation store."""
    run_training(options)


def run_training(options: dict, *, progress: bool = True) -> dict:
    """Resolve --layer/--layers, train, print one line per layer; GhostTrackError if any layer failed."""
    from ghosttrack.train.layers import train_layers

    options = dict(options)
    layer = options.pop("layer", None)
    if layer is not None and options.get("layers") not in (None, str(layer)):
        raise GhostTrackError("--layer and --layers disagree; pass one of them")
    layers = str(layer) if layer is not None else (options.get("layers") or "all")
    options["layers"] = layers
    try:
        results = train_layers(options["store"], layers, options["out"], options, progress=progress)
    except KeyboardInterrupt as exc:
        click.echo(f"\ninterrupted ({exc or 'Ctrl-C'}); rerun the same command with --resume to continue from "
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
